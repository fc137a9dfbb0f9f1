"""`--weights random` (issue #24 item 2): every backbone of a run built untrained, explicitly.

The click type of `--weights` takes a local checkpoint or the word `random`
(`registry.RANDOM_WEIGHTS`); each loader of pretrained weights then builds its arch untrained
instead of reading a file. Here at toy size: each loader's model is compared with the same arch
loaded from a checkpoint of constant values (so "untrained" is not "loaded"), a recipe's own
weights file is overridden (it does not even exist), and without weights the old errors stand.
"""

import types

import click
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from wsss_keras.backbones import registry
from wsss_keras.backbones.registry import RANDOM_WEIGHTS
from wsss_keras.commands.options import WEIGHTS
from wsss_keras.errors import WSSSError

CONSTANT = 0.5
TINY_RESNET = {"block_counts": [1, 1, 1, 1], "base_width": 8}
TINY_VIT = {"hidden_dim": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64, "pos_embed_grid": 4}
TINY_CLIP = {
    "image": {"patch_size": 16, "hidden_dim": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64, "output_dim": 16,
              "pos_embed_grid": 4},
    "text": {"vocabulary_size": 49408, "context_length": 77, "hidden_dim": 32, "num_layers": 1, "num_heads": 2,
             "mlp_dim": 64, "output_dim": 16},
}
CLASSES = ["background", "aeroplane", "bicycle", "bird"]


def _values(model):
    return [np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight) for weight in model.weights]


def _is_constant_file_model(model):
    """Every float variable equals CONSTANT (the checkpoint's value) after loading."""
    return all(np.allclose(value, CONSTANT) for value in _values(model) if value.dtype.kind == "f" and value.size)


def _constant_file(folder, name, shapes):
    path = str(folder / name)
    save_file({key: np.full(shape, CONSTANT, "float32") for key, shape in shapes.items()}, path)
    return path


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    from wsss_keras.backbones.resnet.convert import torchvision_shapes

    shapes = torchvision_shapes(tuple(TINY_RESNET["block_counts"]), TINY_RESNET["base_width"])
    return _constant_file(tmp_path_factory.mktemp("ckpt"), "resnet.safetensors", shapes)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    from wsss_keras.backbones.vit.vit_weights import (
        encoder_settings,
        expected_shapes,
        resolve_arch,
    )

    shapes = expected_shapes(encoder_settings(resolve_arch("vit_b16", **TINY_VIT)))
    return _constant_file(tmp_path_factory.mktemp("ckpt"), "vit.safetensors", shapes)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    from wsss_keras.backbones.clip.clip_weights import expected_shapes, resolve_arch

    shapes = expected_shapes(resolve_arch(TINY_CLIP))
    return _constant_file(tmp_path_factory.mktemp("ckpt"), "clip.safetensors", shapes)


# --------------------------------------------------------------------------- the click type


def _command():
    @click.command()
    @click.option("--weights", type=WEIGHTS, default=None)
    def command(weights):
        click.echo(f"weights={weights}")

    return command


def test_weights_option_takes_random_and_existing_paths(tmp_path):
    assert CliRunner().invoke(_command(), ["--weights", "random"]).output == f"weights={RANDOM_WEIGHTS}\n"
    checkpoint = tmp_path / "resnet50.pth"
    checkpoint.write_bytes(b"x")
    result = CliRunner().invoke(_command(), ["--weights", str(checkpoint)])
    assert result.exit_code == 0 and result.output == f"weights={checkpoint}\n"
    assert CliRunner().invoke(_command(), ["--weights", str(tmp_path)]).output == f"weights={tmp_path}\n"  # a preset folder
    assert CliRunner().invoke(_command(), []).output == "weights=None\n"


def test_weights_option_names_a_missing_path_and_the_alternative(tmp_path):
    missing = str(tmp_path / "nowhere.pth")
    result = CliRunner().invoke(_command(), ["--weights", missing])
    assert result.exit_code == 2
    assert "Invalid value for '--weights'" in result.output
    assert f"'{missing}': no such file or folder" in result.output
    assert "'random'" in result.output
    assert "--weights PATH|random" in CliRunner().invoke(_command(), ["--help"]).output


def test_sentinel_lives_in_the_registry():
    assert RANDOM_WEIGHTS == "random"
    assert registry.is_random("random") and not registry.is_random("random.pth") and not registry.is_random(None)
    assert registry.weights_origin(RANDOM_WEIGHTS) == "random (untrained)"
    assert registry.weights_origin("a.pth") == "a.pth"


# --------------------------------------------------------------------------- ResNet (AMR, SSC, IRN, DeepLab)


def _amr_recipe(weights=None):
    model = {"arch": "resnet50", "backbone": dict(TINY_RESNET)}
    if weights:
        model["weights"] = weights
    return {"recipe": {"name": "amr_test", "method": "amr"}, "model": model}


