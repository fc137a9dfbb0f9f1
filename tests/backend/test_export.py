"""`wsss export` for a model of each method family, trained a few steps on the current backend:
SavedModel, ONNX and TFLite (float32, float16, int8) are written (from TensorFlow, in a subprocess
on JAX and PyTorch), the manifests say what the artifacts are, and the ONNX and LiteRT artifacts,
run here with onnxruntime and the LiteRT interpreter on real images, agree with the Keras model's
own `segment_logits` on this backend."""

import glob
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image
from helpers import tiny_synthetic
from test_segmenter import batch as segmenter_batch
from test_segmenter import tiny_model as tiny_deeplab
from test_toco import tiny_toco, toco_batch
from test_weclip import batch as clip_batch
from test_weclip import tiny_ssr

from wsss_keras.errors import DataError, ModelError
from wsss_keras.export import AGREEMENT, INT8_WEIGHTED_OPS, ExportError, export_model, file_sha256, tflite_op_names
from wsss_keras.methods.doei import DOEI

# A few steps at a high rate. Barely trained models have near-tied logits, which int8 flips: the
# ViT and CLIP models need int8's fallback levels, the last (only convolutions and dense layers in
# int8) for JAX's CLIP model (measured: 99.1 %, 96.3 % at best before that level existed).
TRAIN_STEPS = 10
PAIRS = [("saved_model", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "fp16"),
         ("tflite", "int8")]
# The comparison is only meaningful where the logits are not nearly tied: at least MARGIN_SHARE of
# the reference pixels must have their top two logits MIN_MARGIN apart (50 x the fp32 tolerance;
# measured: 82 % for PyTorch's ToCo, the lowest, with a median margin of 0.29).
FP32_TOLERANCE = 1e-3
MIN_MARGIN, MARGIN_SHARE = 0.05, 0.75
# Label agreement with the Keras model, over all pixels of these images, that each artifact must
# reach. float32 and float16: the exporter's bars. int8: lower than the exporter's 98 %, which it
# measures on the images it also calibrated on; on these PyTorch's SSR int8 agreed on 94.5 %.
LABEL_AGREEMENT = {"fp32": 0.999, "fp16": 0.995, "int8": 0.9}


def trained_toco_doei():
    keras.utils.set_random_seed(0)
    # Gradients through DOEI's weights (not the default): with them, ten steps give logits that
    # separate on every backend; with the default, PyTorch's model predicted one class everywhere.
    # The flag does not change the forward pass, so the exported graph is the same either way.
    model = tiny_toco(DOEI(stop_gradient_weights=False))
    images, targets = toco_batch()
    model(images)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    for _ in range(TRAIN_STEPS):
        model.train_on_batch(images, targets)
    return model, (32, 32)


def trained_deeplab():
    model = tiny_deeplab(class_names=["background", "a", "b", "c"])
    # Adam at 1e-2, not SGD at 1e-3: ten SGD steps left every pixel on one class with its top two
    # logits 0.04 apart (measured), too close to tell an export error from a tie.
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images, labels = segmenter_batch()
    for _ in range(TRAIN_STEPS):
        model.train_on_batch(images, {"label_maps": labels})
    return model, (40, 48)


def trained_ssr():
    model = tiny_ssr()
    images, labels, regions = clip_batch()
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    for _ in range(TRAIN_STEPS):
        model.train_on_batch(images, {"labels": labels, "regions": regions})
    return model, (16, 16)


