"""The importers on full-size files in the released formats (bench/fake_checkpoints.py): real
names, shapes, dtypes and containers, random values (issue #24 item 3).

Every fake is written once (about 1.5 GB, in a folder removed afterwards); `wsss weights
inspect`'s look (read_tensor_shapes + guess_arch) must name each one's arch, and the strict
loaders must take them whole. Expected values come from the generator
(`fake_checkpoints.fake_value`), never back through an importer.
"""

import gzip
import math
import os
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import fake_checkpoints as fc  # noqa: E402
from wsss_keras.backbones import registry  # noqa: E402

SEED = 3


def _np(variable):
    import keras

    return keras.ops.convert_to_numpy(variable)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="wsss_fake_checkpoints_") as path:
        yield path


@pytest.fixture
def write(folder):
    """write(name) -> path; each file is removed when its test ends (1.5 GB in all, so they are
    never all on disk at once, and short-lived files cost little write-back)."""
    paths = []

    def write(name):
        # CLIP as OpenAI ships it: half precision where clip.model.convert_weights puts it (the
        # released ViT-B-16.pt is 351 MB, which only that mix of float16 and float32 gives).
        paths.append(fc.write(name, folder, seed=SEED, clip_fp16=True))
        return paths[-1]

    yield write
    for path in paths:
        os.remove(path)


def expected(name, key):
    """A tensor's value as the generator drew it, with the dtype the file stores."""
    shape, kind = next((shape, kind) for k, shape, kind in fc.layout(name) if k == key)
    value = fc.fake_value(key, shape, kind, SEED)
    if name == "clip_vit_b16" and fc._openai_half(key):
        value = value.astype(np.float16)
    return value


def inspect(path, name):
    """What `wsss weights inspect` sees must be the layout, and name the file's arch."""
    fmt, tensors = registry.read_tensor_shapes(path)
    assert fmt == ("safetensors" if name == "vit_b16" else "torch")
    # Exactly the layout's names and shapes (the 0-d logit_scale stays 0-d).
    assert {key: shape for key, (shape, _) in tensors.items()} == {key: shape for key, shape, _ in fc.layout(name)}
    candidates, description = registry.guess_arch(tensors, path)
    if fc.ARCHS[name] is None:  # VGG-19 is no registry arch (the SSC loss network loads it)
        assert candidates == [], description
    elif name.startswith("resnet") or name.startswith("clip"):
        assert candidates == [fc.ARCHS[name]], description
    else:  # ViTs of one shape differ only in training: all are listed
        assert fc.ARCHS[name] in candidates and len(candidates) == 3, description
    return {key: dtype for key, (_, dtype) in tensors.items()}


def container(path):
    with open(path, "rb") as file:
        return "zip" if file.read(2) == b"PK" else "legacy"


@pytest.mark.parametrize("name", ["vit_b16", "resnet101"])
def test_inspect_only(write, name):
    path = write(name)
    assert set(inspect(path, name).values()) == {"float32"}
    if name == "vit_b16":
        from safetensors import safe_open

        with safe_open(path, "np") as file:
            assert file.metadata() == {"format": "pt"}
            np.testing.assert_array_equal(file.get_tensor("head.weight"), expected(name, "head.weight"))
    else:
        assert container(path) == "legacy"


def test_resnet50_loads_strictly(write):
    from wsss_keras.backbones.checkpoint import CheckpointError

    path = write("resnet50")
    assert set(inspect(path, "resnet50").values()) == {"float32"}
    # torchvision's 2017 file: legacy pickle container, no num_batches_tracked (PyTorch < 0.4.1)
    assert container(path) == "legacy"
    model = registry.load_pretrained(path, "resnet50")
    np.testing.assert_array_equal(_np(model.stem_conv.kernel), expected("resnet50", "conv1.weight").transpose(2, 3, 1, 0))
    last = model.stages[3][2]
    np.testing.assert_array_equal(_np(last.bn3.moving_variance), expected("resnet50", "layer4.2.bn3.running_var"))
    assert _np(last.bn3.moving_variance).min() > 0
    np.testing.assert_array_equal(_np(model.stages[0][0].downsample_conv.kernel),
                                  expected("resnet50", "layer1.0.downsample.0.weight").transpose(2, 3, 1, 0))
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): layer3\.10\."):
        registry.load_pretrained(path, "resnet101")
    # A full-size forward keeps its scale (features of mean |x| 478 made AMR's training diverge):
    # on a standard-normal image a trained ResNet-50's last features average about 0.5.
    image = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype("float32")
    features = _np(model(image, training=False))
    assert np.isfinite(features).all() and np.abs(features).mean() < 5.0


