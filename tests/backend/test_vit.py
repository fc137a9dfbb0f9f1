"""ViT encoder, hooks, positional resizing and importers, against PyTorch references (runs per backend)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import keras
from keras import ops

from wsss_keras.backbones.checkpoint import CheckpointError
from wsss_keras.backbones.pos_embed import _interpolation_matrix_ops, interpolation_matrix, resize_grid_embedding
from wsss_keras.backbones.transformer import AttentionHook, TransformerBlock, gelu_exact
from wsss_keras.backbones.vit import ARCHS, ViTEncoder, load_pretrained

TOL = 1e-4
TINY = dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, pos_embed_grid=4,
            layer_norm_epsilon=1e-6)


def _numpy(x):
    return ops.convert_to_numpy(x)


def _randomise(module, seed=0):
    """Random values everywhere (HF initialises biases to 0 and LN to 1, which would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.1
            parameter.copy_(noise + (1.0 if "layernorm" in name and name.endswith("weight") else 0.0))
    return module.eval()


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu")
    model = _randomise(ViTModel(config))
    folder = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(folder)
    return model, folder


def _images(height, width, batch=2, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, height, width, 3)).astype("float32")


def _hf_tokens(model, images, interpolate=False):
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        return model(pixel_values=pixels, interpolate_pos_encoding=interpolate).last_hidden_state.numpy()


def _timm_state(folder, num_layers=2):
    """The saved HF weights renamed to timm/DINO names (written here independently of the library)."""
    from safetensors.torch import load_file

    hf = load_file(str(folder / "model.safetensors"))
    state = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    for i in range(num_layers):
        layer, block = f"encoder.layer.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            state[block + "attn.qkv." + leaf] = torch.cat(
                [hf[f"{layer}attention.attention.{part}.{leaf}"] for part in ("query", "key", "value")])
            state[block + "norm1." + leaf] = hf[layer + "layernorm_before." + leaf]
            state[block + "norm2." + leaf] = hf[layer + "layernorm_after." + leaf]
            state[block + "attn.proj." + leaf] = hf[layer + "attention.output.dense." + leaf]
            state[block + "mlp.fc1." + leaf] = hf[layer + "intermediate.dense." + leaf]
            state[block + "mlp.fc2." + leaf] = hf[layer + "output.dense." + leaf]
    return state


def test_hf_vit_folder_parity_native_and_interpolated(hf_vit):
    model, folder = hf_vit
    encoder = load_pretrained(str(folder), dict(TINY))
    images = _images(32, 32)
    difference = np.abs(_numpy(encoder(images)["tokens"]) - _hf_tokens(model, images)).max()
    assert difference <= TOL, difference
    # HF (transformers 5.x) interpolates with size-based bicubic, like timm/ToCo: our "bicubic".
    images = _images(40, 72)  # 5 x 9 patch grid from a 4 x 4 table
    outputs = encoder(images)
    reference = _hf_tokens(model, images, interpolate=True)
    difference = np.abs(_numpy(outputs["tokens"]) - reference).max()
    assert difference <= TOL, difference
    assert outputs["patch_tokens"].shape == (2, 45, 32) and encoder.patch_grid(images) == (5, 9)


def test_hf_vit_weight_file_alone(hf_vit):
    model, folder = hf_vit
    encoder = load_pretrained(str(folder / "model.safetensors"), dict(TINY))
    images = _images(32, 32)
    assert np.abs(_numpy(encoder(images)["tokens"]) - _hf_tokens(model, images)).max() <= TOL


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_layout_parity(hf_vit, tmp_path, suffix):
    model, folder = hf_vit
    state = _timm_state(folder)
    state["head.weight"] = torch.zeros(10, 32)  # a classifier head is ignored
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save({"model": state}, path)  # DeiT releases wrap the weights in "model"
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    encoder = load_pretrained(str(path), dict(TINY))
    images = _images(40, 72)
    difference = np.abs(_numpy(encoder(images)["tokens"]) - _hf_tokens(model, images, interpolate=True)).max()
    assert difference <= TOL, difference


