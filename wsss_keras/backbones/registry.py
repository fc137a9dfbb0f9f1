"""Backbone architectures by name, and a look at checkpoints without building anything.

Each arch name maps to the module name of its family package; the package is imported only when
the arch is used, so this module (and `wsss weights inspect`) never imports Keras. A family
package exposes `ARCHS` (arch name -> constructor kwargs) and
`load_pretrained(source, arch, **kwargs) -> model`.

Example:
```python
from wsss_keras.backbones import registry
backbone = registry.load_pretrained("resnet50-19c8e357.pth", "resnet50", output_stride=16)
untrained = registry.load_pretrained(registry.RANDOM_WEIGHTS, "resnet50")  # `--weights random`
fmt, tensors = registry.read_tensor_shapes("resnet50-19c8e357.pth")
registry.guess_arch(tensors)  # (["resnet50"], "torchvision/timm ResNet, blocks 3-4-6-3, width 64")
```
"""

import importlib
import json
import os
import re

from wsss_keras.backbones.checkpoint import CheckpointError, read_tensor_info, strip_prefix
from wsss_keras.errors import WSSSError

ARCH_FAMILIES = {
    "resnet50": "wsss_keras.backbones.resnet",
    "resnet101": "wsss_keras.backbones.resnet",
    "vit_b16": "wsss_keras.backbones.vit",
    "vit_s16": "wsss_keras.backbones.vit",
    "deit_s16": "wsss_keras.backbones.vit",
    "deit_b16": "wsss_keras.backbones.vit",
    "deit_s16_distilled": "wsss_keras.backbones.vit",
    "deit_b16_distilled": "wsss_keras.backbones.vit",
    "dino_vits16": "wsss_keras.backbones.vit",
    "dino_vitb16": "wsss_keras.backbones.vit",
    "clip_vit_b16": "wsss_keras.backbones.clip",
    "clip_vit_b32": "wsss_keras.backbones.clip",
    "clip_vit_l14": "wsss_keras.backbones.clip",
}

RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
# (embedding width, depth) of the patch-16 ViTs; several archs share a shape and differ only in
# how they were trained, so the guess lists them all.
VIT_SHAPES = {(768, 12): ["vit_b16", "deit_b16", "dino_vitb16"], (384, 12): ["vit_s16", "deit_s16", "dino_vits16"]}


# `--weights random`: every backbone of the run is built untrained (randomly initialised) instead
# of loaded, so a full-size smoke run needs no checkpoint. Defined here, below every pipeline,
# so each place that loads pretrained weights compares against the same word.
RANDOM_WEIGHTS = "random"


def is_random(weights):
    """True for the `--weights random` sentinel (`RANDOM_WEIGHTS`)."""
    return isinstance(weights, str) and weights == RANDOM_WEIGHTS


def weights_origin(weights):
    """How a printed line names where weights came from: the path, or "random (untrained)"."""
    return "random (untrained)" if is_random(weights) else str(weights)


class UnknownArchError(WSSSError):
    """An arch name that no backbone family provides."""


def known_archs():
    """Every arch name, sorted."""
    return sorted(ARCH_FAMILIES)


def family(arch):
    """Import and return the family package of an arch name."""
    if arch not in ARCH_FAMILIES:
        raise UnknownArchError(f"Unknown backbone arch {arch!r}; known: {', '.join(known_archs())}.")
    module_name = ARCH_FAMILIES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UnknownArchError(f"Arch {arch!r} needs {module_name}, which cannot be imported ({error}).") from None
    if arch not in getattr(module, "ARCHS", {}):
        raise UnknownArchError(f"{module_name} does not provide arch {arch!r}.")
    return module


def load_pretrained(source, arch, **kwargs):
    """Build `arch` and load the local checkpoint `source` into it strictly (format detected);
    `source` = `RANDOM_WEIGHTS` builds it untrained (`build_untrained`)."""
    if is_random(source):
        return build_untrained(arch, **kwargs)
    return family(arch).load_pretrained(source, arch, **kwargs)


def build_untrained(arch, family_name=None, **kwargs):
    """Build `arch` randomly initialised, with the same kwargs `load_pretrained` takes.

    Args:
        arch: a known arch name, or (with `family_name`) a dict of the family's constructor
            kwargs, as the ViT and CLIP loaders accept.
        family_name: "resnet", "vit" or "clip"; default: the family of the arch name.
        **kwargs: the family's overrides (ResNet arguments; `ViTEncoder` overrides; CLIP's
            `image=dict(...)` / `text=dict(...)`).
    """
    if family_name is None:
        family_name = family(arch).__name__.rsplit(".", 1)[-1]
    if family_name == "resnet":
        from wsss_keras.backbones import resnet

        return resnet.build(arch, **kwargs)
    if family_name == "vit":
        from wsss_keras.backbones.vit.vit_encoder import ViTEncoder
        from wsss_keras.backbones.vit.vit_weights import resolve_arch

        encoder = ViTEncoder(**resolve_arch(arch, **kwargs))
        encoder.build((None, None, None, encoder.image_channels))  # as a loaded one is: weights exist
        return encoder
    if family_name == "clip":
        from wsss_keras.backbones.clip.clip_model import CLIP
        from wsss_keras.backbones.clip.clip_weights import resolve_arch

        model = CLIP(**resolve_arch(arch, **kwargs))
        model.build(None)
        return model
    raise UnknownArchError(f"No untrained build for backbone family {family_name!r}; known: resnet, vit, clip.")


