"""The graph `wsss export` writes: uint8 RGB images in, segmentation (or CAMs) out, with the
resizing and normalisation inside, so a client needs no preprocessing.

The same Keras model serves in Python on every backend (`wsss_keras.export.image_segmenter`),
and saves and loads as a `.keras` file with its method inside, so `keras.saving.load_model(
"segmenter.keras").predict(uint8_images)` gives the exported graph's label maps. On TensorFlow,
where the exports are traced with the image size unknown until run time, it resizes back with
`tf.image.resize` (what keras.ops does there, minus its check that the size is a Python tuple)
and takes the argmax with `tf.math.argmax`; on JAX and PyTorch the shapes are known and it uses
keras.ops.
"""

import keras
from keras import ops


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(package="wsss_keras")
class ImageToSegmentation(keras.Model):
    """uint8 `(B, H, W, 3)` RGB -> {"logits", "labels"} / {"labels"} / {"cams"} at `(H, W)`.

    Args:
        method: a trained `WSSSModel`.
        input_size: (height, width) the network runs at; every image is resized to it
            (bilinear, no antialiasing) and the outputs back to the image's size.
        output: "logits" (logits float32 `(B, H, W, C + 1)` and their argmax `labels` uint8),
            "labels" (only those), or "cams" (`(B, H, W, C)` ReLU'd, max-normalised per class).
        dynamic: run the network at each image's own size (no resizing in or out).

    Example:
    >>> from wsss_keras.methods.cam_baseline import CAMNetwork  # doctest: +SKIP
    >>> graph = ImageToSegmentation(trained_model, (128, 128), "labels")  # doctest: +SKIP
    >>> graph(np.zeros((1, 200, 300, 3), "uint8"))["labels"].shape  # doctest: +SKIP
    (1, 200, 300)
    """

    def __init__(self, method, input_size, output="logits", dynamic=False, **kwargs):
        super().__init__(**kwargs)
        self.method = method
        self.input_size = tuple(int(v) for v in input_size)
        self.output_kind, self.dynamic = output, bool(dynamic)
        # Python floats, made constants inside the traced graph: a tensor made here would be
        # captured, and tf2onnx leaves captured tensors as required graph inputs.
        self.mean = tuple(float(v) * 255.0 for v in method.image_mean)
        self.std = tuple(float(v) * 255.0 for v in method.image_std)

    @staticmethod
    def _resize(tensor, size):
        if _on_tensorflow():
            import tensorflow as tf

            return tf.image.resize(tensor, size, method="bilinear", antialias=False)
        from wsss_keras.ops.cam import resize_bilinear

        return resize_bilinear(tensor, tuple(int(v) for v in size))

    def call(self, images):
        if _on_tensorflow():
            import tensorflow as tf

            size = tf.shape(images)[1:3]
        else:
            size = ops.shape(images)[1:3]
        x = ops.cast(images, "float32")
        if not self.dynamic:
            x = self._resize(x, self.input_size)
            if _on_tensorflow():
                x.set_shape((None,) + self.input_size + (3,))  # tf.image.resize leaves it unknown
        x = (x - ops.convert_to_tensor(self.mean, "float32")) / ops.convert_to_tensor(self.std, "float32")
        if self.output_kind == "cams":
            cams = ops.relu(self.method.cam_maps(x))
            cams = cams / (ops.max(cams, axis=(1, 2), keepdims=True) + 1e-5)
            return {"cams": self._resize(cams, size)}
        logits = self._resize(self.method.segment_logits(x), size)
        if _on_tensorflow():
            import tensorflow as tf

            # tf.argmax, not keras.ops.argmax: Keras's TensorFlow argmax bit-casts to tell -0.0
            # from 0.0, and neither ONNX Runtime nor builtin LiteRT has those ops.
            labels = ops.cast(tf.math.argmax(logits, axis=-1), "uint8")
        else:
            labels = ops.cast(ops.argmax(logits, axis=-1), "uint8")
        if self.output_kind == "labels":
            return {"labels": labels}
        return {"logits": logits, "labels": labels}

    def get_config(self):
        return {**super().get_config(), "method": keras.saving.serialize_keras_object(self.method),
                "input_size": list(self.input_size), "output": self.output_kind, "dynamic": self.dynamic}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        method = keras.saving.deserialize_keras_object(config.pop("method"))
        return cls(method, **config)
