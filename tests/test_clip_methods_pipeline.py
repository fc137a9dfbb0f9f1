"""The frozen-CLIP methods end to end through `wsss run` on tiny data: the CPU recipes (a tiny
CLIP trained first) for WeCLIP and SSR, and the paper recipe `ssr_voc` started from random
weights written in the real formats (an OpenAI CLIP TorchScript archive, OpenAI's BPE file,
a DINO state dict)."""

import gzip
import json
import os

import numpy as np
import pytest
import torch

from helpers import tiny_synthetic
from torchscript_archive import save_torchscript
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map
from wsss_keras.errors import RecipeError
from wsss_keras.pipelines.model_io import load_model
from wsss_keras.pipelines.run import METHOD_STAGES, run_recipe
from wsss_keras.recipes import load_recipe

TINY_CPU = """
[recipe]
name = "tiny_{method}"
method = "{method}"
extends = "{method}_synthetic_cpu"

[clip]
image = {{ patch_size = 1, hidden_dim = 16, num_layers = 2, num_heads = 2, mlp_dim = 32, output_dim = 8, pos_embed_grid = 4, stem = {{ widths = [8, 16], convs_per_stage = 1 }} }}
text = {{ hidden_dim = 16, num_layers = 1, num_heads = 2, mlp_dim = 32, output_dim = 8 }}
batch_size = 2
crop_size = 32

[model]
decoder_width = 16
decoder_heads = 2

[train]
batch_size = 2
crop_size = 32

[predict]
scales = [1.0]
flip = false
"""
TINY_SSR = """
[superpixels]
n_segments = 12
colour_clusters = 3

[ssr]
projection_hidden = 8
projection_dim = 4
prototype_bank = "epoch"

[dino]
source = "train"
vit = { hidden_dim = 8, num_layers = 1, num_heads = 2, mlp_dim = 16, pos_embed_grid = 4, stem = { widths = [8, 16], convs_per_stage = 1, norm = "group" } }
batch_size = 2
global_size = 32
local_size = 16
local_crops = 2
prototypes = 8
head_hidden = 8
bottleneck = 4
"""  # SSR's own tables: a WeCLIP recipe with them is refused (WeCLIP would ignore them)


@pytest.mark.parametrize("method", ["weclip", "ssr"])
def test_cpu_recipe_runs_every_stage_and_resumes(tmp_path, method):
    (tmp_path / "tiny.toml").write_text(TINY_CPU.format(method=method) + (TINY_SSR if method == "ssr" else ""))
    recipe = load_recipe(str(tmp_path / "tiny.toml"))
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=32)
    run = tmp_path / "run"
    lines = []
    metrics = run_recipe(recipe, data, str(run), steps=1, echo=lines.append)

    for stage in ("train-clip", "train") + (("train-dino",) if method == "ssr" else ()):
        assert any(line.startswith(f"[{stage}] step 1/1") for line in lines), stage
    assert os.path.isfile(run / "clip.keras") and json.loads((run / "clip_words.json").read_text())["words"]
    model = load_model(str(run / "model.keras"))
    assert type(model).__name__ == {"weclip": "WeCLIP", "ssr": "SSR"}[method]
    train = VocDataset(data, "train")
    for folder, extension in (("cams", "npz"), ("pseudo_labels", "png")):
        assert sorted(os.listdir(run / folder)) == sorted(f"{name}.{extension}" for name in train.names)
    for index, name in enumerate(train.names):
        pseudo = read_label_map(str(run / "pseudo_labels" / f"{name}.png"))
        present = {0} | {int(c) + 1 for c in np.flatnonzero(train.labels[index])}
        assert pseudo.shape == (32, 32) and set(np.unique(pseudo).tolist()) <= present
    if method == "ssr":
        assert any("prototypes refreshed at step 0" in line for line in lines)
        # SGC's DINO is the teacher of the ViT trained here, whose token stride is the CLIP's.
        assert type(model.dino).__name__ == "StemViT" and model.dino.stride == model.image_encoder.stride == 2
        assert any("DINO attention from the ViT trained here" in line for line in lines)
        regions = sorted(name for name in os.listdir(run / "regions") if name.endswith(".png"))
        assert regions == sorted(f"{name}.png" for name in train.names)
    assert {"cams", "pseudo_labels", "segmentation"} <= set(metrics)

    again = []
    run_recipe(recipe, data, str(run), steps=1, echo=again.append)
    assert not any("step 1/1" in line for line in again)
    assert any("exists; skipping" in line for line in again)
    assert METHOD_STAGES[method][-1] == "evaluate"