def test_dino_vits16_loads_strictly(write):
    path = write("dino_vits16")
    assert set(inspect(path, "dino_vits16").values()) == {"float32"}
    assert container(path) == "zip"
    encoder = registry.load_pretrained(path, "dino_vits16")
    np.testing.assert_array_equal(_np(encoder.pos_embed), expected("dino_vits16", "pos_embed"))
    np.testing.assert_array_equal(_np(encoder.class_token), expected("dino_vits16", "cls_token"))
    block = encoder.blocks[11]
    weight = expected("dino_vits16", "blocks.11.attn.qkv.weight")
    if block.attn.fused_qkv:
        np.testing.assert_array_equal(_np(block.attn.qkv.kernel), weight.T)
    else:
        np.testing.assert_array_equal(_np(block.attn.query.kernel), weight[:384].T)
    np.testing.assert_array_equal(_np(encoder.norm.gamma), expected("dino_vits16", "norm.weight"))


def test_openai_clip_torchscript_loads_strictly(write):
    import torch

    path = write("clip_vit_b16")
    inspect(path, "clip_vit_b16")
    archive = torch.jit.load(path)
    assert isinstance(archive, torch.jit.ScriptModule)  # a TorchScript archive, as OpenAI's
    dtypes = {key: str(value.dtype) for key, value in archive.state_dict().items()}
    assert dtypes["visual.conv1.weight"] == dtypes["transformer.resblocks.0.attn.in_proj_weight"] == "torch.float16"
    assert dtypes["token_embedding.weight"] == dtypes["ln_final.weight"] == "torch.float32"
    assert dtypes["vocab_size"] == "torch.int64" and int(archive.state_dict()["vocab_size"]) == 49408
    del archive
    clip = registry.load_pretrained(path, "clip_vit_b16")
    assert math.isclose(float(_np(clip.logit_scale)), math.log(100.0), rel_tol=1e-6)
    np.testing.assert_array_equal(_np(clip.text_encoder.token_embedding.embeddings),
                                  expected("clip_vit_b16", "token_embedding.weight"))
    np.testing.assert_array_equal(_np(clip.image_encoder.proj),
                                  expected("clip_vit_b16", "visual.proj").astype(np.float32))
    np.testing.assert_array_equal(_np(clip.image_encoder.vit.pos_embed)[0],
                                  expected("clip_vit_b16", "visual.positional_embedding"))


def test_openai_bpe_file_format_and_tokenizer(write):
    path = write("clip_bpe")
    with gzip.open(path, "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")
    assert lines[0] == '"bpe_simple_vocab_16e6.txt#version: 0.2' and lines[-1] == ""
    merges = lines[1:-1]
    assert len(merges) == 262144
    # Each merge OpenAI's tokenizer reads joins two tokens that exist already, into a new one.
    symbols = list(fc.bytes_to_unicode().values())
    vocabulary = set(symbols) | {symbol + "</w>" for symbol in symbols}
    for merge in merges[: fc.OPENAI_MERGES_USED]:
        left, right = merge.split(" ")
        assert left in vocabulary and right in vocabulary and not left.endswith("</w>"), merge
        assert left + right not in vocabulary, merge
        vocabulary.add(left + right)
    assert len(vocabulary) + 2 == 49408

    from wsss_keras.backbones.clip import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_bpe_file(path)
    assert len(tokenizer.vocabulary) == 49408
    ids = tokenizer(["a clean origami aeroplane.", "Zebra xylophone 42!"])
    assert ids.shape == (2, 77) and ids.max() < 49408
    # "a", "clean", "origami", "aeroplane" and "." are one token each: the merges are applied.
    assert list(ids[0, :7]) == [49406, 320, tokenizer.vocabulary["clean</w>"], tokenizer.vocabulary["origami</w>"],
                                tokenizer.vocabulary["aeroplane</w>"], 269, 49407]
    row = ids[1][ids[1] > 0]
    assert row[0] == 49406 and row[-1] == 49407 and 4 < len(row) < 20


def test_vgg19_loads_into_the_perceptual_network(write):
    from wsss_keras.backbones import vgg

    path = write("vgg19")
    assert set(inspect(path, "vgg19").values()) == {"float32"}
    assert container(path) == "legacy"
    network = vgg.vgg19_features()
    vgg.load_torchvision_vgg19(network, path)
    conv = network.get_layer("block5_conv1")
    np.testing.assert_array_equal(_np(conv.kernel), expected("vgg19", "features.28.weight").transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(_np(conv.bias), expected("vgg19", "features.28.bias"))
