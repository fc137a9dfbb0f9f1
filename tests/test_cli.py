"""The `wsss` command line: help everywhere, backend choice before Keras, evaluate, quickstart."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import tiny_synthetic
from wsss_keras.cli import cli
from wsss_keras.data.imageio import read_label_map, write_label_map


def all_commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_help_on_every_command():
    runner = CliRunner()
    commands = list(all_commands(cli))
    assert {("info",), ("data",), ("data", "synth"), ("evaluate",), ("quickstart",)} <= set(commands)
    for command in [()] + commands:
        result = runner.invoke(cli, list(command) + ["--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output


def run_wsss(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "wsss_keras.cli", *args], capture_output=True, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
    )


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_option_takes_effect_before_keras_import(backend):
    # KERAS_BACKEND says tensorflow; the option must win because Keras is imported later.
    result = run_wsss("--backend", backend, "info", env={"KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr
    assert any(line.split() == ["backend", backend] for line in result.stdout.splitlines()), result.stdout


def test_unknown_backend_is_a_usage_error():
    result = CliRunner().invoke(cli, ["--backend", "theano", "info"])
    assert result.exit_code == 2 and "theano" in result.output


def test_evaluate_command_scores_and_writes_json(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=2, n_val=6)
    truth_dir = os.path.join(root, "SegmentationClass")
    prediction_dir = tmp_path / "pred"
    rng = np.random.default_rng(0)
    for index in range(6):
        truth = read_label_map(os.path.join(truth_dir, f"val_{index:05d}.png"))
        prediction = np.where(rng.random(truth.shape) < 0.8, truth, 0)
        prediction[prediction == 255] = 0
        write_label_map(str(prediction_dir / f"val_{index:05d}.png"), prediction)
    result = CliRunner().invoke(cli, ["evaluate", str(prediction_dir), truth_dir, "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "m.json") as handle:
        scores = json.load(handle)
    assert scores["images"] == 6 and 0.3 < scores["miou"] < 1.0
    assert set(scores["iou"]) == {"background", "aeroplane", "boat", "car", "person", "train", "bus"}  # class_names.txt beside GT
    assert f"mIoU {100 * scores['miou']:.2f}" in result.output


def test_evaluate_refuses_predictions_without_ground_truth(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=2, n_val=2)
    write_label_map(str(tmp_path / "pred" / "not_an_image.png"), np.zeros((4, 4), np.uint8))
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), os.path.join(root, "SegmentationClass")])
    assert result.exit_code != 0 and "no ground truth for 1 predicted image(s), e.g. not_an_image.png" in result.output


def test_data_synth_and_stats(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "d")
    result = runner.invoke(cli, ["data", "synth", out, "--n-train", "5", "--n-val", "2", "--size", "48", "--classes", "boat,car"])
    assert result.exit_code == 0, result.output
    assert "trap: boat (co-occurrence)" in result.output
    again = runner.invoke(cli, ["data", "synth", out])
    assert again.exit_code != 0 and "--overwrite" in again.output
    stats = runner.invoke(cli, ["data", "stats", out, "--split", "val", "--json"])
    assert json.loads(stats.output)["images"] == 2


def test_quickstart_writes_its_run_folder(tmp_path):
    # A smoke run (a few training steps); the full recipe's figures come from `wsss quickstart`.
    result = run_wsss("quickstart", "--out", str(tmp_path / "run"), "--steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.json") as handle:
        metrics = json.load(handle)
    trivial = metrics["trivial_all_background"]
    assert trivial["images"] == 150 and trivial["iou"]["boat"] == 0.0
    assert trivial["miou"] == pytest.approx(trivial["iou"]["background"] / 7)
    run = metrics["toco_doei"]
    assert run["cams"]["images"] == 600 and run["pseudo_labels"]["images"] == 600 and run["segmentation"]["images"] == 150
    for key in ("cams", "pseudo_labels", "segmentation"):
        assert 0.0 <= run[key]["miou"] <= 1.0
    folder = tmp_path / "run" / "toco_doei"
    assert (folder / "model.keras").is_file() and len(os.listdir(folder / "cams")) == 600
    assert len([name for name in os.listdir(folder / "predictions") if name.endswith(".png")]) == 150
    assert "CAM mIoU" in result.stdout and "pseudo-labels" in result.stdout
    # A second run reuses the data and every finished stage instead of redoing them.
    second = run_wsss("quickstart", "--out", str(tmp_path / "run"), "--steps", "4")
    assert "[train] " in second.stdout and "exists; skipping" in second.stdout
    assert "[data] reusing" in second.stdout


def test_steps_option_sets_the_length_toco_and_doei_run_against(tmp_path):
    from keras import ops

    from wsss_keras.pipelines.model_io import load_model

    # toco_doei_synthetic_cpu: 1,000 steps, seg + reg from step 700, 30 warm-up steps.
    recipe = tmp_path / "tiny_doei.toml"
    recipe.write_text('[recipe]\nname = "tiny_doei"\nextends = "toco_doei_synthetic_cpu"\n'
                      "[train]\nbatch_size = 2\ncrop_size = 32\nscale_range = [1.0, 1.0]\n")
    data = tiny_synthetic(tmp_path / "data", n_train=2, n_val=1, size=32)
    result = CliRunner().invoke(cli, ["train", str(recipe), "--data", data, "--out", str(tmp_path / "run"), "--steps", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    model = load_model(str(tmp_path / "run" / "model.keras"))
    assert model.max_steps == 2  # the recipe's 1,000 before --steps reached the model
    assert model.losses_config["seg_start"] == model.losses_config["reg_start"] == 1  # 700 / 1,000 of 2 steps
    assert model.recipe["train"]["steps"] == 2 and model.recipe["train"]["warmup_steps"] == 0
    assert float(ops.convert_to_numpy(model._progress())) == 1.0  # DOEI's schedule ran to its end
    assert "scale what the recipe counts in steps" in " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())


# TensorFlow's native log lines (absl's format: severity, date, time, thread, file:line]) and
# the banner absl prints before it is initialised.
NATIVE_LOG_LINE = r"^[IWEF]\d{4} \S+\s+\d+ \S+:\d+\] "
STARTUP_NOISE = ("absl::InitializeLog", "oneDNN", "Could not find cuda drivers", "cuInit")


def run_wsss_as_user(*args, **env):
    """`wsss` in a subprocess with the caller's environment minus TensorFlow's log level."""
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(KERAS_BACKEND="tensorflow", **env)
    return subprocess.run(
        [sys.executable, "-m", "wsss_keras.cli", *args], capture_output=True, text=True, env=environment, timeout=300,
    )


def test_tensorflow_startup_noise_is_hidden_unless_asked_for():
    import re

    quiet = run_wsss_as_user("info")
    assert quiet.returncode == 0, quiet.stderr
    assert any(line.split() == ["backend", "tensorflow"] for line in quiet.stdout.splitlines()), quiet.stdout
    assert not [line for line in quiet.stderr.splitlines() if re.match(NATIVE_LOG_LINE, line)], quiet.stderr
    assert not [text for text in STARTUP_NOISE if text in quiet.stderr], quiet.stderr

    # The user's own level is applied as set (0: everything), and --verbose leaves it all on.
    for shown in (run_wsss_as_user("info", TF_CPP_MIN_LOG_LEVEL="0"), run_wsss_as_user("--verbose", "info")):
        assert shown.returncode == 0, shown.stderr
        assert [line for line in shown.stderr.splitlines() if re.match(NATIVE_LOG_LINE, line)], shown.stderr


def test_export_of_a_text_file_named_keras_says_what_it_is_not(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("not a model\n")
    result = CliRunner().invoke(cli, ["export", str(path), "--out", str(tmp_path / "out")])
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("[export]")]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {path}: the file exists but is not a Keras model archive"), result.output
    assert "not found" not in result.output
