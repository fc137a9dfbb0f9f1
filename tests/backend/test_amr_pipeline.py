"""AMR's whole pipeline on the current backend: one training step of every stage (CAM network,
AMR, IRNet, DeepLab-v2) and every file-writing stage between them, through `wsss run`'s stage
list on a tiny dataset; then a resumed run skips everything."""

import json
import os

import numpy as np
from helpers import tiny_amr_recipe, tiny_synthetic

from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map
from wsss_keras.pipelines.model_io import load_model
from wsss_keras.pipelines.run import METHOD_STAGES, run_recipe


def test_every_amr_stage_runs_one_step_and_resumes(tmp_path):
    recipe = tiny_amr_recipe(tmp_path)
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=32)
    run = tmp_path / "run"
    lines = []
    metrics = run_recipe(recipe, data, str(run), steps=1, echo=lines.append)

    for stage in ("train-cam", "train", "train-irn", "train-seg"):
        assert any(line.startswith(f"[{stage}] step 1/1") for line in lines), stage
    for file_name in ("cam_network.keras", "model.keras", "irn.keras", "segmenter.keras", "metrics.json"):
        assert os.path.isfile(run / file_name), file_name
    assert type(load_model(str(run / "model.keras"))).__name__ == "AMR"
    train, val = VocDataset(data, "train"), VocDataset(data, "val")
    for folder in ("cams", "ir_labels", "pseudo_labels"):
        assert sorted(os.listdir(run / folder)) == sorted(f"{name}.{'npz' if folder == 'cams' else 'png'}" for name in train.names)
    for index, name in enumerate(train.names):
        label = read_label_map(str(run / "pseudo_labels" / f"{name}.png"))
        present = set(np.flatnonzero(train.labels[index]) + 1)
        assert label.shape == (32, 32) and set(np.unique(label)) <= present | {0}
    assert sorted(os.listdir(run / "predictions")) == sorted([f"{name}.png" for name in val.names] + ["overlays"])
    assert {"cams", "pseudo_labels", "segmentation"} <= set(metrics)
    assert json.loads((run / "metrics.json").read_text())["recipe"] == "tiny_amr"

    again = []
    run_recipe(recipe, data, str(run), steps=1, echo=again.append)
    assert sum("exists; skipping" in line for line in again) == 4
    assert not any("step 1/1" in line for line in again)
    assert any(line.startswith("[cams] 0 computed") for line in again)
    assert METHOD_STAGES["amr"][0] == "train_cam"
