"""CLIP towers and importers against Hugging Face and keras-hub references (runs per backend)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import keras
from keras import ops

from torchscript_archive import save_torchscript
from wsss_keras.backbones.checkpoint import CheckpointError
from wsss_keras.backbones.clip import ARCHS, CLIP, CLIPTokenizer, embed_class_prompts, load_pretrained
from wsss_keras.backbones.clip import clip_prompts
from wsss_keras.backbones.clip.clip_tokenizer import bytes_to_unicode

TOL = 1e-4
VOCAB = 515  # 512 byte symbols, one merge ("ca"), <|startoftext|> (513), <|endoftext|> (514): the real layout
SOT, EOT = VOCAB - 2, VOCAB - 1
CONTEXT = 16
ARCH = {"image": dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, output_dim=16,
                      pos_embed_grid=4),
        "text": dict(vocabulary_size=VOCAB, context_length=CONTEXT, hidden_dim=32, num_layers=2, num_heads=4,
                     mlp_dim=64, output_dim=16)}


def _numpy(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=CONTEXT, bos_token_id=SOT,
                         eos_token_id=EOT, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == "logit_scale":
                continue
            base = 1.0 if ("norm" in name or "layrnorm" in name) and name.endswith("weight") else 0.0
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1 + base)
    folder = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(folder)
    return model, folder


def _images(height=32, width=32, batch=2, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, height, width, 3)).astype("float32")


def _token_ids(batch=3, seed=2):
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, CONTEXT), dtype="int64")
    for row in range(batch):
        length = rng.integers(2, CONTEXT - 2)
        ids[row, 0] = SOT
        ids[row, 1: length + 1] = rng.integers(1, 500, size=length)
        ids[row, length + 1] = EOT
    return ids


def _hf_features(model, images, token_ids, interpolate=False):
    with torch.no_grad():
        vision = model.vision_model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                                    interpolate_pos_encoding=interpolate)
        text = model.text_model(input_ids=torch.from_numpy(token_ids))
        image_embedding = model.visual_projection(vision.pooler_output).numpy()
        all_tokens = model.visual_projection(model.vision_model.post_layernorm(vision.last_hidden_state)).numpy()
        text_embedding = model.text_projection(text.pooler_output).numpy()
    return image_embedding, all_tokens, text_embedding


def _check_against_hf(clip, model, images=None, token_ids=None, interpolate=False):
    images = _images() if images is None else images
    token_ids = _token_ids() if token_ids is None else token_ids
    image_ref, tokens_ref, text_ref = _hf_features(model, images, token_ids, interpolate)
    outputs = clip.encode_image(images)
    differences = (np.abs(_numpy(outputs["image_embedding"]) - image_ref).max(),
                   np.abs(_numpy(outputs["projected_tokens"]) - tokens_ref).max(),
                   np.abs(_numpy(clip.encode_text(token_ids.astype("int32"))) - text_ref).max())
    assert max(differences) <= TOL, differences
    return differences


def _openai_state(folder):
    """The saved HF weights renamed to OpenAI CLIP keys (written here independently of the library)."""
    from safetensors.torch import load_file

    hf = load_file(str(folder / "model.safetensors"))
    state = {
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "logit_scale": hf["logit_scale"],
        "input_resolution": torch.tensor(32), "context_length": torch.tensor(CONTEXT),
        "vocab_size": torch.tensor(VOCAB),
    }
    for leaf in ("weight", "bias"):
        state[f"visual.ln_pre.{leaf}"] = hf[f"vision_model.pre_layrnorm.{leaf}"]
        state[f"visual.ln_post.{leaf}"] = hf[f"vision_model.post_layernorm.{leaf}"]
        state[f"ln_final.{leaf}"] = hf[f"text_model.final_layer_norm.{leaf}"]
        for source, target in (("vision_model.encoder.layers.", "visual.transformer.resblocks."),
                               ("text_model.encoder.layers.", "transformer.resblocks.")):
            for i in range(2):
                s, t = f"{source}{i}.", f"{target}{i}."
                state[f"{t}attn.in_proj_{leaf}"] = torch.cat([hf[f"{s}self_attn.{p}_proj.{leaf}"] for p in "qkv"])
                state[f"{t}attn.out_proj.{leaf}"] = hf[f"{s}self_attn.out_proj.{leaf}"]
                state[f"{t}ln_1.{leaf}"] = hf[f"{s}layer_norm1.{leaf}"]
                state[f"{t}ln_2.{leaf}"] = hf[f"{s}layer_norm2.{leaf}"]
                state[f"{t}mlp.c_fc.{leaf}"] = hf[f"{s}mlp.fc1.{leaf}"]
                state[f"{t}mlp.c_proj.{leaf}"] = hf[f"{s}mlp.fc2.{leaf}"]
    return state


def test_hf_clip_folder_parity(hf_clip):
    model, folder = hf_clip
    clip = load_pretrained(str(folder), ARCH)
    _check_against_hf(clip, model)
    logits = _numpy(clip({"images": _images(), "token_ids": _token_ids().astype("int32")})["logits_per_image"])
    with torch.no_grad():
        reference = model(input_ids=torch.from_numpy(_token_ids()),
                          pixel_values=torch.from_numpy(_images()).permute(0, 3, 1, 2)).logits_per_image.numpy()
    assert np.abs(logits - reference).max() <= 1e-3 * max(1.0, np.abs(reference).max())


def test_bilinear_position_resize_matches_weclip(hf_clip):
    """WeCLIP resizes CLIP's table bilinearly (half-pixel); HF's own interpolation is bicubic, so patch it."""
    model, folder = hf_clip
    clip = load_pretrained(str(folder / "model.safetensors"), ARCH)
    embeddings = model.vision_model.embeddings

    def bilinear(tokens, height, width):
        table = embeddings.position_embedding.weight[None]
        grid = table[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height // 8, width // 8), mode="bilinear", align_corners=False)
        return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)

    original = embeddings.interpolate_pos_encoding
    embeddings.interpolate_pos_encoding = bilinear
    try:
        _check_against_hf(clip, model, images=_images(40, 72), interpolate=True)
    finally:
        embeddings.interpolate_pos_encoding = original


@pytest.mark.parametrize("archive", ["state_dict", "torchscript"])
def test_openai_state_dict_parity(hf_clip, tmp_path, archive):
    model, folder = hf_clip
    path = tmp_path / "ViT-B-16.pt"
    if archive == "torchscript":
        save_torchscript(_openai_state(folder), path)
    else:
        torch.save(_openai_state(folder), path)
    clip = load_pretrained(str(path), ARCH)
    _check_against_hf(clip, model)
    assert abs(float(_numpy(clip.logit_scale)) - float(model.logit_scale.detach())) < 1e-6


def test_keras_hub_clip_preset_parity(tmp_path):
    import keras_hub

    vision = keras_hub.models.CLIPVisionEncoder(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4,
                                                intermediate_dim=64, image_shape=(32, 32, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=VOCAB, embedding_dim=32, hidden_dim=32, num_layers=2,
                                            num_heads=4, intermediate_dim=64, max_sequence_length=CONTEXT)
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=16)
    rng = np.random.default_rng(4)
    for weight in backbone.weights:
        if "position_ids" in weight.path:  # keras-hub builds these as zeros; converted presets hold arange
            weight.assign(np.arange(weight.shape[-1]).reshape(weight.shape))
            continue
        if "logit_scale" in weight.path:
            continue
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.1 + (1.0 if "gamma" in weight.path else 0))
    backbone.save_to_preset(str(tmp_path / "preset"))
    clip = load_pretrained(str(tmp_path / "preset"), ARCH)
    images, token_ids = _images(), _token_ids().astype("int32")
    image_difference = np.abs(_numpy(clip.encode_image(images)["image_embedding"])
                              - _numpy(backbone.get_vision_embeddings(images))).max()
    text_difference = np.abs(_numpy(clip.encode_text(token_ids)) - _numpy(backbone.get_text_embeddings(token_ids))).max()
    assert max(image_difference, text_difference) <= TOL, (image_difference, text_difference)


def test_partial_runs_head_averaged_attention_and_last_block(hf_clip):
    _, folder = hf_clip
    clip = load_pretrained(str(folder), ARCH)
    tower = clip.image_encoder
    images = _images(40, 48)
    full = tower(images, return_all_tokens=True, return_attention=True)
    frozen = tower(images, num_blocks=1, return_all_tokens=True, return_attention=True)
    assert "image_embedding" not in frozen and len(frozen["attention"]) == 1
    assert frozen["attention"][0].shape == (2, 31, 31)  # heads averaged, 1 + 5*6 tokens
    np.testing.assert_allclose(_numpy(frozen["attention"][0]).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(_numpy(frozen["tokens"]), _numpy(full["all_tokens"][0]), atol=1e-5)
    per_head = tower(images, num_blocks=1, return_attention=True, average_attention_heads=False)["attention"][0]
    np.testing.assert_allclose(_numpy(ops.mean(per_head, axis=1)), _numpy(frozen["attention"][0]), atol=1e-6)
    # the last block and the head run on their own (WeCLIP's forward_last_layer)
    last, _ = tower.blocks[-1](frozen["tokens"])
    np.testing.assert_allclose(_numpy(tower.project(last)), _numpy(full["projected_tokens"]), atol=1e-5)


def _tiny_tokenizer(tmp_path):
    symbols = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in
             enumerate(symbols + [s + "</w>" for s in symbols] + ["ca", "<|startoftext|>", "<|endoftext|>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nc a\n", encoding="utf-8")
    return CLIPTokenizer.from_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), context_length=CONTEXT)


def test_class_prompt_embeddings_are_cached(hf_clip, tmp_path):
    _, folder = hf_clip
    clip = load_pretrained(str(folder), ARCH)
    tokenizer = _tiny_tokenizer(tmp_path)
    names, templates = ["cat", "tv screen"], ["a {}.", "an {}!"]
    embeddings = embed_class_prompts(clip, tokenizer, names, templates, cache_dir=str(tmp_path / "cache"))
    ids = tokenizer([t.format(n) for n in names for t in templates])
    assert ids.max() == EOT and 512 in ids  # the merge is used; EOT is the largest id, where the text tower pools
    features = _numpy(clip.encode_text(ids)).reshape(2, 2, -1)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    expected = features.mean(1)
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    files = list((tmp_path / "cache").glob("clip_prompts_*.npy"))
    assert len(files) == 1

    class Refusing:
        def __call__(self, texts):
            raise AssertionError("the cache should have answered")

    again = embed_class_prompts(clip, Refusing(), names, templates, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(again, embeddings)  # memory cache
    clip_prompts._MEMORY_CACHE.clear()
    from_file = embed_class_prompts(clip, Refusing(), names, templates, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(from_file, embeddings)  # file cache
    with pytest.raises(ValueError, match="exactly one"):
        embed_class_prompts(clip, tokenizer, names, ["no slot"])


def test_mismatched_clip_checkpoints(hf_clip, tmp_path):
    _, folder = hf_clip
    wrong_depth = {"image": dict(ARCH["image"], num_layers=3), "text": ARCH["text"]}
    with pytest.raises(CheckpointError, match=r"missing keys \(12\): visual\.transformer\.resblocks\.2\."):
        load_pretrained(str(folder), wrong_depth)
    with pytest.raises(CheckpointError, match=r"text_projection is \(32, 16\), model needs \(32, 24\)"):
        load_pretrained(str(folder), {"image": dict(ARCH["image"], output_dim=24),
                                      "text": dict(ARCH["text"], output_dim=24)})
    state = _openai_state(folder)
    del state["visual.ln_post.bias"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): visual\.ln_post\.bias"):
        load_pretrained(str(path), ARCH)
    with pytest.raises(CheckpointError, match=rf"token_embedding\.weight is \({VOCAB}, 32\), model needs \(49408, 512\)"):
        load_pretrained(str(folder), "clip_vit_b16")
    assert "clip_vit_b16" in ARCHS


def test_clip_keras_round_trip(tmp_path):
    clip = CLIP(**ARCH)
    inputs = {"images": _images(), "token_ids": _token_ids().astype("int32")}
    before = _numpy(clip(inputs)["logits_per_image"])
    clip.save(tmp_path / "clip.keras")
    restored = keras.saving.load_model(tmp_path / "clip.keras")
    np.testing.assert_allclose(_numpy(restored(inputs)["logits_per_image"]), before, atol=1e-5)
