"""int8 ONNX: onnxruntime's static quantisation of the float32 graph, calibrated on the export's
calibration images, for the self-check to choose from.

The graph stays float at its edges (QDQ format: QuantizeLinear / DequantizeLinear pairs around
the quantised ops, which onnxruntime's CPU provider runs as integer kernels). Activations are
uint8 and weights int8 per output channel (U8S8, the pairing onnxruntime's x86 kernels with
VNNI run fastest). Tried in turn until the self-check passes, like TFLite's fallbacks
(`int8.py`): the matrix products and convolutions, then the convolutions and dense weights
only (MatMul by a constant, Conv, Gemm), where attention's activation-by-activation products
stay float.
"""

import numpy as np

# (op types quantised, whether MatMuls between two activations are too), in the order tried.
ONNX_INT8_LEVELS = (
    (("MatMul", "Conv", "Gemm"), True),
    (("MatMul", "Conv", "Gemm"), False),
)
ONNX_CALIBRATION_LIMIT = 32


def _weight_only_matmuls(model):
    """Names of MatMul nodes with a constant (initialiser) input: the dense layers."""
    constants = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and any(name in constants for name in node.input)]


def _reader(images, input_name):
    from onnxruntime.quantization import CalibrationDataReader

    class Images(CalibrationDataReader):
        def __init__(self):
            self._images = iter(images)

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {input_name: np.asarray(image, np.uint8)[None]}

    return Images()


def onnx_int8_files(float_path, out_path, calibration, scope="full"):
    """Yield (path, notes) for each `ONNX_INT8_LEVELS` quantisation of the float32 ONNX file at
    `float_path`, written to `out_path`, calibrated on up to `ONNX_CALIBRATION_LIMIT` of
    `calibration` (uint8 images at the graph's input size). `scope` "weights" (`--int8-scope`)
    yields only the last level, the one with int8 where the weights are."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(float_path)
    input_name = model.graph.input[0].name
    dense = _weight_only_matmuls(model)
    images = list(calibration[:ONNX_CALIBRATION_LIMIT])
    for op_types, activation_products in ONNX_INT8_LEVELS[-1:] if scope == "weights" else ONNX_INT8_LEVELS:
        nodes = None
        if not activation_products:
            nodes = dense + [n.name for n in model.graph.node if n.op_type in op_types and n.op_type != "MatMul"]
        quantize_static(float_path, out_path, _reader(images, input_name), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), nodes_to_quantize=nodes, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        yield out_path, {"int8_scope": scope, "onnx_int8_ops": list(op_types),
                         "activation_products": "int8" if activation_products else "float",
                         "calibration_images": len(images)}
