"""`wsss export` for a model of each method family, trained a few steps on the current backend:
SavedModel, ONNX and TFLite (float32, float16, int8) pass their self-check against the Keras
graph (exported from TensorFlow, in a subprocess on JAX and PyTorch), and the manifests say what
the artifacts are."""

import json

import keras
import pytest
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
PAIRS = [("saved_model", "fp32"), ("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8")]


def trained_toco_doei():
    keras.utils.set_random_seed(0)
    model = tiny_toco(DOEI())
    images, targets = toco_batch()
    model(images)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    for _ in range(TRAIN_STEPS):
        model.train_on_batch(images, targets)
    return model, (32, 32)


def trained_deeplab():
    model = tiny_deeplab(class_names=["background", "a", "b", "c"])
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
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
        check = manifest["check"]
        expected = AGREEMENT[precision]
        assert check["passed"] and check["label_agreement"] >= expected == check["threshold_agreement"], (fmt, check)
        if precision == "fp32":
            assert check["max_abs_difference"] <= 1e-3, (fmt, check)
        assert manifest["model"]["source_sha256"] == file_sha256(path)
        assert manifest["input"] == {**manifest["input"], "dtype": "uint8", "network_size": list(size)}
        assert [o["name"] for o in manifest["outputs"]] == ["logits", "labels"]
        channels = manifest["outputs"][0]["shape"][-1]
        assert len(manifest["classes"]) == len(manifest["palette"]) == channels and manifest["classes"][0] == "background"
    assert any("[check] tflite int8" in line for line in lines)
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
