"""Architectures and strict importers for ViT-family checkpoints (timm, DeiT, DINO, Hugging Face, keras-hub).

Every source format is first rewritten into one canonical layout, the timm/DINO PyTorch
names and shapes (`patch_embed.proj.weight`, `cls_token`, `pos_embed`,
`blocks.{i}.attn.qkv.weight`, ...), then checked in full against the model with
`checkpoint.check_shapes` (missing, unexpected and mis-shaped keys are all listed) and only
then assigned. A checkpoint that does not fit raises `CheckpointError`; nothing is ever
partially loaded.

Formats, detected from the file or folder:

- timm / DeiT `.safetensors`, `.pth` (DeiT's `{"model": ...}` wrapper is unwrapped);
- DINO `.pth` (plain state dict; `teacher`/`module.`/`backbone.` wrappers are unwrapped);
- Hugging Face `ViTModel` / `ViTForImageClassification` folders saved with
  `save_pretrained` (`config.json` + `model.safetensors` or `pytorch_model.bin`), or the
  weight file alone;
- keras-hub `ViTBackbone` preset folders saved with `save_to_preset` (read with keras-hub).
"""

import json
import os

import numpy as np

from wsss_keras.backbones.checkpoint import CheckpointError, check_shapes, read_state_dict, strip_prefix

# Constructor kwargs of `ViTEncoder` for each architecture name. The positional table is
# frozen for vit_b16 (ToCo freezes it) and learnable for the DeiT ones (MCTformer trains
# it); hosts may override either way.
ARCHS = {
    "vit_b16": dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                    pos_embed_grid=14, pos_embed_mode="bicubic", pos_embed_trainable=False),
    "vit_s16": dict(patch_size=16, hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536,
                    pos_embed_grid=14, pos_embed_mode="bicubic"),
    "deit_s16": dict(patch_size=16, hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536,
                     pos_embed_grid=14, pos_embed_mode="bicubic"),
    "deit_b16": dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                     pos_embed_grid=14, pos_embed_mode="bicubic"),
    # Distilled DeiT (timm's deit_*_distilled_*, keras-hub's DeiTBackbone): the class and the
    # distillation token are the two class tokens, in that order.
    "deit_s16_distilled": dict(patch_size=16, hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536,
                               pos_embed_grid=14, pos_embed_mode="bicubic", num_class_tokens=2),
    "deit_b16_distilled": dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                               pos_embed_grid=14, pos_embed_mode="bicubic", num_class_tokens=2),
    "dino_vits16": dict(patch_size=16, hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536,
                        pos_embed_grid=14, pos_embed_mode="bicubic_dino", pos_embed_trainable=False),
    "dino_vitb16": dict(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072,
                        pos_embed_grid=14, pos_embed_mode="bicubic_dino", pos_embed_trainable=False),
}
for _config in ARCHS.values():
    _config.setdefault("num_class_tokens", 1)
    _config.update(layer_norm_epsilon=1e-6, activation="gelu")

# Keys a classification checkpoint carries that an encoder does not use.
_IGNORED_PREFIXES = ("head.", "head_dist.", "fc_norm.", "pre_logits.", "pooler.", "classifier.",
                     "embeddings.mask_token", "mask_token")


def resolve_arch(arch, **overrides):
    """Constructor kwargs for an arch name in `ARCHS` (or a kwargs dict), with overrides applied."""
    if isinstance(arch, dict):
        config = dict(arch)
    elif arch in ARCHS:
        config = dict(ARCHS[arch])
    else:
        raise CheckpointError(f"Unknown ViT architecture {arch!r}; choose one of {', '.join(sorted(ARCHS))}.")
    config.update({key: value for key, value in overrides.items() if value is not None})
    return config


# --------------------------------------------------------------------------- canonical layout


