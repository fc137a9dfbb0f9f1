"""The edge student (a tiny keras-hub SegFormer in `StudentSegmenter`) on the current backend:
its loss against NumPy (cross-entropy over labelled pixels, the KD term's softened KL), a few
training steps, a .keras round trip giving the same logits, and its ONNX and LiteRT exports
(written from TensorFlow, as every backend's are) labelling real images as the Keras student
does on this backend."""

import keras
import numpy as np
import pytest

from wsss_keras.methods.base import WSSSModel
from wsss_keras.methods.student import StudentSegmenter, build_network

SIZE, CLASSES = 64, 3
TINY_MIT = {"hidden_dims": [8, 12, 16, 20], "layerwise_num_heads": [1, 1, 1, 1], "layerwise_depths": [1, 1, 1, 1]}


class ConstantTeacher(WSSSModel):
    """A teacher whose logits are a fixed array, so the KD target is known here."""

    def __init__(self, logits, **kwargs):
        super().__init__(**kwargs)
        self.logits = logits

    def segment_logits(self, images):
        return keras.ops.convert_to_tensor(self.logits)


def tiny_student(**kwargs):
    keras.utils.set_random_seed(0)
    network = build_network("segformer_b0", CLASSES, SIZE, overrides=TINY_MIT, projection_filters=8)
    return StudentSegmenter(network, CLASSES, SIZE, class_names=["background", "a", "b"], **kwargs)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    labels = rng.integers(0, CLASSES, size=(2, SIZE, SIZE)).astype("int32")
    labels[rng.random(labels.shape) < 0.2] = 255
    return images, labels


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_matches_numpy_with_and_without_distillation():
    images, labels = batch()
    student = tiny_student(kd_weight=0.5, kd_temperature=2.0)
    # predict (one compiled graph), not an eager call: JAX's op-by-op dispatch is slow here.
    logits = student.predict(images, verbose=0).astype("float64")
    valid = labels != 255
    picked = np.take_along_axis(log_softmax(logits), np.where(valid, labels, 0)[..., None], -1)[..., 0]
    cross_entropy = -(picked * valid).sum() / valid.sum()
    loss = student.compute_loss(images, {"label_maps": labels}, keras.ops.convert_to_tensor(logits.astype("float32")))
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loss)), cross_entropy, rtol=1e-4)
    teacher_logits = np.random.default_rng(1).normal(size=logits.shape).astype("float32")
    student.set_teacher(ConstantTeacher(teacher_logits))
    target = np.exp(log_softmax(teacher_logits / 2.0))
    kl = (target * (np.log(target) - log_softmax(logits / 2.0))).sum(-1).mean()
    loss = student.compute_loss(images, {"label_maps": labels}, keras.ops.convert_to_tensor(logits.astype("float32")))
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loss)), cross_entropy + 0.5 * 4.0 * kl, rtol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(student after three steps on one batch, their losses, its saved .keras path)."""
    images, labels = batch()
    student = tiny_student()
    student.compile(optimizer=keras.optimizers.AdamW(1e-2))
    losses = student.fit(images, {"label_maps": labels}, batch_size=2, epochs=3, verbose=0).history["loss"]
    path = str(tmp_path_factory.mktemp("student") / "student.keras")
    student.save(path)
    return student, losses, path


def test_few_steps_then_keras_round_trip(trained):
    student, losses, path = trained
    # One batch seen three times: the loss of the third step is below the first's.
    assert len(losses) == 3 and np.isfinite(losses).all() and losses[-1] < losses[0]
    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded, StudentSegmenter) and loaded.class_names == student.class_names
    other = np.random.default_rng(2).normal(size=(1, 72, 72, 3)).astype("float32")  # resized to SIZE inside
    np.testing.assert_allclose(loaded.predict(other, verbose=0), student.predict(other, verbose=0), atol=1e-5)


def test_export_friendly_rewrites_give_keras_hubs_results():
    """The student's two op rewrites (MiT attention reshapes, depthwise Conv2D as depthwise_conv)
    against the layers' own keras-hub / Keras code on the same weights and inputs."""
    from keras_hub.src.models.mit.mit_layers import SegFormerMultiheadAttention

    from wsss_keras.methods.student import _depthwise_call, _static_attention_call

    rng = np.random.default_rng(3)
    conv = keras.layers.Conv2D(12, 3, strides=2, padding="same", groups=6, activation="relu")
    images = rng.normal(size=(2, 9, 9, 6)).astype("float32")
    conv.build(images.shape)
    conv.bias.assign(rng.normal(size=(12,)).astype("float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(_depthwise_call(conv, images)),
                               keras.ops.convert_to_numpy(conv(images)), atol=1e-5)
    for heads, sr_ratio in ((1, 2), (2, 1)):
        attention = SegFormerMultiheadAttention(8, heads, sr_ratio)
        tokens = rng.normal(size=(2, 16, 8)).astype("float32")
        expected = keras.ops.convert_to_numpy(attention(tokens))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(_static_attention_call(attention, tokens)), expected,
                                   atol=1e-5)


def test_trained_student_exports_to_onnx_and_litert_with_the_keras_students_labels(trained, tmp_path):
    import json
    import os

    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter
    from helpers import tiny_synthetic
    from PIL import Image

    from wsss_keras.data import VocDataset
    from wsss_keras.data.imageio import read_label_map
    from wsss_keras.export import export_model
    from wsss_keras.pipelines.predict import predict_folder

    data = tiny_synthetic(tmp_path / "data", n_train=2, n_val=3, size=SIZE, classes="2")
    val = VocDataset(data, "val")
    student, _, path = trained
    export_model(path, str(tmp_path / "out"), formats=("onnx", "tflite"), precisions=("fp32",), output="labels",
                 echo=lambda line: None)
    predict_folder(student, val, str(tmp_path / "keras_labels"), overlay=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "onnx_fp32" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    interpreter = Interpreter(model_path=str(tmp_path / "out" / "tflite_fp32" / "model.tflite"))
    total = differ_onnx = differ_lite = 0
    for name in val.names:
        rgb = np.asarray(Image.open(os.path.join(data, "JPEGImages", f"{name}.jpg")).convert("RGB"))
        expected = read_label_map(str(tmp_path / "keras_labels" / f"{name}.png"), val.num_classes)
        onnx_labels, = session.run(None, {session.get_inputs()[0].name: rgb[None]})
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], (1,) + rgb.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], rgb[None])
        interpreter.invoke()
        lite_labels = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        total += expected.size
        differ_onnx += int((onnx_labels[0] != expected).sum())
        differ_lite += int((lite_labels[0] != expected).sum())
    # Same float32 network, same resizing: only argmax ties at rounding level may differ.
    assert differ_onnx <= total // 1000 and differ_lite <= total // 1000, (differ_onnx, differ_lite, total)
    with open(tmp_path / "out" / "onnx_fp32" / "manifest.json", encoding="utf-8") as handle:
        assert len(json.load(handle)["classes"]) == val.num_classes