def _dino_interpolation(embeddings_module):
    """DINO's interpolate_pos_encoding (scale-factor bicubic), installed on the HF embeddings module."""

    def interpolate(embeddings, height, width):
        table = embeddings_module.position_embeddings
        count = table.shape[1] - 1
        side = int(count ** 0.5)
        if embeddings.shape[1] - 1 == count and height == width:
            return table
        h0, w0 = height // 8 + 0.1, width // 8 + 0.1
        grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(h0 / side, w0 / side), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])
        return torch.cat([table[:, :1], grid], dim=1)

    return interpolate


def test_dino_layout_parity_with_scale_factor_bicubic(hf_vit, tmp_path):
    model, folder = hf_vit
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(_timm_state(folder), path)  # DINO releases a plain state dict with timm names
    encoder = load_pretrained(str(path), dict(TINY, pos_embed_mode="bicubic_dino"))
    images = _images(40, 72)
    original = model.embeddings.interpolate_pos_encoding
    model.embeddings.interpolate_pos_encoding = _dino_interpolation(model.embeddings)
    try:
        reference = _hf_tokens(model, images, interpolate=True)
    finally:
        model.embeddings.interpolate_pos_encoding = original
    difference = np.abs(_numpy(encoder(images)["tokens"]) - reference).max()
    assert difference <= TOL, difference
    # and it is not the size-based result: the mode matters
    assert np.abs(reference - _hf_tokens(model, images, interpolate=True)).max() > 1e-3


def _random_preset(backbone, folder, seed):
    """Give a keras-hub backbone fully random weights (default init would hide mapping mistakes)
    and save it as a local preset; returns the preset folder."""
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.1 + (1.0 if "gamma" in weight.path else 0))
    backbone.save_to_preset(str(folder / "preset"))
    return str(folder / "preset")


def test_keras_hub_vit_preset_parity(tmp_path):
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=4,
                                            hidden_dim=32, mlp_dim=64)
    encoder = load_pretrained(_random_preset(backbone, tmp_path, seed=3), dict(TINY))
    images = _images(32, 32)
    reference = _numpy(backbone(images))
    difference = np.abs(_numpy(encoder(images)["tokens"]) - reference).max()
    assert difference <= TOL, difference


def test_keras_hub_distilled_deit_preset_parity(tmp_path):
    import keras_hub

    backbone = keras_hub.models.DeiTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=4,
                                             hidden_dim=32, intermediate_dim=64)
    encoder = load_pretrained(_random_preset(backbone, tmp_path, seed=4), dict(TINY, num_class_tokens=2))
    images = _images(32, 32)
    outputs = encoder(images)
    reference = _numpy(backbone(images))  # [class token, distillation token, patches]
    difference = np.abs(_numpy(outputs["tokens"]) - reference).max()
    assert difference <= TOL, difference
    assert outputs["class_tokens"].shape[1] == 2
    # A distilled arch refuses a checkpoint without a distillation token, naming the plain arch.
    plain = tmp_path / "plain.pth"
    state = {key: torch.from_numpy(value) for key, value in _zero_state(encoder).items()}
    state["cls_token"] = state["cls_token"][:, :1]
    state["pos_embed"] = state["pos_embed"][:, 1:]
    torch.save(state, plain)
    with pytest.raises(CheckpointError, match="needs a distilled DeiT checkpoint.*Use deit_s16 for it"):
        load_pretrained(str(plain), "deit_s16_distilled")


def _zero_state(encoder):
    """A timm-layout state of zeros with exactly the shapes `encoder` needs."""
    from wsss_keras.backbones.vit.vit_weights import expected_shapes

    return {name: np.zeros(shape, "float32") for name, shape in expected_shapes(encoder).items()}


