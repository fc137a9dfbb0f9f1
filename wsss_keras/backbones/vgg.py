"""VGG-19's convolutional features, as a frozen perceptual-loss network, with torchvision weights.

SSC's reconstruction loss compares images through VGG-19's relu1_1 .. relu5_1 (spec
methods/ssc.md §2.4). The reference uses torchvision's ImageNet VGG-19 (`vgg19-dcbb9e9d.pth`),
which expects RGB normalised with ImageNet's mean and std; `keras.applications.VGG19`'s weights
are Caffe conversions that expect BGR with the mean subtracted, so the network here has
keras.applications' architecture and layer names and loads torchvision's tensors
(`load_torchvision_vgg19`). `width_multiplier` narrows every conv for CPU recipes, which use a
random, frozen network instead.
"""

import keras
import numpy as np

from wsss_keras.backbones.checkpoint import CheckpointError, read_state_dict

# (block, convs, filters) of VGG-19, keras.applications' names: blockB_convC, blockB_pool.
VGG19_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))
VGG_PERCEPTUAL_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")


def vgg19_layer_names():
    """The conv layer names in order, with torchvision's `features` index of each conv."""
    names, index = [], 0
    for block, convs, _ in VGG19_BLOCKS:
        for conv in range(1, convs + 1):
            names.append((f"block{block}_conv{conv}", index))
            index += 2  # conv, ReLU
        index += 1  # max-pool
    return names


def vgg19_features(width_multiplier=1.0, last_layer="block5_conv1", name="vgg19_features"):
    """VGG-19's convolutional part up to `last_layer`, returning the perceptual layers' ReLU
    outputs (relu1_1, relu2_1, ... up to `last_layer`) as a list.

    Args:
        width_multiplier: scales every conv's filters (1.0: VGG-19's 64 .. 512).
        last_layer: the last conv built, one of the `VGG_PERCEPTUAL_LAYERS` or any conv name.
        name: the model's name.

    Example:
    >>> import numpy as np
    >>> network = vgg19_features(0.125, last_layer="block3_conv1")
    >>> [tuple(f.shape) for f in network(np.zeros((1, 32, 32, 3), "float32"))]
    [(1, 32, 32, 8), (1, 16, 16, 16), (1, 8, 8, 32)]
    """
    known = [conv for conv, _ in vgg19_layer_names()]
    if last_layer not in known:
        raise ValueError(f"last_layer={last_layer!r}: choose a VGG-19 conv, e.g. {VGG_PERCEPTUAL_LAYERS}.")
    inputs = keras.Input((None, None, 3))
    x, outputs = inputs, []
    for block, convs, filters in VGG19_BLOCKS:
        if block > 1:
            x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block - 1}_pool")(x)
        for conv in range(1, convs + 1):
            layer_name = f"block{block}_conv{conv}"
            width = max(1, int(round(filters * width_multiplier)))
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=layer_name)(x)
            if layer_name in VGG_PERCEPTUAL_LAYERS:
                outputs.append(x)
            if layer_name == last_layer:
                return keras.Model(inputs, outputs if layer_name in VGG_PERCEPTUAL_LAYERS else outputs + [x], name=name)


def torchvision_vgg19_weights(state, layer_names):
    """{keras layer name: (HWIO kernel, bias)} from a torchvision VGG-19 state dict, for the
    given layers; raises `CheckpointError` naming every missing key or wrong shape."""
    problems, converted = [], {}
    for layer_name, index in vgg19_layer_names():
        if layer_name not in layer_names:
            continue
        kernel, bias = state.get(f"features.{index}.weight"), state.get(f"features.{index}.bias")
        if kernel is None or bias is None:
            problems.append(f"features.{index}.weight/bias ({layer_name}) missing")
            continue
        converted[layer_name] = (np.transpose(np.asarray(kernel, np.float32), (2, 3, 1, 0)), np.asarray(bias, np.float32))
    return converted, problems


def load_torchvision_vgg19(model, path):
    """Load torchvision's VGG-19 (`vgg19-dcbb9e9d.pth`, a state dict with `features.N.weight`)
    into a `vgg19_features` model, whole or not at all.

    Raises:
        CheckpointError: the file is unreadable, or a key is missing or has another shape than
            the model's layer (e.g. a narrowed model, or a VGG-16 file); the message names the
            file and every offending key.
    """
    state = read_state_dict(path)
    convs = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    converted, problems = torchvision_vgg19_weights(state, set(convs))
    for layer_name, (kernel, bias) in converted.items():
        index = dict(vgg19_layer_names())[layer_name]
        expected = tuple(convs[layer_name].kernel.shape)
        if kernel.shape != expected:
            torch_shape = tuple(np.asarray(state[f"features.{index}.weight"]).shape)
            problems.append(
                f"features.{index}.weight is {torch_shape} (OIHW), the model's {layer_name} wants "
                f"{(expected[3], expected[2], expected[0], expected[1])}"
            )
    if problems:
        raise CheckpointError(
            f"{path}: not a torchvision VGG-19 for this network: " + "; ".join(problems)
            + ". Give torchvision's vgg19-dcbb9e9d.pth to a full-width (loss_network_width = 1.0) network."
        )
    for layer_name, (kernel, bias) in converted.items():
        convs[layer_name].kernel.assign(kernel)
        convs[layer_name].bias.assign(bias)