def test_build_backbone_random_is_untrained_and_overrides_the_recipe_file(resnet_file, tmp_path):
    from wsss_keras.pipelines.cam_backbone import build_backbone

    loaded = build_backbone(_amr_recipe(resnet_file), "amr", name="loaded")
    assert _is_constant_file_model(loaded)
    # The recipe's own file does not exist: random must not read it (nor a file called "random").
    recipe = _amr_recipe(str(tmp_path / "missing.pth"))
    untrained = build_backbone(recipe, "amr", RANDOM_WEIGHTS, name="untrained")
    assert [w.shape for w in untrained.weights] == [w.shape for w in loaded.weights]
    assert not _is_constant_file_model(untrained)
    with pytest.raises(WSSSError, match="missing.pth"):
        build_backbone(recipe, "amr", name="from_file")


def test_build_irn_and_segmenter_random(tmp_path):
    from wsss_keras.pipelines.irn import build_irn
    from wsss_keras.pipelines.segmentation import build_segmenter

    dataset = types.SimpleNamespace(num_classes=len(CLASSES), class_names=list(CLASSES))
    missing = str(tmp_path / "missing.pth")
    recipe = {
        "recipe": {"name": "amr_test", "method": "amr"},
        "irn": {"backbone": dict(TINY_RESNET), "weights": missing},
        "segmentation": {"arch": "resnet101", "backbone": dict(TINY_RESNET), "weights": missing},
    }
    assert build_irn(recipe, dataset, RANDOM_WEIGHTS).backbone.weights
    assert build_segmenter(recipe, dataset, RANDOM_WEIGHTS).backbone.weights
    for build in (build_irn, build_segmenter):
        with pytest.raises(Exception, match="missing.pth"):
            build(recipe, dataset)


def test_ssc_loss_network_random_needs_no_file_and_the_old_errors_stand(tmp_path):
    from wsss_keras.pipelines.ssc import loss_network_source

    missing = {"recipe": {"name": "ssc_test", "method": "ssc"}, "ssc": {"loss_network_weights": str(tmp_path / "vgg19.pth")}}
    assert loss_network_source(missing, RANDOM_WEIGHTS) == RANDOM_WEIGHTS
    with pytest.raises(WSSSError, match="no such file"):
        loss_network_source(missing)
    unset = {"recipe": {"name": "ssc_test", "method": "ssc"}, "ssc": {}}
    assert loss_network_source(unset, RANDOM_WEIGHTS) == RANDOM_WEIGHTS
    with pytest.raises(WSSSError, match="set \\[ssc\\] loss_network_weights"):
        loss_network_source(unset)
    assert loss_network_source({"ssc": {"reconstruction_weight": 0.0}}, RANDOM_WEIGHTS) is None  # no loss network


# --------------------------------------------------------------------------- ViT (ToCo, DINO)


def test_build_encoder_random_and_the_old_error(vit_file):
    from wsss_keras.pipelines.toco import build_encoder

    recipe = {"recipe": {"name": "toco_test", "method": "toco"}}
    settings = {"backbone": "vit_b16", "encoder": dict(TINY_VIT)}
    loaded = build_encoder(settings, vit_file, None, recipe)
    assert _is_constant_file_model(loaded)
    untrained = build_encoder({**settings, "weights": "elsewhere.safetensors"}, RANDOM_WEIGHTS, None, recipe)
    assert (untrained.hidden_dim, untrained.num_layers, untrained.pos_embed_trainable) == (32, 1, False)
    assert [w.shape for w in untrained.weights] == [w.shape for w in loaded.weights]
    assert not _is_constant_file_model(untrained)
    with pytest.raises(WSSSError, match=r"backbone 'vit_b16' trains from pretrained weights: pass --weights PATH"):
        build_encoder(settings, None, None, recipe)


def test_load_dino_random(vit_file, tmp_path):
    from wsss_keras.pipelines.dino import load_dino

    arch = {**registry.family("dino_vits16").ARCHS["dino_vits16"], **TINY_VIT}
    lines = []
    recipe = {"recipe": {"name": "ssr_test", "method": "ssr"}, "dino": {"arch": arch, "weights": vit_file}}
    loaded = load_dino(recipe, lines.append)
    assert _is_constant_file_model(loaded)
    recipe["dino"]["weights"] = str(tmp_path / "dino_deitsmall16_pretrain.pth")
    untrained = load_dino(recipe, lines.append, weights=RANDOM_WEIGHTS)
    assert lines[-1] == "[train] DINO attention from random (untrained)"
    assert [w.shape for w in untrained.weights] == [w.shape for w in loaded.weights]
    assert not _is_constant_file_model(untrained)
    with pytest.raises(WSSSError, match="no such file"):
        load_dino(recipe, lines.append)
    # A path given with --weights is CLIP's, not DINO's; a recipe without DINO stays without.
    with pytest.raises(WSSSError, match="no such file"):
        load_dino(recipe, lines.append, weights=vit_file)
    assert load_dino({"dino": {}}, lines.append, weights=RANDOM_WEIGHTS) is None


