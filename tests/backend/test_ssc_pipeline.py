"""SSC's whole pipeline on the current backend: superpixels, one training step of every network
(SSC's CAM network, IRNet, DeepLab-v2) and every file stage between them, through `wsss run`'s
stage list on a tiny dataset; then a resumed run skips everything."""

import os

import numpy as np

from helpers import tiny_irn_stages, tiny_synthetic
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map
from wsss_keras.pipelines.model_io import load_model
from wsss_keras.pipelines.run import METHOD_STAGES, run_recipe
from wsss_keras.recipes import load_recipe

TINY_SSC = """
[recipe]
name = "tiny_ssc"
method = "ssc"

[model]
backbone = { block_counts = [1, 1, 1, 1], base_width = 8, output_stride = 8, freeze_stem = false, frozen_batchnorm = "none" }

[superpixels]
n_segments = 12

[ssc]
frozen_stages = 0
decoder_widths = [8, 8, 8, 8]
loss_network_width = 0.0625
random_loss_network = true
erosion_size = 2
self_modulation_start = 0

[train]
batch_size = 2
crop_size = 32
long_side = [28, 40]

"""



def test_every_ssc_stage_runs_one_step_and_resumes(tmp_path):
    (tmp_path / "tiny_ssc.toml").write_text(TINY_SSC + tiny_irn_stages("model"))
    recipe = load_recipe(str(tmp_path / "tiny_ssc.toml"))
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=32)
    run = tmp_path / "run"
    lines = []
    metrics = run_recipe(recipe, data, str(run), steps=1, echo=lines.append)

    for stage in ("train", "train-irn", "train-seg"):
        assert any(line.startswith(f"[{stage}] step 1/1") for line in lines), stage
    assert any("random frozen weights" in line for line in lines)
    model = load_model(str(run / "model.keras"))
    assert type(model).__name__ == "SSC" and model.num_superpixels >= 2 and model.decoder is not None
    train = VocDataset(data, "train")
    assert sorted(os.listdir(run / "superpixels")) == sorted([f"{name}.png" for name in train.names] + ["superpixels.json"])
    for folder in ("cams", "ir_labels", "pseudo_labels"):
        assert sorted(os.listdir(run / folder)) == sorted(f"{name}.{'npz' if folder == 'cams' else 'png'}" for name in train.names)
    for index, name in enumerate(train.names):
        present = set(np.flatnonzero(train.labels[index]) + 1)
        assert set(np.unique(read_label_map(str(run / "pseudo_labels" / f"{name}.png")))) <= present | {0}
    assert {"cams", "pseudo_labels", "segmentation"} <= set(metrics)

    again = []
    run_recipe(recipe, data, str(run), steps=1, echo=again.append)
    assert sum("exists; skipping" in line for line in again) == 3
    assert any(line.startswith("[superpixels] 0 computed") for line in again)
    assert not any("step 1/1" in line for line in again)
    assert METHOD_STAGES["ssc"][0] == "superpixels" and "train_cam" not in METHOD_STAGES["ssc"]