def test_mismatched_checkpoints_name_keys_and_shapes(hf_vit, tmp_path):
    model, folder = hf_vit
    with pytest.raises(CheckpointError, match=r"missing keys \(12\): blocks\.2\."):
        load_pretrained(str(folder), dict(TINY, num_layers=3))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(12\): blocks\.1\."):
        load_pretrained(str(folder), dict(TINY, num_layers=1))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.norm1\.weight is \(32,\), model needs \(48,\)"):
        load_pretrained(str(folder), dict(TINY, hidden_dim=48))
    state = _timm_state(folder)
    del state["blocks.0.attn.proj.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.0\.attn\.proj\.bias"):
        load_pretrained(str(path), dict(TINY))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight is \(96, 32\), model needs \(2304, 768\)"):
        load_pretrained(str(folder), "vit_b16")  # a real arch name against a tiny file
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(str(tmp_path / "absent.pth"), "vit_b16")
    with pytest.raises(CheckpointError, match="Unknown ViT architecture"):
        load_pretrained(str(path), "vit_huge")
    assert {"vit_b16", "vit_s16", "deit_s16", "deit_b16", "deit_s16_distilled", "dino_vits16", "dino_vitb16"} <= set(ARCHS)


def test_class_token_replication_and_split_qkv(hf_vit, tmp_path):
    model, folder = hf_vit
    fused = load_pretrained(str(folder), dict(TINY))
    split = load_pretrained(str(folder), dict(TINY, fused_qkv=False))
    images = _images(24, 40)
    assert np.abs(_numpy(fused(images)["tokens"]) - _numpy(split(images)["tokens"])).max() <= 1e-5
    multi = load_pretrained(str(folder), dict(TINY), num_class_tokens=3)
    tokens = _numpy(multi.class_token)
    assert tokens.shape == (1, 3, 32)
    np.testing.assert_allclose(tokens[0, 2], model.embeddings.cls_token.detach().numpy()[0, 0], atol=1e-7)
    assert multi(images)["class_tokens"].shape == (2, 3, 32)


class _Recorder(AttentionHook):
    def __init__(self, zero_block=None):
        self.probs, self.zero_block = {}, zero_block

    def attention_probs(self, probs, block_index, tokens):
        self.probs[block_index] = probs
        return probs

    def attention_output(self, output, block_index, tokens):
        return output * 0.0 if block_index == self.zero_block else output


def test_hooks_outputs_and_piecewise_blocks():
    encoder = ViTEncoder(**TINY)
    images = _images(24, 40)
    recorder = _Recorder()
    outputs = encoder(images, hook=recorder, return_all_tokens=True, return_attention=True)
    assert sorted(recorder.probs) == [0, 1] and len(outputs["attention"]) == 2
    probs = _numpy(outputs["attention"][1])
    assert probs.shape == (2, 4, 16, 16)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(_numpy(recorder.probs[1]), probs)
    # piecewise: norm1 -> attend -> residual -> norm2 -> mlp reproduces block 1
    block, x = encoder.blocks[1], outputs["all_tokens"][0]
    branch, _ = block.attend(block.norm1(x))
    x = x + branch
    x = x + block.mlp(block.norm2(x))
    np.testing.assert_allclose(_numpy(x), _numpy(outputs["all_tokens"][1]), atol=1e-5)
    np.testing.assert_allclose(_numpy(encoder.norm(x)), _numpy(outputs["tokens"]), atol=1e-5)
    # X0 and partial runs
    partial = encoder(images, num_blocks=1)
    np.testing.assert_allclose(_numpy(partial["tokens"]), _numpy(outputs["all_tokens"][0]), atol=1e-6)
    np.testing.assert_allclose(_numpy(partial["embeddings"]), _numpy(outputs["embeddings"]), atol=1e-6)
    # a hook that writes the attention output changes the result
    changed = encoder(images, hook=_Recorder(zero_block=0))["tokens"]
    assert np.abs(_numpy(changed) - _numpy(outputs["tokens"])).max() > 1e-3


