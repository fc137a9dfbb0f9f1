"""ResNet-50/101 (torchvision v1.5 layout) and its weight importers.

`ARCHS` and `load_pretrained` are the family interface that `wsss_keras.backbones.registry`
uses. Keras is imported only when a model is built, so listing archs or inspecting
checkpoints does not fix the backend.
"""

ARCHS = {
    "resnet50": {"block_counts": (3, 4, 6, 3)},
    "resnet101": {"block_counts": (3, 4, 23, 3)},
}

_LAZY = {
    "ResNet": "backbone",
    "Bottleneck": "backbone",
    "BottleneckHooks": "backbone",
    "BlockContext": "backbone",
    "ResNetBatchNorm": "backbone",
}


def build(arch, **kwargs):
    """Build a randomly initialised ResNet of a named arch.

    Args:
        arch: a key of `ARCHS` ("resnet50", "resnet101").
        **kwargs: `ResNet` arguments overriding the arch's (output_stride, dilation,
            frozen_batchnorm, freeze_stem, ...).
    """
    from wsss_keras.backbones.resnet.backbone import ResNet

    if arch not in ARCHS:
        raise ValueError(f"Unknown ResNet arch {arch!r}; known: {', '.join(ARCHS)}.")
    return ResNet(**{**ARCHS[arch], **kwargs})


def load_pretrained(source, arch="resnet50", **kwargs):
    """Build a ResNet and load a local checkpoint into it, strictly.

    The format is detected: a torchvision / timm state dict (.pth, .pt, .bin, .safetensors,
    .npz; `fc.*` ignored) or a keras-hub `ResNetBackbone` preset folder (from `save_to_preset`).

    Args:
        source: local file or folder.
        arch: "resnet50" or "resnet101".
        **kwargs: `ResNet` arguments (output_stride=16, dilation="none",
            frozen_batchnorm="statistics", ...).

    Raises:
        CheckpointError: the source is unreadable or does not match the arch; the message lists
            missing, unexpected and mis-shaped keys.

    Example:
    ```python
    backbone = load_pretrained("resnet50-19c8e357.pth", "resnet50", frozen_batchnorm="statistics")
    ```
    """
    from wsss_keras.backbones.resnet.convert import (
        check_torchvision_state,
        load_torchvision_state,
        read_torchvision_state,
    )

    if arch not in ARCHS:
        raise ValueError(f"Unknown ResNet arch {arch!r}; known: {', '.join(ARCHS)}.")
    config = {**ARCHS[arch], **kwargs}
    state, _ = read_torchvision_state(source)
    # Check before building: a mismatched file fails fast, without allocating the model.
    check_torchvision_state(state, config["block_counts"], config.get("base_width", 64), source)
    model = build(arch, **kwargs)
    load_torchvision_state(model, state, source)
    return model


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
