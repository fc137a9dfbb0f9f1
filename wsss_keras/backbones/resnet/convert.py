"""Importing ResNet weights: torchvision state dicts and keras-hub ResNetBackbone presets.

Both sources are turned into one canonical form, a flat {torchvision key: array in torch layout}
dict (`conv1.weight` OIHW, `bn1.running_mean`, `layer1.0.downsample.0.weight`, ...), which is
checked strictly against the architecture (`check_shapes`: every missing, unexpected or mis-shaped
key is listed) before any variable is written. timm's ResNet checkpoints use the same names, so
`.safetensors` files from timm load through the same path.

keras-hub's `ResNetBackbone` with `block_type="bottleneck_block"` and `use_pre_activation=False`
is the same network as torchvision's v1.5 ResNet (stride on the 3x3 conv, 7x7/2 stem, zero-padded
3x3/2 max-pool after a ReLU, BN eps 1e-5); only names and the kernel layout (HWIO) differ. Its
"_vd" block types (three-conv stem, average-pool shortcuts) and ResNetV2 (pre-activation) are
different networks and are refused.

This module imports Keras only inside the functions that build or fill a model, so
`wsss weights inspect` can use the layout helpers without choosing a backend.
"""

import json
import os
import re

import numpy as np

from wsss_keras.backbones.checkpoint import CheckpointError, check_shapes, read_state_dict, strip_prefix

EXPANSION = 4
# Wrappers seen around torchvision-layout weights: DataParallel, IRN/AMR/SSC's `resnet50.` attribute.
KNOWN_PREFIXES = ("module.", "backbone.", "resnet50.", "resnet101.", "encoder.")
IGNORED_PREFIXES = ("fc.",)  # the ImageNet classifier is not part of the backbone
_BN_TORCH_TO_KERAS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
STATE_DICT_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".npz")


def torchvision_shapes(block_counts, base_width=64, in_channels=3):
    """{torchvision key: torch-layout shape} of a v1.5 ResNet backbone (no fc), without Keras.

    Args:
        block_counts: bottlenecks per stage, e.g. (3, 4, 6, 3).
        base_width: stem width (64 in the real networks).
        in_channels: image channels.

    Example:
    ```python
    shapes = torchvision_shapes((3, 4, 6, 3))
    shapes["layer1.0.conv2.weight"]  # (64, 64, 3, 3)
    ```
    """
    shapes = {"conv1.weight": (base_width, in_channels, 7, 7)}
    _bn_shapes(shapes, "bn1", base_width)
    channels = base_width
    for stage, count in enumerate(block_counts, start=1):
        width = base_width * 2 ** (stage - 1)
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, channels, 1, 1)
            _bn_shapes(shapes, f"{prefix}.bn1", width)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            _bn_shapes(shapes, f"{prefix}.bn2", width)
            shapes[f"{prefix}.conv3.weight"] = (width * EXPANSION, width, 1, 1)
            _bn_shapes(shapes, f"{prefix}.bn3", width * EXPANSION)
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (width * EXPANSION, channels, 1, 1)
                _bn_shapes(shapes, f"{prefix}.downsample.1", width * EXPANSION)
            channels = width * EXPANSION
    return shapes


def _bn_shapes(shapes, prefix, channels):
    for name in _BN_TORCH_TO_KERAS:
        shapes[f"{prefix}.{name}"] = (channels,)


def clean_torchvision_state(state):
    """Drop wrapper prefixes and BatchNorm's `num_batches_tracked` counters (not weights)."""
    state = strip_prefix(state, KNOWN_PREFIXES)
    return {name: value for name, value in state.items() if not name.endswith("num_batches_tracked")}


def detect_format(source):
    """Name the checkpoint format of a local file or folder: "keras_hub_preset", "torch",
    "safetensors" or "npz". Raises CheckpointError for anything else."""
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, "config.json")):
            return "keras_hub_preset"
        raise CheckpointError(
            f"{source}: a folder, but not a keras-hub preset (no config.json). Pass a preset folder "
            "written by `save_to_preset`, or a .pth/.safetensors/.npz file."
        )
    if not os.path.exists(source):
        raise CheckpointError(f"{source}: no such file or folder.")
    lower = source.lower()
    if lower.endswith(".weights.h5") or lower.endswith(".keras"):
        raise CheckpointError(
            f"{source}: already a Keras file; build the model and call `model.load_weights` on it "
            "instead of importing it."
        )
    extension = os.path.splitext(lower)[1]
    if extension in (".pth", ".pt", ".bin", ".ckpt"):
        return "torch"
    if extension in (".safetensors", ".npz"):
        return extension[1:]
    raise CheckpointError(
        f"{source}: unknown checkpoint format; expected a torchvision/timm state dict "
        f"({', '.join(STATE_DICT_EXTENSIONS)}) or a keras-hub preset folder."
    )


