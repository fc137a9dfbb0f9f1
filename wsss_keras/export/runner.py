"""An exported artifact run in its own runtime (ONNX Runtime, LiteRT, TensorFlow), as the
self-check and the tests run it."""


def artifact_runner(path, fmt):
    """A callable uint8 images `(B, H, W, 3)` -> {output name: array}, loading the artifact once."""
    if fmt in ("onnx", "triton"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        names = [output.name for output in session.get_outputs()]
        return lambda images: dict(zip(names, session.run(None, {input_name: images})))
    if fmt == "tflite":
        from wsss_deploy.litert_runner import LiteRTSegmenter

        return LiteRTSegmenter(path).run
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serve"]
    return lambda images: {key: value.numpy() for key, value in serve(tf.constant(images)).items()}
