"""`wsss train-student`: a tiny keras-hub SegFormer student trained on a tiny run's pseudo-labels
from a local keras-hub preset, loaded and predicting; a recipe's `[student]` stage; the
command's one-line errors. The training, and the ONNX and LiteRT exports whose labels match the
Keras student's, on every backend are in tests/backend/test_student.py."""

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import tiny_synthetic

from wsss_keras.cli import cli
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map

SIZE = 64
# MiT with four one-head stages of distinct widths (keras-hub names its SegFormer projections
# after the widths, so they must differ); the first stage is one-head as in B0.
TINY_MIT = {"hidden_dims": [8, 12, 16, 20], "layerwise_num_heads": [1, 1, 1, 1], "layerwise_depths": [1, 1, 1, 1]}


def make_run(tmp_path):
    """A dataset and a finished run folder: pseudo-labels (the ground truth copied) and a tiny
    DeepLab-v2 as the run's final network, with the recipe saying which split they cover."""
    import keras

    from wsss_keras.methods.segmenter import build_deeplab_v2

    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=SIZE, classes="3")
    train = VocDataset(data, "train")
    run = tmp_path / "run"
    os.makedirs(run / "pseudo_labels")
    for path in train.label_map_paths:
        shutil.copy(path, run / "pseudo_labels")
    keras.utils.set_random_seed(0)
    teacher = build_deeplab_v2(train.num_classes, backbone_kwargs={"block_counts": (1, 1, 1, 1), "base_width": 4},
                               msc_scales=(), class_names=train.class_names,
                               recipe={"recipe": {"name": "tiny", "method": "amr"}, "pseudo_labels": {"split": "train"}})
    teacher.save(str(run / "segmenter.keras"))
    return data, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from wsss_keras.methods.student import build_encoder
    from wsss_keras.pipelines.student import train_student

    tmp_path = tmp_path_factory.mktemp("student")
    data, run = make_run(tmp_path)
    preset = tmp_path / "mit_preset"
    encoder = build_encoder("segformer_b0", SIZE, TINY_MIT)
    encoder.save_to_preset(str(preset))  # what a downloaded keras-hub preset folder holds
    lines = []
    path = train_student(str(run), data, "segformer_b0", steps=2, student_weights=str(preset),
                         settings={"input_size": SIZE, "batch_size": 2, "projection_filters": 16, "kd_weight": 0.5},
                         echo=lines.append)
    return data, run, preset, encoder, path, lines


def test_student_trains_saves_loads_and_predicts(trained):
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.predict import predict_folder

    data, run, _, encoder, path, lines = trained
    assert path == str(run / "student_segformer_b0.keras") and os.path.isfile(path)
    assert any("step 2/2" in line for line in lines) and any("distilling from" in line for line in lines)
    assert os.path.isfile(run / "student_segformer_b0_log.csv")
    student = load_model(path)
    val = VocDataset(data, "val")
    assert type(student).__name__ == "StudentSegmenter" and student.class_names == list(val.class_names)
    # The encoder started from the preset: same architecture (variable shapes) as the saved one.
    mit = student.network.backbone.image_encoder
    assert [tuple(w.shape) for w in mit.weights] == [tuple(w.shape) for w in encoder.weights]
    assert predict_folder(student, val, str(run / "predictions"), overlay=False) == len(val)
    for i, name in enumerate(val.names):
        labels = read_label_map(str(run / "predictions" / f"{name}.png"), val.num_classes)
        assert labels.shape == val.load_image(i).shape[:2] and labels.max() < val.num_classes


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_student_errors_are_one_line(trained, tmp_path):
    data, run, preset, _, _, _ = trained
    invoke = CliRunner().invoke
    empty = tmp_path / "empty_run"
    os.makedirs(empty)
    shutil.copy(run / "segmenter.keras", empty)
    result = invoke(cli, ["train-student", str(empty), "--arch", "segformer_b0", "--data", data, "--steps", "1"])
    assert_one_line_error(result, "no pseudo-labels", "wsss run")
    result = invoke(cli, ["train-student", str(run), "--arch", "mobilenet_v3_small", "--data", data,
                          "--student-weights", str(preset), "--steps", "1"])
    assert_one_line_error(result, "MiTBackbone", "MobileNetBackbone", "--arch segformer_b0")
    result = invoke(cli, ["train-student", str(run), "--arch", "resnet9000", "--data", data])
    assert_one_line_error(result, "resnet9000", "segformer_b0", "mobilenet_v3_small")


STUDENT_RECIPE = """
[recipe]
name = "tiny_student"
method = "amr"

[student]
arch = "mobilenet_v3_small"
steps = 40  # --smoke 2 scales it to 2
batch_size = 2
input_size = 64
head_channels = 16
"""


def test_a_recipe_student_table_adds_the_stage_that_trains_predicts_and_is_scored(tmp_path):
    from wsss_keras.pipelines.run import method_stages
    from wsss_keras.pipelines.smoke import smoke_run
    from wsss_keras.recipes import load_recipe

    data, run = make_run(tmp_path)
    path = tmp_path / "student.toml"
    path.write_text(STUDENT_RECIPE)
    recipe = load_recipe(str(path))
    assert method_stages(recipe)[-2:] == ("train_student", "evaluate")
    assert "train_student" not in method_stages({key: value for key, value in recipe.items() if key != "student"})
    rows = smoke_run(recipe, data, str(run), steps=2, stages=("train_student", "evaluate"), echo=lambda line: None)
    student = next(row for row in rows if row["stage"] == "train_student")
    assert student["unit"] == "s/step" and student["batch"] == 2, student
    assert student["output"] == "student_mobilenet_v3_small.keras: ok"
    assert json.loads((run / "student_mobilenet_v3_small_summary.json").read_text())["steps"] == 2
    # The evaluate stage's student mIoU against one computed here from the PNGs.
    val = VocDataset(data, "val")
    matrix = np.zeros((val.num_classes, val.num_classes), np.int64)
    for i, name in enumerate(val.names):
        predicted = read_label_map(str(run / "student_predictions" / f"{name}.png"), val.num_classes)
        truth = val.load_label_map(i)
        keep = truth != 255
        matrix += np.bincount(truth[keep] * val.num_classes + predicted[keep],
                              minlength=val.num_classes ** 2).reshape(matrix.shape)
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    expected = np.mean([matrix[c, c] / union[c] for c in range(val.num_classes) if union[c]])
    scored = json.loads((run / "metrics.json").read_text())["student"]
    assert scored["arch"] == "mobilenet_v3_small" and scored["split"] == "val" and scored["images"] == len(val)
    assert scored["miou"] == pytest.approx(expected, abs=1e-9)


def test_a_recipe_student_table_is_checked_before_any_stage(tmp_path):
    from wsss_keras.errors import RecipeError
    from wsss_keras.pipelines.run import run_recipe
    from wsss_keras.recipes import load_recipe

    data, run = make_run(tmp_path)
    path = tmp_path / "student.toml"
    path.write_text(STUDENT_RECIPE.replace('"mobilenet_v3_small"', '"resnet9000"'))
    with pytest.raises(RecipeError, match=r"student\.toml.*\[student\] arch = 'resnet9000'.*segformer_b0"):
        run_recipe(load_recipe(str(path)), data, str(run), stages=("train_student",))
    assert not os.path.exists(run / "student_predictions")
    path.write_text(STUDENT_RECIPE + "learning_rat = 0.1\n")
    with pytest.raises(RecipeError, match="learning_rat"):
        load_recipe(str(path))
