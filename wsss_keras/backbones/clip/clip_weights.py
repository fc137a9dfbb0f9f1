"""Architectures and strict importers for CLIP checkpoints (OpenAI, Hugging Face, keras-hub).

The canonical layout is OpenAI's state dict (`visual.conv1.weight`,
`visual.transformer.resblocks.{i}.attn.in_proj_weight`, `token_embedding.weight`,
`text_projection`, `logit_scale`, ...). Other formats are rewritten into it, checked in full
with `checkpoint.check_shapes`, and only then assigned.

Formats, detected from the file or folder:

- OpenAI `.pt` (TorchScript archives as released, or a plain state dict; the scalar entries
  `input_resolution`, `context_length` and `vocab_size` are dropped), `.safetensors`, `.npz`;
- Hugging Face `CLIPModel` folders (`config.json` + `model.safetensors`) or the weight file;
- keras-hub `CLIPBackbone` preset folders saved with `save_to_preset` (read with keras-hub).
"""

import json
import os

import numpy as np

from wsss_keras.backbones.checkpoint import CheckpointError, check_shapes, read_state_dict, strip_prefix
from wsss_keras.backbones.vit.vit_weights import (
    _float_arrays,
    _is_hf_folder,
    _is_keras_hub_folder,
    assign_block,
    assign_canonical,
    block_shapes,
    hf_weight_file,
    keras_hub_attention_to_torch,
    load_keras_hub_backbone,
)

_TEXT_B = dict(vocabulary_size=49408, context_length=77, hidden_dim=512, num_layers=12, num_heads=8, mlp_dim=2048,
               output_dim=512)
# Constructor kwargs of `CLIP` for each architecture name.
ARCHS = {
    "clip_vit_b16": dict(image=dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                                    output_dim=512, pos_embed_grid=14), text=dict(_TEXT_B)),
    "clip_vit_b32": dict(image=dict(patch_size=32, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                                    output_dim=512, pos_embed_grid=7), text=dict(_TEXT_B)),
    "clip_vit_l14": dict(image=dict(patch_size=14, hidden_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                                    output_dim=768, pos_embed_grid=16),
                         text=dict(_TEXT_B, hidden_dim=768, num_heads=12, mlp_dim=3072, output_dim=768)),
}

_OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")
_BLOCK_TO_OPENAI = {
    "norm1": "ln_1", "norm2": "ln_2", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def resolve_arch(arch, **overrides):
    """`CLIP` kwargs for an arch name in `ARCHS` (or a kwargs dict); `image`/`text` overrides are merged."""
    if isinstance(arch, dict):
        config = {key: dict(value) if isinstance(value, dict) else value for key, value in arch.items()}
    elif arch in ARCHS:
        config = {key: dict(value) for key, value in ARCHS[arch].items()}
    else:
        raise CheckpointError(f"Unknown CLIP architecture {arch!r}; choose one of {', '.join(sorted(ARCHS))}.")
    for key in ("image", "text"):
        config.setdefault(key, {}).update(overrides.pop(key, None) or {})
    if overrides:
        raise TypeError(f"Unknown CLIP load options {sorted(overrides)}; pass image=dict(...) or text=dict(...).")
    return config


# --------------------------------------------------------------------------- canonical (OpenAI) layout


def _openai_block_shapes(prefix, dim, mlp):
    shapes = {}
    for name, shape in block_shapes("", dim, mlp).items():
        module, leaf = name.rsplit(".", 1)
        if module == "attn.qkv":
            shapes[f"{prefix}attn.in_proj_{leaf}"] = shape
        else:
            shapes[f"{prefix}{_BLOCK_TO_OPENAI.get(module, module)}.{leaf}"] = shape
    return shapes


def expected_shapes(config):
    """{OpenAI name: shape} that `CLIP(**config)` needs."""
    from wsss_keras.backbones.clip.clip_model import CLIPImageEncoder, CLIPTextEncoder
    import inspect

    def settings(cls, given):
        values = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                  if p.default is not inspect.Parameter.empty}
        values.update(given)
        return values

    image, text = settings(CLIPImageEncoder, config["image"]), settings(CLIPTextEncoder, config["text"])
    grid = image["pos_embed_grid"]
    grid_h, grid_w = (grid, grid) if isinstance(grid, int) else grid
    dim, patch = image["hidden_dim"], image["patch_size"]
    shapes = {
        "visual.conv1.weight": (dim, 3, patch, patch),
        "visual.class_embedding": (dim,),
        "visual.positional_embedding": (1 + grid_h * grid_w, dim),
        "visual.ln_pre.weight": (dim,), "visual.ln_pre.bias": (dim,),
        "visual.ln_post.weight": (dim,), "visual.ln_post.bias": (dim,),
        "visual.proj": (dim, image["output_dim"]),
    }
    for index in range(image["num_layers"]):
        shapes.update(_openai_block_shapes(f"visual.transformer.resblocks.{index}.", dim, image["mlp_dim"]))
    width = text["hidden_dim"]
    shapes.update({
        "token_embedding.weight": (text["vocabulary_size"], width),
        "positional_embedding": (text["context_length"], width),
        "ln_final.weight": (width,), "ln_final.bias": (width,),
        "text_projection": (width, text["output_dim"]),
        "logit_scale": (),
    })
    for index in range(text["num_layers"]):
        shapes.update(_openai_block_shapes(f"transformer.resblocks.{index}.", width, text["mlp_dim"]))
    return shapes


