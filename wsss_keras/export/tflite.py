"""TFLite (LiteRT) conversion: the converter of an exported SavedModel at each precision, and
the builtin ops a `.tflite` flatbuffer uses."""


def litert_converter(saved_model, precision, calibration=None):
    """A TFLite converter of a SavedModel's "serve" signature: builtin ops only (a model that
    needs TensorFlow's Flex ops would not run on plain LiteRT); fp16 stores float16 weights;
    int8 quantises weights and activations, calibrated on `calibration` (uint8 images)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serve"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def representative_dataset(images):
    def generate():
        for image in images:
            yield [image[None]]

    return generate


def tflite_op_names(flatbuffer):
    """The builtin op names (`CONV_2D`, `ADD`, ...) a `.tflite` flatbuffer uses."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = (model.OperatorCodes(index) for index in range(model.OperatorCodesLength()))
    # Codes under 127 sit in the deprecated byte field too; the larger of the two is the op.
    return sorted({names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())] for code in codes})