def read_keras_hub_config(folder):
    """The backbone config of a keras-hub preset folder (its config.json), checked to be a
    torchvision-compatible ResNet. Raises CheckpointError naming the offending setting."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable keras-hub config ({error}).") from None
    class_name = config.get("class_name", "")
    if class_name != "ResNetBackbone":
        raise CheckpointError(f"{folder}: a keras-hub preset of {class_name or 'unknown class'}, not ResNetBackbone.")
    settings = config.get("config", {})
    problems = []
    if settings.get("block_type") != "bottleneck_block":
        problems.append(f"block_type={settings.get('block_type')!r} (needs 'bottleneck_block')")
    if settings.get("use_pre_activation"):
        problems.append("use_pre_activation=True (ResNetV2, a different network)")
    if list(settings.get("input_conv_kernel_sizes", [7])) != [7]:
        problems.append(f"input_conv_kernel_sizes={settings.get('input_conv_kernel_sizes')} (needs [7])")
    if problems:
        raise CheckpointError(f"{folder}: this ResNetBackbone is not torchvision's v1.5 ResNet: " + "; ".join(problems))
    return settings


def keras_hub_state(folder):
    """Load a keras-hub ResNetBackbone preset folder and return its weights under torchvision
    names in torch layout. Layers with weights that have no torchvision counterpart are returned
    under `keras_hub:<layer name>`, so the strict check reports them as unexpected."""
    read_keras_hub_config(folder)
    import keras_hub

    try:
        hub_model = keras_hub.models.ResNetBackbone.from_preset(folder)
    except Exception as error:
        raise CheckpointError(f"{folder}: keras-hub could not load this preset ({error}).") from None
    keras_to_torch = {keras: torch for torch, keras in _BN_TORCH_TO_KERAS.items()}
    state = {}
    block_pattern = re.compile(r"^stack(\d+)_block(\d+)_(\d)_(conv|bn)$")
    for layer in hub_model.layers:
        if not layer.weights:
            continue
        match = block_pattern.match(layer.name)
        if layer.name in ("conv1_conv", "conv1_bn"):
            prefix = "conv1" if layer.name == "conv1_conv" else "bn1"
        elif match:
            stack, block, part, kind = match.groups()
            prefix = f"layer{int(stack) + 1}.{block}."
            if part == "0":
                prefix += "downsample.0" if kind == "conv" else "downsample.1"
            else:
                prefix += f"{kind}{part}"
        else:
            for variable in layer.weights:
                state[f"keras_hub:{layer.name}/{variable.name}"] = np.asarray(variable.numpy())
            continue
        for variable in layer.weights:
            value = np.asarray(variable.numpy())
            if layer.name.endswith("_conv"):
                state[f"{prefix}.weight"] = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            else:
                state[f"{prefix}.{keras_to_torch.get(variable.name, variable.name)}"] = value
    return state


def read_torchvision_state(source):
    """Read any supported source as ({torchvision key: torch-layout array}, format name)."""
    kind = detect_format(source)
    if kind == "keras_hub_preset":
        return keras_hub_state(source), kind
    return clean_torchvision_state(read_state_dict(source)), kind


def check_torchvision_state(state, block_counts, base_width, source):
    """Raise CheckpointError unless `state` holds exactly this architecture's tensors."""
    check_shapes(torchvision_shapes(block_counts, base_width), state, source, ignore_unexpected=IGNORED_PREFIXES)


def variable_map(model):
    """{torchvision key: (Keras variable, converter from torch layout)} for a `ResNet`."""
    mapping = {}

    def conv(key, layer):
        mapping[key] = (layer.kernel, lambda value: value.transpose(2, 3, 1, 0))  # OIHW -> HWIO

    def batchnorm(prefix, layer):
        for torch_name, keras_name in _BN_TORCH_TO_KERAS.items():
            mapping[f"{prefix}.{torch_name}"] = (getattr(layer, keras_name), lambda value: value)

    conv("conv1.weight", model.stem_conv)
    batchnorm("bn1", model.stem_bn)
    for stage_index, stage in enumerate(model.stages, start=1):
        for block_index, block in enumerate(stage):
            prefix = f"layer{stage_index}.{block_index}"
            for part in ("1", "2", "3"):
                conv(f"{prefix}.conv{part}.weight", getattr(block, f"conv{part}"))
                batchnorm(f"{prefix}.bn{part}", getattr(block, f"bn{part}"))
            if block.downsample:
                conv(f"{prefix}.downsample.0.weight", block.downsample_conv)
                batchnorm(f"{prefix}.downsample.1", block.downsample_bn)
    return mapping


def load_torchvision_state(model, state, source="state dict"):
    """Strictly copy a torchvision-named state dict into a `ResNet`.

    Args:
        model: a `wsss_keras.backbones.resnet.ResNet`.
        state: {torchvision key: array}, torch layout; `fc.*` is ignored.
        source: file name used in error messages.

    Raises:
        CheckpointError: listing missing, unexpected and mis-shaped keys; nothing is written then.
    """
    state = clean_torchvision_state(state)
    mapping = variable_map(model)
    expected = {key: _torch_shape(variable.shape, key) for key, (variable, _) in mapping.items()}
    check_shapes(expected, state, source, ignore_unexpected=IGNORED_PREFIXES)
    for key, (variable, convert) in mapping.items():
        variable.assign(convert(np.asarray(state[key], dtype="float32")))
    return model


def _torch_shape(keras_shape, key):
    shape = tuple(keras_shape)
    return (shape[3], shape[2], shape[0], shape[1]) if key.endswith(".weight") and len(shape) == 4 else shape


def load_weights(model, source):
    """Fill a `ResNet` from a local torchvision/timm state dict file or keras-hub preset folder.

    The source is checked against the model's own architecture first, so a ResNet-101 file
    loaded into a ResNet-50 fails with the list of offending keys before any variable changes.

    Returns:
        The format that was read: "torch", "safetensors", "npz" or "keras_hub_preset".
    """
    state, kind = read_torchvision_state(source)
    load_torchvision_state(model, state, source)
    return kind