def test_ssr_plugin_hands_random_to_dino(tmp_path):
    from wsss_keras.pipelines.ssr import SSRPlugin

    assert SSRPlugin(RANDOM_WEIGHTS).weights == RANDOM_WEIGHTS and SSRPlugin().weights is None


# --------------------------------------------------------------------------- CLIP (WeCLIP, SSR)


def _clip_recipe(tokenizer):
    return {"recipe": {"name": "weclip_test", "method": "weclip"},
            "clip": {"source": "openai", "arch": TINY_CLIP, "tokenizer": tokenizer}}


def test_load_clip_random_with_the_hashing_tokenizer(clip_file, tmp_path):
    from wsss_keras.backbones.clip import load_pretrained
    from wsss_keras.pipelines.weclip import HashingTokenizer, load_clip

    loaded = load_pretrained(clip_file, TINY_CLIP)
    assert _is_constant_file_model(loaded.image_encoder)
    lines = []
    recipe = _clip_recipe(str(tmp_path / "bpe_simple_vocab_16e6.txt.gz"))  # absent
    encoder, text, background, scale = load_clip(recipe, str(tmp_path), CLASSES[1:], RANDOM_WEIGHTS, lines.append)
    assert "random (untrained)" in lines[-1] and "HashingTokenizer" in lines[-1]
    assert text.shape == (3, 16) and np.allclose(np.linalg.norm(text, axis=-1), 1.0, atol=1e-5)
    assert background is None and np.isclose(scale, 100.0)  # the untrained CLIP's logit scale, capped as loaded ones
    assert [w.shape for w in encoder.weights] == [w.shape for w in loaded.image_encoder.weights]
    assert not _is_constant_file_model(encoder)
    ids = HashingTokenizer()(["a clean origami aeroplane.", "a clean origami bicycle."])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    assert (ids[:, 0] == 49406).all() and (ids.max(axis=1) == 49407).all() and ids.min() >= 0
    assert ids[0, 4] != ids[1, 4]  # the class words differ
    assert (HashingTokenizer()(["a clean origami aeroplane."]) == ids[:1]).all()  # deterministic


def test_load_clip_without_weights_keeps_its_errors(clip_file, tmp_path):
    from wsss_keras.pipelines.weclip import load_clip

    recipe = _clip_recipe(str(tmp_path / "bpe_simple_vocab_16e6.txt.gz"))
    with pytest.raises(WSSSError, match="this recipe runs on OpenAI's CLIP ViT-B/16: pass --weights ViT-B-16.pt"):
        load_clip(recipe, str(tmp_path), CLASSES[1:])
    with pytest.raises(WSSSError, match=r"\[clip\] tokenizer = .*: give the local bpe_simple_vocab_16e6.txt.gz"):
        load_clip(recipe, str(tmp_path), CLASSES[1:], clip_file)


# --------------------------------------------------------------------------- the paper recipes, full size


def test_paper_recipes_build_their_backbones_untrained_at_full_size(tmp_path, monkeypatch):
    from wsss_keras.pipelines.dino import load_dino
    from wsss_keras.pipelines.toco import build_encoder
    from wsss_keras.pipelines.weclip import load_clip
    from wsss_keras.recipes import load_recipe, section

    monkeypatch.chdir(tmp_path)  # none of the recipes' checkpoint or tokenizer files is here
    toco = load_recipe("toco_voc")
    encoder = build_encoder(section(toco, "model"), RANDOM_WEIGHTS, None, toco)
    assert (encoder.hidden_dim, encoder.num_layers, encoder.patch_size) == (768, 12, 16)
    with pytest.raises(WSSSError, match="trains from pretrained weights"):
        build_encoder(section(toco, "model"), None, None, toco)
    lines = []
    image, text, _, _ = load_clip(load_recipe("weclip_voc"), str(tmp_path), CLASSES[1:], RANDOM_WEIGHTS, lines.append)
    assert (image.hidden_dim, image.num_layers, text.shape) == (768, 12, (3, 512))
    assert lines[-1].startswith("[train] CLIP from random (untrained) weights, tokenizer HashingTokenizer")
    dino = load_dino(load_recipe("ssr_voc"), lines.append, weights=RANDOM_WEIGHTS)
    assert (dino.hidden_dim, dino.num_layers, dino.pos_embed_mode) == (384, 12, "bicubic_dino")
