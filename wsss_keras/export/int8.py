"""int8 TFLite: calibrated quantisation with op types kept in float, level by level
(`INT8_FLOAT_LEVELS`, then all but `INT8_WEIGHTED_OPS`), for the self-check to choose from."""

from wsss_keras.export.errors import ExportError
from wsss_keras.export.tflite import (
    litert_converter,
    representative_dataset,
    tflite_op_names,
)

# The ops int8 keeps in float, tried in turn until the self-check passes. Divisions always:
# normalisations (x / max(‖x‖, ε), G / ΣG) divide by values that quantise to zero on some
# inputs, and LiteRT's int8 DIV then refuses to run. Then LayerNorm's ops, then attention's:
# a transformer's int8 error comes mostly from those (measured on the quickstart's ViT at 128:
# 97.15 % label agreement with divisions alone, 98.97 % with LayerNorm in float too).
INT8_FLOAT_LEVELS = (
    ("DIV",),
    ("DIV", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SUB"),
    ("DIV", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SUB", "SOFTMAX", "BATCH_MATMUL"),
)
# The last level keeps int8 only where the weights are, every other op of the model in float:
# the weights (the size) and most of the arithmetic stay int8, and the residual stream (ADD),
# the token assembly (CONCATENATION, TILE) and the elementwise ops no longer round to one
# per-tensor scale. Measured on the tests' few-step ViT and CLIP models, whose logits nearly
# tie: JAX's CLIP decoder agrees on 96.3 % with the levels above, 99.1 % with this one.
INT8_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
# `--int8-scope`: "full" starts from every op int8 (for integer-only accelerators) and falls
# back level by level; "weights" goes straight to the last level, which measured faster on this
# x86 CPU than fp32 and full int8 (quickstart ViT at 128, LiteRT with XNNPACK: 3.5 ms against
# 5.7 and 20.1 ms at batch 1).
INT8_SCOPES = ("full", "weights")


def int8_flatbuffers(saved_model, calibration, scope="full"):
    """Yield (int8 `.tflite` bytes, notes) with the ops of each `INT8_FLOAT_LEVELS` in float,
    then with every op but `INT8_WEIGHTED_OPS` in float (TensorFlow's selective quantisation,
    through its quantisation debugger). `scope` "weights" yields only the last."""
    import tensorflow as tf

    def quantised(float_ops):
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=litert_converter(saved_model, "int8", calibration),
            debug_dataset=representative_dataset(calibration[:20]), debug_options=options)
        return debugger.get_nondebug_quantized_model()

    for float_ops in INT8_FLOAT_LEVELS if scope == "full" else ():
        yield quantised(float_ops), {"int8_scope": scope, "float_ops": list(float_ops)}
    model_ops = tflite_op_names(litert_converter(saved_model, "fp32").convert())
    int8_ops = [op for op in model_ops if op in INT8_WEIGHTED_OPS]
    float_ops = [op for op in model_ops if op not in INT8_WEIGHTED_OPS]
    if int8_ops:
        yield quantised(float_ops), {"int8_scope": scope, "float_ops": float_ops, "int8_ops": int8_ops}
    elif scope == "weights":
        raise ExportError(f"--int8-scope weights: the model has none of {', '.join(INT8_WEIGHTED_OPS)} to "
                          "quantise; use --int8-scope full.")
