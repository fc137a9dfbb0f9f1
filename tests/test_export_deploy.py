"""`wsss export` from the command line, and the exported artifacts run where Keras is not: the
ONNX model under plain onnxruntime, the `.tflite` under `wsss_deploy.litert_runner`, each in a
subprocess that must not import Keras or TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import tiny_synthetic
from wsss_keras.cli import cli

DEPLOY_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export")
# Run the checks with only the deployment package on the path first, as on a device.
NO_KERAS = textwrap.dedent("""
    import sys
    loaded = sorted(name for name in ("keras", "tensorflow", "jax", "torch", "wsss_keras") if name in sys.modules)
    assert not loaded, f"imported {loaded}"
    print("no keras")
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny DeepLab-v2 saved as .keras and exported to ONNX and TFLite through the CLI."""
    import keras

    from wsss_keras.methods.segmenter import build_deeplab_v2

    root = tmp_path_factory.mktemp("export")
    data = tiny_synthetic(root / "data", n_train=8, n_val=2, size=48)
    keras.utils.set_random_seed(0)
    model = build_deeplab_v2(7, backbone_kwargs={"block_counts": (1, 1, 1, 1), "base_width": 8},
                             class_names=["background"] + [f"c{i}" for i in range(6)])
    model(np.zeros((1, 48, 48, 3), "float32"))
    model.save(root / "model.keras")
    result = CliRunner().invoke(cli, ["export", str(root / "model.keras"), "--format", "onnx", "--format", "tflite",
                                      "--input-size", "48", "48", "--samples", data, "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    assert "[check] onnx fp32: label agreement 100.000 %" in result.output
    return root, data


def run_python(code, cwd):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = DEPLOY_ROOT
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)


def test_onnx_runs_under_plain_onnxruntime(exported):
    root, data = exported
    image = os.path.join(data, "JPEGImages", sorted(os.listdir(os.path.join(data, "JPEGImages")))[0])
    code = textwrap.dedent(f"""
        import json, numpy as np, onnxruntime
        from PIL import Image
        manifest = json.load(open({str(root / "out" / "onnx_fp32" / "manifest.json")!r}))
        session = onnxruntime.InferenceSession({str(root / "out" / "onnx_fp32" / "model.onnx")!r})
        image = np.asarray(Image.open({image!r}).convert("RGB"))[None]
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {{"image": image}})))
        assert outputs["labels"].shape == image.shape[:3] and outputs["labels"].dtype == np.uint8
        assert outputs["logits"].shape[-1] == len(manifest["classes"]) == 7
        assert (outputs["logits"].argmax(-1) == outputs["labels"]).all()
    """) + NO_KERAS
    result = run_python(code, str(root))
    assert result.returncode == 0 and "no keras" in result.stdout, result.stderr[-3000:]


def test_litert_runner_writes_label_pngs_without_keras(exported):
    root, data = exported
    images = sorted(os.listdir(os.path.join(data, "JPEGImages")))[:2]
    paths = [os.path.join(data, "JPEGImages", name) for name in images]
    model = str(root / "out" / "tflite_fp32" / "model.tflite")
    code = textwrap.dedent(f"""
        from wsss_deploy.litert_runner import main
        assert main([{model!r}, *{paths!r}, "--out", "masks", "--repeat", "2"]) == 0
    """) + NO_KERAS
    result = run_python(code, str(root))
    assert result.returncode == 0 and "no keras" in result.stdout, result.stderr[-3000:]
    assert "ms median" in result.stdout
    with open(root / "out" / "tflite_fp32" / "manifest.json", encoding="utf-8") as handle:
        palette = json.load(handle)["palette"]
    for name in images:
        mask = Image.open(root / "masks" / (os.path.splitext(name)[0] + ".png"))
        assert mask.mode == "P" and mask.size == Image.open(os.path.join(data, "JPEGImages", name)).size
        assert np.asarray(mask.getpalette()[:6]).reshape(2, 3).tolist() == palette[:2]


def test_runner_and_cli_refuse_bad_input(exported, tmp_path):
    root, _ = exported
    result = run_python(textwrap.dedent(f"""
        from wsss_deploy.litert_runner import main
        main([{str(tmp_path / "missing.tflite")!r}, "x.jpg"])
    """), str(root))
    assert result.returncode == 2 and "manifest" in result.stderr
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("hello")
    result = CliRunner().invoke(cli, ["export", str(not_a_model), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "notes.keras" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["export", str(root / "model.keras"), "--precision", "int8", "--format", "tflite",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "--calibration" in result.output


def test_labels_only_graph(exported, tmp_path):
    import onnxruntime

    root, data = exported
    result = CliRunner().invoke(cli, ["export", str(root / "model.keras"), "--output", "labels", "--input-size", "48", "48",
                                      "--samples", data, "--out", str(tmp_path / "labels")])
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(tmp_path / "labels" / "model.onnx"))
    assert [output.name for output in session.get_outputs()] == ["labels"]
    labels, = session.run(None, {"image": np.zeros((2, 30, 50, 3), np.uint8)})
    assert labels.shape == (2, 30, 50) and labels.dtype == np.uint8 and labels.max() < 7
    with open(tmp_path / "labels" / "manifest.json", encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert manifest["output"] == "labels" and manifest["check"]["max_abs_difference"] is None
    assert manifest["classes"] == ["background"] + [f"c{i}" for i in range(6)]


def test_serves_a_wsss_export(exported):
    """The server on a real `wsss export` folder: masks equal onnxruntime's, manifest served."""
    import io

    import onnxruntime

    from test_serve import call, running_server
    from wsss_deploy.serve import ServeSettings

    root, data = exported
    folder = str(root / "out" / "onnx_fp32")
    session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"))
    with running_server(ServeSettings(folder)) as url:
        for name in sorted(os.listdir(os.path.join(data, "JPEGImages")))[:3]:
            path = os.path.join(data, "JPEGImages", name)
            with open(path, "rb") as handle:
                status, _, body = call(f"{url}/v1/segment", handle.read(), {"Content-Type": "image/jpeg"})
            assert status == 200, body[:300]
            image = np.asarray(Image.open(path).convert("RGB"))
            expected = session.run(["labels"], {"image": image[None]})[0][0]
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), expected)
        model = json.loads(call(f"{url}/v1/model")[2])["manifest"]
    assert model["classes"] == ["background"] + [f"c{i}" for i in range(6)] and model["artifact"]["format"] == "onnx"