TINY_CLIP_ARCH = {
    "image": dict(patch_size=16, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32, output_dim=8, pos_embed_grid=2),
    "text": dict(vocabulary_size=515, context_length=77, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, output_dim=8),
}
TINY_DINO_ARCH = dict(patch_size=16, hidden_dim=12, num_layers=2, num_heads=2, mlp_dim=24, pos_embed_grid=2,
                      pos_embed_mode="bicubic_dino")


def write_random_checkpoints(folder):
    """An OpenAI-layout CLIP as a TorchScript archive, OpenAI's BPE file (one merge), and a
    DINO state dict, all random, in the architectures above."""
    from wsss_keras.backbones.clip.clip_weights import expected_shapes as clip_shapes
    from wsss_keras.backbones.vit.vit_encoder import ViTEncoder
    from wsss_keras.backbones.vit.vit_weights import expected_shapes as vit_shapes
    from wsss_keras.backbones.vit.vit_weights import resolve_arch

    generator = torch.Generator().manual_seed(0)
    state = {name: 0.05 * torch.randn(shape, generator=generator) for name, shape in clip_shapes(TINY_CLIP_ARCH).items()}
    state["logit_scale"] = torch.tensor(float(np.log(100.0)))

    save_torchscript(state, folder / "ViT-B-16.pt")
    with gzip.open(folder / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("#version: 0.2\nc a\n")
    encoder = ViTEncoder(**resolve_arch(dict(TINY_DINO_ARCH)))
    dino = {name: 0.05 * torch.randn(shape, generator=generator) for name, shape in vit_shapes(encoder).items()}
    torch.save(dino, folder / "dino_deitsmall16_pretrain.pth")


PAPER = """
[recipe]
name = "ssr_voc_random"
method = "ssr"
extends = "ssr_voc"

[clip]
arch = {clip_arch}
tokenizer = "{folder}/bpe_simple_vocab_16e6.txt.gz"

[dino]
arch = {dino_arch}
weights = "{folder}/dino_deitsmall16_pretrain.pth"

[model]
decoder_width = 16
decoder_layers = 1
decoder_heads = 2

[superpixels]
n_segments = 12

[ssr]
projection_hidden = 8
projection_dim = 4
prototype_bank = "epoch"

[train]
batch_size = 2
crop_size = 64

[predict]
crf = false
"""


def toml_table(values):
    def value(v):
        if isinstance(v, dict):
            return toml_table(v)
        return json.dumps(v)
    return "{ " + ", ".join(f"{key} = {value(v)}" for key, v in values.items()) + " }"


def test_paper_recipe_starts_from_local_checkpoints_in_the_real_formats(tmp_path):
    write_random_checkpoints(tmp_path)
    text = PAPER.format(clip_arch=toml_table(TINY_CLIP_ARCH), dino_arch=toml_table(TINY_DINO_ARCH), folder=tmp_path)
    (tmp_path / "paper.toml").write_text(text)
    recipe = load_recipe(str(tmp_path / "paper.toml"))
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=64)
    run = tmp_path / "run"
    lines = []
    stages = ("superpixels", "train_clip", "train", "pseudo_labels")
    run_recipe(recipe, data, str(run), weights=str(tmp_path / "ViT-B-16.pt"), stages=stages, steps=1, echo=lines.append)
    assert any("nothing to train" in line for line in lines)
    assert any("6 class prompts, 25 background prompts" in line for line in lines)
    assert any("DINO attention from" in line for line in lines)
    assert any(line.startswith("[train] step 1/1") for line in lines)
    model = load_model(str(run / "model.keras"))
    assert model.dino is not None and model.options["clip_weight"] == 0.4 and model.options["seg_weight"] == 0.1
    assert len(os.listdir(run / "pseudo_labels")) == len(VocDataset(data, "train").names)

    # Without the CLIP weights the recipe says what to pass.
    with pytest.raises(RecipeError, match="--weights ViT-B-16.pt"):
        run_recipe(recipe, data, str(tmp_path / "other"), stages=("train",), steps=1, echo=lines.append)


def test_online_pseudo_labels_are_refused_for_other_methods(tmp_path):
    (tmp_path / "toco.toml").write_text('[recipe]\nname = "t"\nmethod = "toco"\n[pseudo_labels]\nmode = "online"\n')
    recipe = load_recipe(str(tmp_path / "toco.toml"))
    with pytest.raises(RecipeError, match="WeCLIP's and SSR's"):
        run_recipe(recipe, str(tmp_path), str(tmp_path / "run"), stages=("pseudo_labels",), echo=lambda line: None)
