"""`train_segmenter`: DeepLab-v2 trained on a run's pseudo-labels, saved, loaded and used by predict."""

import os
import shutil

import pytest

from helpers import tiny_synthetic
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map
from wsss_keras.errors import DataError
from wsss_keras.pipelines.model_io import load_model
from wsss_keras.pipelines.predict import predict_folder
from wsss_keras.pipelines.segmentation import SEGMENTER_FILE, train_segmenter
from wsss_keras.recipes import load_recipe

RECIPE_TOML = """
[recipe]
name = "tiny_segmentation"
method = "toco"

[segmentation]
arch = "resnet50"
steps = 2
batch_size = 2
crop_size = 32
msc_scales = [0.5]
backbone = { block_counts = [1, 1, 1, 1], base_width = 4, frozen_batchnorm = "none" }
learning_rate = 1e-3
"""


def test_train_segmenter_on_pseudo_labels_then_predict(tmp_path):
    (tmp_path / "recipe.toml").write_text(RECIPE_TOML)
    recipe = load_recipe(str(tmp_path / "recipe.toml"))
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=48)
    run = tmp_path / "run"
    pseudo = run / "pseudo_labels"
    train = VocDataset(data, "train")
    os.makedirs(pseudo)
    for path in train.label_map_paths[:3]:
        shutil.copy(path, pseudo)
    with pytest.raises(DataError, match=r"1 of 4 pseudo-labels .* missing .*pseudo-label stage"):
        train_segmenter(recipe, data, str(run), echo=lambda line: None)
    shutil.copy(train.label_map_paths[3], pseudo)
    lines = []
    path = train_segmenter(recipe, data, str(run), echo=lines.append)
    assert path == str(run / SEGMENTER_FILE) and os.path.isfile(path)
    assert any("step 2/2" in line for line in lines)
    assert os.path.isfile(run / "segmenter_log.csv") and os.path.isfile(run / "segmenter_summary.json")
    model = load_model(path)
    assert type(model).__name__ == "DeepLabV2" and model.class_names == list(train.class_names)
    val = VocDataset(data, "val")
    assert predict_folder(model, val, str(run / "predictions"), overlay=False) == len(val)
    labels = [read_label_map(str(run / "predictions" / f"{name}.png"), val.num_classes) for name in val.names]
    assert all(label.shape == val.load_image(i).shape[:2] and label.max() < val.num_classes for i, label in enumerate(labels))