def _block_from_openai(state, source_prefix, target_prefix):
    """OpenAI block names under `source_prefix` -> canonical ViT block names under `target_prefix`."""
    out = {}
    for name, value in state.items():
        if not name.startswith(source_prefix):
            continue
        rest = name[len(source_prefix):]
        module, leaf = rest.rsplit(".", 1)
        if module == "attn" and leaf.startswith("in_proj_"):
            out[f"{target_prefix}attn.qkv.{leaf[len('in_proj_'):]}"] = value
            continue
        reverse = {v: k for k, v in _BLOCK_TO_OPENAI.items()}
        out[f"{target_prefix}{reverse.get(module, module)}.{leaf}"] = value
    return out


def assign_openai(model, state, source):
    """Check an OpenAI-layout state against `model` (a `CLIP`) in full, then copy it in."""
    if not model.built:
        model.build(None)
    state = _float_arrays(state)
    config = {"image": model.image_config, "text": model.text_config}
    check_shapes(expected_shapes(config), state, source)
    image = model.image_encoder
    visual = {
        "patch_embed.proj.weight": state["visual.conv1.weight"],
        "cls_token": state["visual.class_embedding"].reshape(1, 1, -1),
        "pos_embed": state["visual.positional_embedding"][None],
        "norm_pre.weight": state["visual.ln_pre.weight"], "norm_pre.bias": state["visual.ln_pre.bias"],
        "norm.weight": state["visual.ln_post.weight"], "norm.bias": state["visual.ln_post.bias"],
    }
    for index in range(image.num_layers):
        visual.update(_block_from_openai(state, f"visual.transformer.resblocks.{index}.", f"blocks.{index}."))
    assign_canonical(image.vit, visual, source)
    image.proj.assign(state["visual.proj"])
    text = model.text_encoder
    text.token_embedding.embeddings.assign(state["token_embedding.weight"])
    text.positional_embedding.assign(state["positional_embedding"])
    for index, block in enumerate(text.blocks):
        assign_block(block, _block_from_openai(state, f"transformer.resblocks.{index}.", "b."), "b.")
    text.ln_final.gamma.assign(state["ln_final.weight"])
    text.ln_final.beta.assign(state["ln_final.bias"])
    text.text_projection.assign(state["text_projection"])
    model.logit_scale.assign(state["logit_scale"])
    return model


# --------------------------------------------------------------------------- source formats