def read_tensor_shapes(source):
    """Read the tensor names, shapes and dtypes of a checkpoint, without Keras.

    Args:
        source: a .pth/.pt/.bin/.ckpt/.safetensors/.npz state dict, a Keras `.weights.h5` file,
            or a keras-hub preset folder.

    Returns:
        (format, {name: (shape, dtype name)}); for a keras-hub preset the format names its class
        and the tensors are those of its `model.weights.h5`.
    """
    if os.path.isdir(source):
        config_path = os.path.join(source, "config.json")
        if not os.path.isfile(config_path):
            raise CheckpointError(f"{source}: a folder without config.json is not a keras-hub preset.")
        config = _read_json(config_path)
        weights_path = os.path.join(source, "model.weights.h5")
        tensors = _h5_tensors(weights_path) if os.path.isfile(weights_path) else {}
        return f"keras_hub_preset ({config.get('class_name', 'unknown class')})", tensors
    if not os.path.isfile(source):
        raise CheckpointError(f"{source}: no such file or folder.")
    if source.lower().endswith(".h5"):
        return "keras_weights", _h5_tensors(source)
    extension = os.path.splitext(source)[1].lower()
    fmt = {".safetensors": "safetensors", ".npz": "npz"}.get(extension, "torch")
    return fmt, read_tensor_info(source)


def _read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error}).") from None


def _h5_tensors(path):
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"{path}: reading .h5 files needs h5py: pip install h5py") from None
    tensors = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            tensors[name] = (tuple(item.shape), str(item.dtype))

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    except OSError as error:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({error}).") from None
    return tensors


def guess_arch(tensors, source=None):
    """Guess which known arch a checkpoint holds.

    Args:
        tensors: {name: (shape, dtype)} or {name: shape}, as from `read_tensor_shapes`.
        source: the file or folder; a keras-hub preset's config.json is read when given.

    Returns:
        (candidate arch names, one-line description); no candidates when nothing fits.
    """
    shapes = {name: _shape_of(value) for name, value in tensors.items()}
    if source and os.path.isdir(source):
        return _guess_keras_hub(_read_json(os.path.join(source, "config.json")))
    shapes = strip_prefix(shapes, ("module.", "backbone.", "model.", "encoder.", "resnet50.", "resnet101."))
    for guess in (_guess_resnet, _guess_clip, _guess_vit):
        found = guess(shapes)
        if found:
            return found
    return [], "no known arch recognised"


def _shape_of(value):
    # Accept both {name: shape} and {name: (shape, dtype)}.
    if len(value) == 2 and isinstance(value[0], tuple) and isinstance(value[1], str):
        return value[0]
    return tuple(value)


def _guess_resnet(shapes):
    counts = {}
    for name in shapes:
        match = re.match(r"^layer([1-4])\.(\d+)\.conv1\.weight$", name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    if not counts or "conv1.weight" not in shapes:
        return None
    depth = tuple(counts.get(stage, 0) for stage in (1, 2, 3, 4))
    width = shapes["conv1.weight"][0]
    layout = f"torchvision/timm ResNet, blocks {'-'.join(map(str, depth))}, width {width}"
    arch = RESNET_DEPTHS.get(depth)
    if arch and width == 64:
        return [arch], layout
    return [], layout + " (not a standard resnet50/resnet101)"


def _guess_vit(shapes):
    patch = next((shapes[name] for name in ("patch_embed.proj.weight",
                                             "embeddings.patch_embeddings.projection.weight",
                                             "vit.embeddings.patch_embeddings.projection.weight") if name in shapes), None)
    if patch is None:
        return None
    depth = len({m.group(1) for name in shapes for m in [re.match(r"^(?:vit\.)?(?:blocks|encoder\.layer)\.(\d+)\.", name)] if m})
    width, patch_size = patch[0], patch[-1]
    layout = f"ViT, width {width}, {depth} blocks, patch {patch_size}"
    candidates = VIT_SHAPES.get((width, depth), []) if patch_size == 16 else []
    if "dist_token" in shapes:  # timm's distilled DeiT: only the distilled archs take it
        layout += ", with a distillation token"
        candidates = [f"{arch}_distilled" for arch in candidates if f"{arch}_distilled" in ARCH_FAMILIES]
    return candidates, layout + ("" if candidates else " (no known arch of that shape)")


def _guess_clip(shapes):
    patch = shapes.get("visual.conv1.weight") or shapes.get("vision_model.embeddings.patch_embedding.weight")
    if patch is None:
        return None
    layout = f"CLIP image tower, width {patch[0]}, patch {patch[-1]}"
    return (["clip_vit_b16"], layout) if (patch[0], patch[-1]) == (768, 16) else ([], layout + " (not ViT-B/16)")


def _guess_keras_hub(config):
    class_name, settings = config.get("class_name", ""), config.get("config", {})
    if class_name == "ResNetBackbone":
        depth = tuple(settings.get("stackwise_num_blocks", ()))
        layout = f"keras-hub ResNetBackbone, block_type {settings.get('block_type')}, blocks {'-'.join(map(str, depth))}"
        plain = settings.get("block_type") == "bottleneck_block" and not settings.get("use_pre_activation")
        arch = RESNET_DEPTHS.get(depth) if plain else None
        return ([arch] if arch else []), layout
    if class_name == "ViTBackbone":
        key = (settings.get("hidden_dim"), settings.get("num_layers"))
        candidates = VIT_SHAPES.get(key, []) if settings.get("patch_size") in (16, (16, 16), [16, 16]) else []
        return candidates, f"keras-hub ViTBackbone, width {key[0]}, {key[1]} blocks, patch {settings.get('patch_size')}"
    if class_name in ("CLIPBackbone", "CLIPVisionEncoder"):
        return ["clip_vit_b16"], f"keras-hub {class_name}"
    return [], f"keras-hub {class_name or 'preset'} (no known arch)"