def test_triton_repository(exported, tmp_path):
    """`--format triton`: <name>/config.pbtxt and <name>/1/model.onnx (+ manifest); the config
    names the graph's real input and outputs with their Triton types and batchable dims."""
    import re

    import onnxruntime

    from wsss_deploy.onnx_runner import OnnxSegmenter

    root, data = exported
    result = CliRunner().invoke(cli, ["export", str(root / "model.keras"), "--format", "triton", "--input-size", "48", "48",
                                      "--samples", data, "--out", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    config = (tmp_path / "repo" / "model" / "config.pbtxt").read_text()
    version = tmp_path / "repo" / "model" / "1"
    assert sorted(os.listdir(version)) == ["manifest.json", "model.onnx"]
    assert re.search(r'^name: "model"$', config, re.M) and re.search(r'^backend: "onnxruntime"$', config, re.M)
    assert re.search(r"^max_batch_size: 8$", config, re.M) and "max_queue_delay_microseconds" in config
    tensors = {name: (kind, [int(d) for d in dims.split(",")]) for name, kind, dims in
               re.findall(r'name: "(\w+)"\s+data_type: (\w+)\s+dims: \[ ([^\]]*) \]', config)}
    session = onnxruntime.InferenceSession(str(version / "model.onnx"))
    triton_types = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32"}
    for tensor in session.get_inputs() + session.get_outputs():
        kind, dims = tensors.pop(tensor.name)
        assert kind == triton_types[tensor.type] and len(dims) == len(tensor.shape) - 1  # batch dim implied
    assert not tensors, f"config.pbtxt names tensors the graph lacks: {tensors}"
    assert "dims: [ -1, -1, 7 ]" in config and "dims: [ -1, -1, 3 ]" in config
    segmenter = OnnxSegmenter(str(version))
    assert segmenter.manifest["artifact"]["format"] == "triton"
    assert segmenter.run(np.zeros((2, 40, 30, 3), np.uint8))["labels"].shape == (2, 40, 30)


def test_int8_scope_weights_quantises_only_the_weighted_ops(exported, tmp_path):
    from wsss_keras.export import INT8_WEIGHTED_OPS, tflite_op_names

    root, data = exported
    result = CliRunner().invoke(cli, ["export", str(root / "model.keras"), "--format", "tflite", "--precision", "int8",
                                      "--int8-scope", "weights", "--input-size", "48", "48", "--calibration", data,
                                      "--out", str(tmp_path / "weights")])
    assert result.exit_code == 0, result.output
    # Straight to the one level, no cascade.
    assert "[export] int8: only CONV_2D in int8" in result.output and "trying again" not in result.output
    with open(tmp_path / "weights" / "manifest.json", encoding="utf-8") as handle:
        check = json.load(handle)["check"]
    with open(root / "out" / "tflite_fp32" / "model.tflite", "rb") as handle:
        model_ops = set(tflite_op_names(handle.read()))
    with open(tmp_path / "weights" / "model.tflite", "rb") as handle:
        int8_model_ops = set(tflite_op_names(handle.read()))
    assert check["passed"] and check["int8_scope"] == "weights"
    assert set(check["int8_ops"]) == model_ops & set(INT8_WEIGHTED_OPS) == {"CONV_2D"}
    assert set(check["float_ops"]) == model_ops - set(INT8_WEIGHTED_OPS)
    assert {"QUANTIZE", "DEQUANTIZE"} <= int8_model_ops  # int8 islands around the convolutions
    result = CliRunner().invoke(cli, ["export", str(root / "model.keras"), "--int8-scope", "half", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'half' is not one of 'full', 'weights'" in result.output