def hf_clip_to_openai(state):
    """Hugging Face `CLIPModel` names -> OpenAI names (q/k/v stacked into `in_proj`, projections transposed)."""
    out, qkv = {}, {}
    fixed = {
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "logit_scale": "logit_scale",
    }
    norms = {"vision_model.pre_layrnorm": "visual.ln_pre", "vision_model.post_layernorm": "visual.ln_post",
             "text_model.final_layer_norm": "ln_final"}
    inner = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    towers = {"vision_model.encoder.layers.": "visual.transformer.resblocks.",
              "text_model.encoder.layers.": "transformer.resblocks."}
    for name, value in state.items():
        if name.endswith("position_ids"):
            continue  # an index buffer, not a weight
        if name in fixed:
            out[fixed[name]] = value
            continue
        if name == "visual_projection.weight":
            out["visual.proj"] = value.T
            continue
        if name == "text_projection.weight":
            out["text_projection"] = value.T
            continue
        module, leaf = name.rsplit(".", 1)
        if module in norms:
            out[f"{norms[module]}.{leaf}"] = value
            continue
        for source_prefix, target_prefix in towers.items():
            if name.startswith(source_prefix):
                index, rest = name[len(source_prefix):].split(".", 1)
                module, leaf = rest.rsplit(".", 1)
                if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                    qkv.setdefault((target_prefix + index, leaf), {})[module[-6]] = (name, value)
                    module = None
                elif module in inner:
                    out[f"{target_prefix}{index}.{inner[module]}.{leaf}"] = value
                    module = None
                break
        else:
            out[name] = value
            continue
        if module is not None:
            out[name] = value
    for (prefix, leaf), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{prefix}.attn.in_proj_{leaf}"] = np.concatenate([parts[p][1] for p in "qkv"], axis=0)
        else:
            out.update({name: value for name, value in parts.values()})
    return out


def _keras_hub_tower(weights, prefix, target, num_layers_hint=None):
    """keras-hub CLIP encoder blocks (paths under `prefix`) -> OpenAI names under `target`."""
    out = {}
    index = 0
    while f"{prefix}encoder_block_{index}/layer_norm_1/gamma" in weights:
        source, block = f"{prefix}encoder_block_{index}", f"{target}{index}."
        out[block + "ln_1.weight"], out[block + "ln_1.bias"] = weights[source + "/layer_norm_1/gamma"], weights[
            source + "/layer_norm_1/beta"]
        out[block + "ln_2.weight"], out[block + "ln_2.bias"] = weights[source + "/layer_norm_2/gamma"], weights[
            source + "/layer_norm_2/beta"]
        qkv_w, qkv_b, proj_w, proj_b = keras_hub_attention_to_torch(weights, source + "/attention")
        out.update({block + "attn.in_proj_weight": qkv_w, block + "attn.in_proj_bias": qkv_b,
                    block + "attn.out_proj.weight": proj_w, block + "attn.out_proj.bias": proj_b})
        out[block + "mlp.c_fc.weight"] = weights[source + "/dense_1/kernel"].T
        out[block + "mlp.c_fc.bias"] = weights[source + "/dense_1/bias"]
        out[block + "mlp.c_proj.weight"] = weights[source + "/dense_2/kernel"].T
        out[block + "mlp.c_proj.bias"] = weights[source + "/dense_2/bias"]
        index += 1
    return out


def _prefix_of(weights, suffix, source):
    matches = [path[: -len(suffix)] for path in weights if path.endswith(suffix)]
    if len(matches) != 1:
        raise CheckpointError(f"{source}: keras-hub CLIP preset has no unique '{suffix}' variable ({matches}).")
    return matches[0]


def keras_hub_clip_to_openai(backbone, source):
    """keras-hub `CLIPBackbone` variables -> OpenAI names, plus the text `ln_final` epsilon it uses."""
    import keras

    def arrays(model):
        return {w.path: keras.ops.convert_to_numpy(w.value) for w in model.weights}

    vision, text = arrays(backbone.vision_encoder), arrays(backbone.text_encoder)
    v = _prefix_of(vision, "embedding/class_embedding", source)
    t = _prefix_of(text, "embedding/token_embedding/embeddings", source)
    out = {
        "visual.conv1.weight": vision[v + "embedding/patch_embedding/kernel"].transpose(3, 2, 0, 1),
        "visual.class_embedding": vision[v + "embedding/class_embedding"],
        # keras-hub looks the table up through its stored `position_ids` (arange in converted
        # presets, zeros in a freshly built encoder): apply the same lookup here.
        "visual.positional_embedding": vision[v + "embedding/position_embedding/embeddings"][
            vision[v + "embedding/position_ids"].reshape(-1).astype(np.int64)],
        "visual.ln_pre.weight": vision[v + "pre_layer_norm/gamma"], "visual.ln_pre.bias": vision[v + "pre_layer_norm/beta"],
        "visual.ln_post.weight": vision[v + "layer_norm/gamma"], "visual.ln_post.bias": vision[v + "layer_norm/beta"],
        "visual.proj": keras.ops.convert_to_numpy(backbone.vision_projection.kernel),
        "token_embedding.weight": text[t + "embedding/token_embedding/embeddings"],
        "positional_embedding": text[t + "embedding/position_embedding/embeddings"],
        "ln_final.weight": text[t + "layer_norm/gamma"], "ln_final.bias": text[t + "layer_norm/beta"],
        "text_projection": keras.ops.convert_to_numpy(backbone.text_projection.kernel),
        "logit_scale": keras.ops.convert_to_numpy(backbone.clip_head.logit_scale),
    }
    out.update(_keras_hub_tower(vision, v, "visual.transformer.resblocks."))
    out.update(_keras_hub_tower(text, t, "transformer.resblocks."))
    text_norm = [layer for layer in backbone.text_encoder.layers if layer.name.endswith("layer_norm")]
    epsilon = text_norm[0].epsilon if text_norm else None
    return out, epsilon