def test_probability_replacing_hook_is_used():
    block = TransformerBlock(hidden_dim=32, num_heads=4, mlp_dim=64)
    tokens = keras.random.normal((1, 5, 32), seed=0)

    class Uniform(AttentionHook):
        def attention_probs(self, probs, block_index, tokens):
            return ops.ones_like(probs) / 5.0

    output, probs = block(tokens, hook=Uniform())
    np.testing.assert_allclose(_numpy(probs), 0.2, atol=1e-7)
    normed = block.norm1(tokens)
    value = block.attn.qkv(normed)[..., 64:]
    expected = block.attn.proj(ops.repeat(ops.mean(value, axis=1, keepdims=True), 5, axis=1))
    residual = tokens + expected
    np.testing.assert_allclose(_numpy(output), _numpy(residual + block.mlp(block.norm2(residual))), atol=1e-5)


def test_keras_file_round_trip(tmp_path):
    encoder = ViTEncoder(**dict(TINY, num_class_tokens=3, pos_embed_mode="bilinear", pos_embed_trainable=False))
    images = _images(24, 40)
    before = _numpy(encoder(images)["tokens"])
    encoder.save(tmp_path / "vit.keras")
    restored = keras.saving.load_model(tmp_path / "vit.keras")
    np.testing.assert_allclose(_numpy(restored(images)["tokens"]), before, atol=1e-6)
    assert restored.pos_embed_mode == "bilinear" and not restored.pos_embed.trainable
    assert len(encoder.trainable_weights) == len(restored.trainable_weights)


@pytest.mark.parametrize("mode", ["bicubic", "bicubic_dino", "bilinear"])
def test_backend_resize_matches_torch(mode):
    table = np.random.default_rng(5).normal(size=(16, 6)).astype("float32")
    ours = _numpy(resize_grid_embedding(ops.convert_to_tensor(table), (4, 4), (10, 17), mode)).reshape(10, 17, 6)
    grid = torch.from_numpy(table).reshape(1, 4, 4, 6).permute(0, 3, 1, 2)
    if mode == "bicubic":
        reference = F.interpolate(grid, size=(10, 17), mode="bicubic", align_corners=False)
    elif mode == "bicubic_dino":
        reference = F.interpolate(grid, scale_factor=(10.1 / 4, 17.1 / 4), mode="bicubic")
    else:
        reference = F.interpolate(grid, size=(10, 17), mode="bilinear", align_corners=False)
    assert np.abs(ours - reference[0].permute(1, 2, 0).numpy()).max() <= TOL
    dynamic = _numpy(_interpolation_matrix_ops(4, ops.convert_to_tensor(17), mode, "float32"))
    np.testing.assert_allclose(dynamic, interpolation_matrix(4, 17, mode), atol=1e-6)
    identity = resize_grid_embedding(ops.convert_to_tensor(table), (4, 4), (4, 4), mode)
    np.testing.assert_array_equal(_numpy(identity), table)


def test_gelu_is_exact_erf_gelu():
    x = np.linspace(-5, 5, 101).astype("float32")
    expected = F.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_numpy(gelu_exact(ops.convert_to_tensor(x))), expected, atol=1e-6)


def test_functional_model_with_unknown_image_size():
    """Inside a functional model with (None, None, 3) inputs, compiled prediction at several sizes
    (TensorFlow relaxes the traced shapes to unknown ones: the grid is then only known at run time)."""
    encoder = ViTEncoder(**dict(TINY, pos_embed_mode="bicubic"))
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, encoder(inputs)["patch_tokens"])
    for height, width in ((32, 32), (40, 72), (24, 48)):
        images = _images(height, width, batch=1)
        predicted = model.predict(images, verbose=0)
        assert predicted.shape == (1, (height // 8) * (width // 8), 32)
        np.testing.assert_allclose(predicted, _numpy(encoder(images)["patch_tokens"]), atol=1e-5)