def encoder_settings(config):
    """A `ViTEncoder` config dict with every default filled in, as an attribute namespace."""
    import inspect
    import types

    from wsss_keras.backbones.vit.vit_encoder import ViTEncoder, _pair

    settings = {name: parameter.default for name, parameter in inspect.signature(ViTEncoder.__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    settings.update(config)
    grid = _pair(settings["pos_embed_grid"])
    settings["num_pos_patches"] = grid[0] * grid[1]
    return types.SimpleNamespace(**settings)


def expected_shapes(encoder):
    """{canonical name: shape} that a `ViTEncoder` (or `encoder_settings(config)`) needs, timm layout."""
    dim, mlp, channels, patch = encoder.hidden_dim, encoder.mlp_dim, encoder.image_channels, encoder.patch_size
    shapes = {
        "patch_embed.proj.weight": (dim, channels, patch, patch),
        "pos_embed": (1, encoder.num_class_tokens + encoder.num_pos_patches, dim),
    }
    if encoder.use_patch_bias:
        shapes["patch_embed.proj.bias"] = (dim,)
    if encoder.num_class_tokens:
        shapes["cls_token"] = (1, encoder.num_class_tokens, dim)
    if encoder.pre_norm:
        shapes.update({"norm_pre.weight": (dim,), "norm_pre.bias": (dim,)})
    for index in range(encoder.num_layers):
        shapes.update(block_shapes(f"blocks.{index}.", dim, mlp, encoder.use_qkv_bias))
    if encoder.final_norm:
        shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return shapes


def replicate_class_tokens(state, num_class_tokens):
    """MCTformer-style: copy a single class token (and its position row) to `num_class_tokens`."""
    token = state.get("cls_token")
    if num_class_tokens <= 1 or token is None or token.ndim != 3 or token.shape[1] != 1:
        return state
    state = dict(state)
    state["cls_token"] = np.repeat(token, num_class_tokens, axis=1)
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        state["pos_embed"] = np.concatenate([np.repeat(pos[:, :1], num_class_tokens, axis=1), pos[:, 1:]], axis=1)
    return state


def _layer_norm(layer, state, prefix):
    layer.gamma.assign(state[prefix + ".weight"])
    layer.beta.assign(state[prefix + ".bias"])


def _dense(layer, state, prefix, rows=None):
    weight = state[prefix + ".weight"]
    bias = state.get(prefix + ".bias")
    if rows is not None:
        weight = weight[rows]
        bias = None if bias is None else bias[rows]
    layer.kernel.assign(np.ascontiguousarray(weight.T))
    if layer.use_bias:
        layer.bias.assign(bias)


def _float_arrays(state):
    """Float tensors as float32 NumPy; integer buffers (HF/keras-hub position ids) are not weights."""
    return {name: np.asarray(value, dtype=np.float32) for name, value in state.items()
            if np.asarray(value).dtype.kind == "f"}


def block_shapes(prefix, dim, mlp, qkv_bias=True):
    """Canonical {name: shape} of one transformer block's weights under `prefix`."""
    shapes = {
        prefix + "norm1.weight": (dim,), prefix + "norm1.bias": (dim,),
        prefix + "attn.qkv.weight": (3 * dim, dim),
        prefix + "attn.proj.weight": (dim, dim), prefix + "attn.proj.bias": (dim,),
        prefix + "norm2.weight": (dim,), prefix + "norm2.bias": (dim,),
        prefix + "mlp.fc1.weight": (mlp, dim), prefix + "mlp.fc1.bias": (mlp,),
        prefix + "mlp.fc2.weight": (dim, mlp), prefix + "mlp.fc2.bias": (dim,),
    }
    if qkv_bias:
        shapes[prefix + "attn.qkv.bias"] = (3 * dim,)
    return shapes


def assign_block(block, state, prefix):
    """Copy one `TransformerBlock`'s weights from a checked canonical state (names under `prefix`)."""
    dim = block.hidden_dim
    _layer_norm(block.norm1, state, prefix + "norm1")
    if block.attn.fused_qkv:
        _dense(block.attn.qkv, state, prefix + "attn.qkv")
    else:
        for part, layer in enumerate((block.attn.query, block.attn.key, block.attn.value)):
            _dense(layer, state, prefix + "attn.qkv", rows=slice(part * dim, (part + 1) * dim))
    _dense(block.attn.proj, state, prefix + "attn.proj")
    _layer_norm(block.norm2, state, prefix + "norm2")
    _dense(block.mlp.fc1, state, prefix + "mlp.fc1")
    _dense(block.mlp.fc2, state, prefix + "mlp.fc2")


def assign_canonical(encoder, state, source, ignore_unexpected=_IGNORED_PREFIXES):
    """Check `state` (canonical layout) against `encoder` in full, then copy it in.

    Raises:
        CheckpointError: listing every missing, unexpected and mis-shaped key.
    """
    if not encoder.built:
        encoder.build((None, None, None, encoder.image_channels))
    state = _float_arrays(state)
    check_shapes(expected_shapes(encoder), state, source, ignore_unexpected=ignore_unexpected)
    kernel = state["patch_embed.proj.weight"].transpose(2, 3, 1, 0)  # (D, C, p, p) -> (p, p, C, D)
    encoder.patch_embed.kernel.assign(np.ascontiguousarray(kernel))
    if encoder.use_patch_bias:
        encoder.patch_embed.bias.assign(state["patch_embed.proj.bias"])
    if encoder.num_class_tokens:
        encoder.class_token.assign(state["cls_token"])
    encoder.pos_embed.assign(state["pos_embed"])
    if encoder.pre_norm:
        _layer_norm(encoder.norm_pre, state, "norm_pre")
    for index, block in enumerate(encoder.blocks):
        assign_block(block, state, f"blocks.{index}.")
    if encoder.final_norm:
        _layer_norm(encoder.norm, state, "norm")
    return encoder


# --------------------------------------------------------------------------- source formats


def hf_vit_to_canonical(state):
    """Hugging Face `ViTModel` names -> canonical (q/k/v are stacked into `qkv`)."""
    state = strip_prefix(state, ("vit.",))
    renames = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    inner = {
        "layernorm_before": "norm1", "layernorm_after": "norm2",
        "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
        "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    }
    out, qkv = {}, {}
    for name, value in state.items():
        if name in renames:
            out[renames[name]] = value
            continue
        # transformers writes "encoder.layer.{i}" files; its 5.x in-memory modules are "layers.{i}"
        for layer_prefix in ("encoder.layer.", "layers."):
            if name.startswith(layer_prefix):
                break
        else:
            layer_prefix = None
        if layer_prefix:
            index, rest = name[len(layer_prefix):].split(".", 1)
            part = rest.split(".")
            if rest.startswith("attention.attention.") and part[2] in ("query", "key", "value"):
                qkv.setdefault((index, part[3]), {})[part[2]] = (name, value)
                continue
            if len(part) == 3 and part[0] == "attention" and part[1] in ("q_proj", "k_proj", "v_proj"):
                role = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}[part[1]]
                qkv.setdefault((index, part[2]), {})[role] = (name, value)
                continue
            module, leaf = rest.rsplit(".", 1)
            if module in inner:
                out[f"blocks.{index}.{inner[module]}.{leaf}"] = value
                continue
        out[name] = value
    out.update(_stack_qkv(qkv, "blocks.{index}.attn.qkv.{leaf}"))
    return out


def _stack_qkv(groups, pattern):
    """Stack separate q/k/v tensors into one [q; k; v]; incomplete groups keep their own names."""
    out = {}
    for (index, leaf), parts in groups.items():
        if set(parts) == {"query", "key", "value"}:
            out[pattern.format(index=index, leaf=leaf)] = np.concatenate(
                [parts[key][1] for key in ("query", "key", "value")], axis=0)
        else:  # leave them under their own names: check_shapes reports both sides
            out.update({name: value for name, value in parts.values()})
    return out


def keras_hub_attention_to_torch(weights, prefix):
    """keras-hub MultiHeadAttention variables under `prefix` -> (qkv weight, qkv bias, out weight, out bias).

    `weights` maps variable paths to arrays. Keras kernels are (in, heads, head_dim) and the
    output kernel (heads, head_dim, out); PyTorch weights are (out, in).
    """
    rows, biases = [], []
    for part in ("query", "key", "value"):
        kernel = weights[f"{prefix}/{part}/kernel"]
        rows.append(kernel.reshape(kernel.shape[0], -1).T)
        biases.append(weights[f"{prefix}/{part}/bias"].reshape(-1))
    output = weights[f"{prefix}/attention_output/kernel"]
    return (np.concatenate(rows, 0), np.concatenate(biases, 0),
            output.reshape(-1, output.shape[-1]).T, weights[f"{prefix}/attention_output/bias"])


def load_keras_hub_backbone(folder):
    """Load a keras-hub backbone from a local preset folder (never from the network)."""
    try:
        import keras_hub
    except ImportError:
        raise CheckpointError(f"{folder}: reading a keras-hub preset needs keras-hub: pip install keras-hub") from None
    try:
        return keras_hub.models.Backbone.from_preset(os.path.abspath(folder))
    except Exception as error:
        raise CheckpointError(f"{folder}: keras-hub could not load this preset folder ({error}).") from None


# keras-hub names of the two backbones this reads: (embedding layer, encoder, MLP layers).
_KERAS_HUB_LAYOUTS = {
    "ViTBackbone": ("vit_patching_and_embedding", "vit_encoder", ("mlp/dense_1", "mlp/dense_2")),
    "DeiTBackbone": ("deit_patching_and_embedding", "deit_encoder", ("mlp/dense", "output_layer/output")),
}


def keras_hub_vit_to_canonical(backbone):
    """keras-hub `ViTBackbone` or (distilled) `DeiTBackbone` variables -> canonical."""
    import keras

    embed, encoder, (fc1, fc2) = _KERAS_HUB_LAYOUTS[type(backbone).__name__]
    weights = {w.path: keras.ops.convert_to_numpy(w.value) for w in backbone.weights}
    out, used = {}, set()

    def take(path):
        used.add(path)
        return weights[path]

    if f"{embed}/class_token" in weights:
        out["cls_token"] = take(f"{embed}/class_token")
    if f"{embed}/distillation_token" in weights:
        out["dist_token"] = take(f"{embed}/distillation_token")
    out["patch_embed.proj.weight"] = take(f"{embed}/patch_embedding/kernel").transpose(3, 2, 0, 1)
    if f"{embed}/patch_embedding/bias" in weights:
        out["patch_embed.proj.bias"] = take(f"{embed}/patch_embedding/bias")
    position = f"{embed}/position_embedding/embeddings"
    position = position if position in weights else f"{embed}/position_embedding"
    out["pos_embed"] = take(position).reshape((1,) + take(position).shape[-2:])
    index = 0
    while f"{encoder}/transformer_block_{index + 1}/ln_1/gamma" in weights:
        source, target = f"{encoder}/transformer_block_{index + 1}", f"blocks.{index}."
        out[target + "norm1.weight"], out[target + "norm1.bias"] = take(source + "/ln_1/gamma"), take(source + "/ln_1/beta")
        out[target + "norm2.weight"], out[target + "norm2.bias"] = take(source + "/ln_2/gamma"), take(source + "/ln_2/beta")
        qkv_w, qkv_b, proj_w, proj_b = keras_hub_attention_to_torch(weights, source + "/mha")
        used.update(p for p in weights if p.startswith(source + "/mha/"))
        out.update({target + "attn.qkv.weight": qkv_w, target + "attn.qkv.bias": qkv_b,
                    target + "attn.proj.weight": proj_w, target + "attn.proj.bias": proj_b})
        for dense, name in ((fc1, "fc1"), (fc2, "fc2")):
            out[f"{target}mlp.{name}.weight"] = take(f"{source}/{dense}/kernel").T
            out[f"{target}mlp.{name}.bias"] = take(f"{source}/{dense}/bias")
        index += 1
    out["norm.weight"], out["norm.bias"] = take(f"{encoder}/ln/gamma"), take(f"{encoder}/ln/beta")
    for path in weights:  # anything not mapped is reported by check_shapes as unexpected
        if path not in used:
            out[path] = weights[path]
    return out


def merge_distillation_token(state):
    """Distilled DeiT: [class token, distillation token] become two class tokens, in that order
    (the position table already has a row for each)."""
    if "dist_token" not in state or "cls_token" not in state:
        return state
    state = dict(state)
    state["cls_token"] = np.concatenate([state["cls_token"], state.pop("dist_token")], axis=1)
    return state


def _is_hf_folder(folder):
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as file:
        try:
            return "model_type" in json.load(file)
        except json.JSONDecodeError:
            return False


def _is_keras_hub_folder(folder):
    return os.path.isfile(os.path.join(folder, "metadata.json")) or (
        os.path.isfile(os.path.join(folder, "config.json")) and not _is_hf_folder(folder))


def hf_weight_file(folder):
    """The weight file of a Hugging Face `save_pretrained` folder."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise CheckpointError(
        f"{folder}: a Hugging Face folder needs model.safetensors or pytorch_model.bin next to config.json "
        "(sharded checkpoints are not supported; merge them with save_pretrained(max_shard_size='100GB')).")


def read_canonical(source, num_class_tokens=1):
    """Read any supported ViT checkpoint (file or folder) into the canonical layout.

    Returns:
        (state, info): the canonical {name: array} and a dict with "format" and, for Hugging
        Face folders, "hf_config" (the parsed config.json).
    """
    info = {}
    if os.path.isdir(source):
        if _is_hf_folder(source):
            with open(os.path.join(source, "config.json"), encoding="utf-8") as file:
                info["hf_config"] = json.load(file)
            if info["hf_config"].get("model_type") != "vit":
                raise CheckpointError(
                    f"{source}: Hugging Face model_type is {info['hf_config'].get('model_type')!r}, expected 'vit'.")
            state = hf_vit_to_canonical(read_state_dict(hf_weight_file(source)))
            info["format"] = "huggingface"
        elif _is_keras_hub_folder(source):
            backbone = load_keras_hub_backbone(source)
            if type(backbone).__name__ not in _KERAS_HUB_LAYOUTS:
                raise CheckpointError(
                    f"{source}: keras-hub preset holds a {type(backbone).__name__}, not a ViTBackbone or DeiTBackbone.")
            state = keras_hub_vit_to_canonical(backbone)
            info["format"] = "keras_hub"
            info["layer_norm_epsilon"] = backbone.layer_norm_epsilon
        else:
            raise CheckpointError(
                f"{source}: folder is neither a Hugging Face save_pretrained folder (config.json with model_type) "
                "nor a keras-hub preset (metadata.json + config.json).")
    else:
        state = strip_prefix(read_state_dict(source), ("module.", "backbone."))
        if any(name.startswith(("embeddings.", "vit.embeddings.")) for name in state):  # HF file alone
            state = hf_vit_to_canonical(state)
            info["format"] = "huggingface"
        else:
            info["format"] = "timm"
    info["distilled"] = "dist_token" in state
    state = merge_distillation_token(state)
    if info["distilled"]:
        return state, info
    return replicate_class_tokens(state, num_class_tokens), info


def load_pretrained(source, arch, **kwargs):
    """Build a `ViTEncoder` for `arch` and load a local checkpoint into it, strictly.

    Args:
        source: a checkpoint file (timm/DeiT/DINO `.pth`/`.safetensors`, HF `model.safetensors`)
            or folder (HF `save_pretrained`, keras-hub preset).
        arch: a name in `ARCHS` (vit_b16, vit_s16, deit_s16, deit_b16, deit_s16_distilled,
            deit_b16_distilled, dino_vits16, dino_vitb16) or a dict of `ViTEncoder` kwargs.
        **kwargs: overrides of the architecture's kwargs (e.g. `num_class_tokens=20` for an
            MCTformer host, which replicates the class token and its position row). For
            Hugging Face folders the LayerNorm epsilon of config.json is used unless
            `layer_norm_epsilon` is given; keras-hub presets likewise.

    Returns:
        the loaded `ViTEncoder`.

    Raises:
        CheckpointError: the file is missing or unreadable, or its keys/shapes do not fit
            the architecture (every offending key is listed).

    Example:
    ```python
    encoder = load_pretrained("jx_vit_base_p16_224-80ecf9dd.pth", "vit_b16")
    ```
    """
    from wsss_keras.backbones.vit.vit_encoder import ViTEncoder

    config = resolve_arch(arch, **kwargs)
    state, info = read_canonical(source, num_class_tokens=config.get("num_class_tokens", 1))
    if isinstance(arch, str) and arch.endswith("_distilled") and not info["distilled"]:
        raise CheckpointError(
            f"{source}: {arch} needs a distilled DeiT checkpoint (with a distillation token); this one has none. "
            f"Use {arch[: -len('_distilled')]} for it.")
    if "layer_norm_epsilon" not in kwargs:
        if "hf_config" in info and "layer_norm_eps" in info["hf_config"]:
            config["layer_norm_epsilon"] = info["hf_config"]["layer_norm_eps"]
        elif "layer_norm_epsilon" in info:
            config["layer_norm_epsilon"] = info["layer_norm_epsilon"]
    hf_act = info.get("hf_config", {}).get("hidden_act")
    if hf_act not in (None, "gelu"):
        raise CheckpointError(f"{source}: hidden_act={hf_act!r} is not supported; only exact 'gelu' is.")
    # Check before building, so that a wrong file fails fast and nothing is half-made.
    check_shapes(expected_shapes(encoder_settings(config)), _float_arrays(state), source,
                 ignore_unexpected=_IGNORED_PREFIXES)
    encoder = ViTEncoder(**config)
    return assign_canonical(encoder, state, source)