def read_openai_layout(source):
    """Read any supported CLIP checkpoint (file or folder) into OpenAI names.

    Returns:
        (state, info): info has "format" and, for keras-hub presets, "final_layer_norm_epsilon".
    """
    info = {}
    if os.path.isdir(source):
        if _is_hf_folder(source):
            with open(os.path.join(source, "config.json"), encoding="utf-8") as file:
                model_type = json.load(file).get("model_type")
            if model_type != "clip":
                raise CheckpointError(f"{source}: Hugging Face model_type is {model_type!r}, expected 'clip'.")
            state = hf_clip_to_openai(read_state_dict(hf_weight_file(source)))
            info["format"] = "huggingface"
        elif _is_keras_hub_folder(source):
            backbone = load_keras_hub_backbone(source)
            if type(backbone).__name__ != "CLIPBackbone":
                raise CheckpointError(f"{source}: keras-hub preset holds a {type(backbone).__name__}, not a CLIPBackbone.")
            state, info["final_layer_norm_epsilon"] = keras_hub_clip_to_openai(backbone, source)
            info["format"] = "keras_hub"
        else:
            raise CheckpointError(
                f"{source}: folder is neither a Hugging Face save_pretrained folder (config.json with model_type) "
                "nor a keras-hub preset (metadata.json + config.json).")
    else:
        state = strip_prefix(read_state_dict(source), ("module.",))
        if any(name.startswith("vision_model.") for name in state):
            state = hf_clip_to_openai(state)
            info["format"] = "huggingface"
        else:
            state = {name: value for name, value in state.items() if name not in _OPENAI_SCALARS}
            info["format"] = "openai"
    return state, info


def load_pretrained(source, arch="clip_vit_b16", **kwargs):
    """Build a `CLIP` for `arch` and load a local checkpoint into it, strictly.

    Args:
        source: OpenAI `.pt` (TorchScript or state dict), a Hugging Face `CLIPModel` folder or
            `model.safetensors`, or a keras-hub `CLIPBackbone` preset folder.
        arch: a name in `ARCHS` (clip_vit_b16, clip_vit_b32, clip_vit_l14) or a dict
            `{"image": {...}, "text": {...}}` of `CLIP` kwargs.
        **kwargs: `image=dict(...)` / `text=dict(...)` overrides merged into the arch (e.g.
            `image=dict(pos_embed_mode="bicubic")`).

    Returns:
        the loaded `CLIP` model (`model.image_encoder`, `model.text_encoder`, `model.logit_scale`).

    Raises:
        CheckpointError: unreadable file, wrong format, or keys/shapes that do not fit the
            architecture (every offending key is listed).

    Example:
    ```python
    clip = load_pretrained("ViT-B-16.pt", "clip_vit_b16")
    ```
    """
    from wsss_keras.backbones.clip.clip_model import CLIP

    config = resolve_arch(arch, **kwargs)
    state, info = read_openai_layout(source)
    epsilon = info.get("final_layer_norm_epsilon")
    if epsilon is not None and "final_layer_norm_epsilon" not in config["text"]:
        config["text"]["final_layer_norm_epsilon"] = epsilon  # keras-hub's ln_final uses 1e-6
    check_shapes(expected_shapes(config), _float_arrays(state), source)  # before building anything
    return assign_openai(CLIP(**config), state, source)