def network_images(folder, size, count=8):
    """uint8 RGB images: the dataset's JPEGs resized to the network size, so that the graph's own
    resize is the identity and the Keras model sees the very same pixels."""
    paths = sorted(glob.glob(os.path.join(folder, "JPEGImages", "*.jpg")))[:count]
    assert len(paths) == count, folder
    return np.stack([np.asarray(Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
                     for path in paths])


def keras_logits(model, images):
    """The model's `segment_logits` on normalised `images`, upsampled bilinearly (half-pixel
    centres, no antialiasing) to the image size: what the exported graph must compute."""
    mean = np.asarray(model.image_mean, "float32") * 255.0
    std = np.asarray(model.image_std, "float32") * 255.0
    logits = model.segment_logits(keras.ops.convert_to_tensor((images.astype("float32") - mean) / std))
    upsampled = keras.ops.image.resize(keras.ops.cast(logits, "float32"), images.shape[1:3], interpolation="bilinear",
                                       antialias=False)
    return keras.ops.convert_to_numpy(upsampled)


def top_two_margin(logits):
    ordered = np.sort(logits, axis=-1)
    return ordered[..., -1] - ordered[..., -2]


def run_onnx(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    runs = [dict(zip(names, session.run(None, {"image": image[None]}))) for image in images]
    return {name: np.concatenate([run[name] for run in runs]) for name in names}


def run_litert(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signature, spec = next(iter(interpreter.get_signature_list().items()))
    runner = interpreter.get_signature_runner(signature)
    runs = [runner(**{spec["inputs"][0]: image[None]}) for image in images]
    return {name: np.concatenate([np.asarray(run[name]) for run in runs]) for name in runs[0]}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """A synthetic VOC root: its JPEGImages calibrate int8 and are the self-check's images."""
    return tiny_synthetic(tmp_path_factory.mktemp("synthetic"), n_train=24, n_val=4, size=48)


@pytest.mark.parametrize("build", [trained_toco_doei, trained_deeplab, trained_ssr])
def test_every_format_exports_and_passes_its_self_check(build, calibration, tmp_path):
    model, size = build()
    path = str(tmp_path / "model.keras")
    model.save(path)
    lines = []
    manifests = export_model(path, str(tmp_path / "out"), formats=["saved_model", "onnx", "tflite"],
                             precisions=["fp32", "fp16", "int8"], input_size=size, calibration=calibration,
                             echo=lines.append)
    assert [(m["artifact"]["format"], m["artifact"]["precision"]) for m in manifests] == PAIRS
    for manifest in manifests:
        fmt, precision = manifest["artifact"]["format"], manifest["artifact"]["precision"]
        folder = tmp_path / "out" / f"{fmt}_{precision}"
        with open(folder / "manifest.json", encoding="utf-8") as handle:
            assert json.load(handle) == manifest
        assert manifest["check"]["passed"] and manifest["check"]["threshold_agreement"] == AGREEMENT[precision]
        assert manifest["model"]["source_sha256"] == file_sha256(path)
        assert manifest["input"] == {**manifest["input"], "dtype": "uint8", "network_size": list(size)}
        assert [o["name"] for o in manifest["outputs"]] == ["logits", "labels"]
        channels = manifest["outputs"][0]["shape"][-1]
        assert len(manifest["classes"]) == len(manifest["palette"]) == channels and manifest["classes"][0] == "background"
    assert any("[check] tflite int8" in line for line in lines)

    # The artifacts, run here, against the Keras model's own logits (not the exporter's check).
    images = network_images(calibration, size)
    reference = keras_logits(model, images)
    margin = top_two_margin(reference)
    assert np.mean(margin >= MIN_MARGIN) >= MARGIN_SHARE, f"logits nearly tied: margin median {np.median(margin):.4f}"
    reference_labels = reference.argmax(-1)
    assert len(np.unique(reference_labels)) >= 2, "the model predicts one class everywhere: nothing to compare"
    out = tmp_path / "out"
    runs = {("onnx", precision): run_onnx(out / f"onnx_{precision}" / "model.onnx", images) for precision in ("fp32", "int8")}
    for precision in ("fp32", "fp16", "int8"):
        runs["tflite", precision] = run_litert(out / f"tflite_{precision}" / "model.tflite", images)
    for (fmt, precision), outputs in runs.items():
        assert outputs["logits"].shape == reference.shape, (fmt, precision, outputs["logits"].shape)
        np.testing.assert_array_equal(outputs["labels"], outputs["logits"].argmax(-1))
        agreement = float(np.mean(outputs["labels"] == reference_labels))
        assert agreement >= LABEL_AGREEMENT[precision], (fmt, precision, agreement)
        if precision == "fp32":
            difference = float(np.max(np.abs(outputs["logits"] - reference)))
            assert difference <= FP32_TOLERANCE, (fmt, difference)
            # A difference under half the margin cannot flip a pixel: those must all agree.
            clear = margin > 2 * difference
            np.testing.assert_array_equal(outputs["labels"][clear], reference_labels[clear])
    # ONNX int8 runs its weighted ops on int8 weights (QDQ: a DequantizeLinear of an int8 constant).
    import onnx

    quantised = onnx.load(out / "onnx_int8" / "model.onnx")
    int8_constants = {init.name for init in quantised.graph.initializer if init.data_type == onnx.TensorProto.INT8}
    assert any(node.op_type == "DequantizeLinear" and node.input[0] in int8_constants for node in quantised.graph.node)
    # int8 quantised something; divisions stayed float (where the model has any), weights did not.
    int8_check = manifests[-1]["check"]
    with open(tmp_path / "out" / "tflite_int8" / "model.tflite", "rb") as handle:
        assert "QUANTIZE" in tflite_op_names(handle.read())
    with open(tmp_path / "out" / "tflite_fp32" / "model.tflite", "rb") as handle:
        model_ops = set(tflite_op_names(handle.read()))
    assert "DIV" in int8_check["float_ops"] or "DIV" not in model_ops
    assert not set(int8_check["float_ops"]) & set(INT8_WEIGHTED_OPS) and model_ops & set(INT8_WEIGHTED_OPS)
    assert set(int8_check.get("int8_ops", INT8_WEIGHTED_OPS)) <= set(INT8_WEIGHTED_OPS)


def test_cams_of_a_cam_network_and_refusals(calibration, tmp_path):
    model, size = trained_toco_doei()
    path = str(tmp_path / "toco.keras")
    model.save(path)
    manifest, = export_model(path, str(tmp_path / "cams"), formats=["onnx"], input_size=size, output="cams",
                             samples=calibration, echo=lambda line: None)
    assert manifest["check"]["passed"] and manifest["check"]["max_abs_difference"] <= 1e-3
    assert [o["name"] for o in manifest["outputs"]] == ["cams"]

    ssr, size = trained_ssr()
    ssr_path = str(tmp_path / "ssr.keras")
    ssr.save(ssr_path)
    with pytest.raises(ExportError, match="Grad-CAM"):
        export_model(ssr_path, str(tmp_path / "x"), formats=["onnx"], input_size=size, output="cams", echo=lambda line: None)
    with pytest.raises(ExportError, match="--input-size"):  # the ViT needs its token grid when traced
        export_model(path, str(tmp_path / "d"), formats=["onnx"], dynamic=True, echo=lambda line: None)
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("hello")
    with pytest.raises(ModelError, match="notes.keras"):
        export_model(str(not_a_model), str(tmp_path / "y"), formats=["onnx"], echo=lambda line: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .jpg or .png"):
        export_model(path, str(tmp_path / "z"), formats=["tflite"], precisions=["int8"], calibration=str(empty),
                     echo=lambda line: None)
    with pytest.raises(ExportError, match="calibration"):
        export_model(path, str(tmp_path / "z"), formats=["tflite"], precisions=["int8"], echo=lambda line: None)
    with pytest.raises(ExportError, match="TFLite precision"):
        export_model(path, str(tmp_path / "z"), formats=["onnx"], precisions=["fp16"], echo=lambda line: None)
    with pytest.raises(ExportError, match="ONNX/TFLite precision"):
        export_model(path, str(tmp_path / "z"), formats=["saved_model"], precisions=["int8"], echo=lambda line: None)
    with pytest.raises(ExportError, match="ONNX attention 'fused': choose one of standard, onnxruntime"):
        export_model(path, str(tmp_path / "z"), formats=["onnx"], onnx_attention="fused", echo=lambda line: None)
