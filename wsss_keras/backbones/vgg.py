"""VGG-19's convolutional features, as a frozen perceptual-loss network, with torchvision weights.

SSC's reconstruction loss compares images through VGG-19's relu1_1 .. relu5_1 (spec
methods/ssc.md §2.4; torchvision's `vgg19().features` indices 1, 6, 11, 20, 29). The reference
uses torchvision's ImageNet VGG-19 (`vgg19-dcbb9e9d.pth`), which expects RGB normalised with
ImageNet's mean and std. `keras.applications.VGG19`'s weights are Caffe conversions that expect
BGR input with the mean subtracted, so they would give other features. The network here
therefore has keras.applications' architecture and layer names (`block1_conv1` .. `block5_pool`),
and `load_torchvision_vgg19` loads torchvision's tensors into it. `width_multiplier` narrows every
conv for CPU recipes, which use a random, frozen network instead.

Only Keras layers are used, so the network runs on TensorFlow, JAX and PyTorch.
"""

import keras
import numpy as np

from wsss_keras.backbones.checkpoint import CheckpointError, read_state_dict

# (block, convs, filters) of VGG-19, keras.applications' names: blockB_convC, blockB_pool.
VGG19_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))
VGG_PERCEPTUAL_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")


def vgg19_layer_names():
    """The conv layer names in order, each with its index in torchvision's `vgg19().features`.

    Example:
    ```python
    dict(vgg19_layer_names())["block5_conv1"]  # 28: features.28 is conv5_1, features.29 relu5_1
    ```
    """
    names, index = [], 0
    for block, convs, _ in VGG19_BLOCKS:
        for conv in range(1, convs + 1):
            names.append((f"block{block}_conv{conv}", index))
            index += 2  # conv, ReLU
        index += 1  # max-pool
    return names


def vgg19_features(width_multiplier=1.0, last_layer="block5_conv1", name="vgg19_features"):
    """VGG-19's convolutional part up to `last_layer`, returning the perceptual layers' ReLU
    outputs (relu1_1, relu2_1, ... that are at or before `last_layer`) as a list.

    The layers are those of `keras.applications.VGG19(include_top=False)`: 3x3 convs with
    "same" padding and ReLU, 2x2 max-pools of stride 2, with the same names and, at width 1.0,
    the same weight shapes. The input is NHWC with 3 channels and any size.

    Args:
        width_multiplier: scales every conv's filters to `max(1, round(filters * m))`; 1.0 is
            VGG-19 (64 .. 512 filters). Narrow networks are for CPU recipes, with random weights.
        last_layer: the last conv built; one of `VGG_PERCEPTUAL_LAYERS`, or any VGG-19 conv
            name, whose activation is then appended to the outputs (a functional model keeps
            only the layers its outputs depend on).
        name: the model's name.

    Returns:
        A functional `keras.Model`, input (None, None, None, 3), outputs a list of NHWC maps.

    Example:
    ```python
    network = vgg19_features(0.125, last_layer="block3_conv1")
    relu1_1, relu2_1, relu3_1 = network(np.zeros((1, 32, 32, 3), "float32"))
    # shapes (1, 32, 32, 8), (1, 16, 16, 16), (1, 8, 8, 32)
    ```
    """
    known = [conv for conv, _ in vgg19_layer_names()]
    if last_layer not in known:
        raise ValueError(f"last_layer={last_layer!r}: choose a VGG-19 conv, e.g. one of {VGG_PERCEPTUAL_LAYERS}.")
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
                if layer_name not in VGG_PERCEPTUAL_LAYERS:
                    outputs.append(x)
                return keras.Model(inputs, outputs, name=name)


def convert_torchvision_vgg19(state, needed):
    """The conversion: pick torchvision's `features.{i}.weight/bias` for the given Keras convs
    and turn them into Keras kernels (OIHW -> HWIO) and biases, checking every shape.

    Args:
        state: {name: numpy array}, a torchvision VGG state dict (`classifier.*` is ignored).
        needed: {keras conv name: (kernel shape HWIO, bias shape)} of the model's convs.

    Returns:
        (arrays, problems): arrays is {(keras conv name, "kernel" | "bias"): float32 array} for
        the tensors that fit; problems lists, for each one missing or of another shape, its key
        and the shape found vs needed (in torchvision's OIHW layout).

    Example:
    ```python
    arrays, problems = convert_torchvision_vgg19(state, {"block1_conv1": ((3, 3, 3, 64), (64,))})
    arrays["block1_conv1", "kernel"].shape  # (3, 3, 3, 64), from features.0.weight (64, 3, 3, 3)
    ```
    """
    arrays, problems = {}, []
    for layer_name, index in vgg19_layer_names():
        if layer_name not in needed:
            continue
        kernel_shape, bias_shape = needed[layer_name]
        torch_shapes = {"kernel": tuple(kernel_shape[i] for i in (3, 2, 0, 1)), "bias": tuple(bias_shape)}
        for attribute, part in (("kernel", "weight"), ("bias", "bias")):
            key, need = f"features.{index}.{part}", torch_shapes[attribute]
            if key not in state:
                problems.append(f"{key} ({layer_name}) is missing, model needs {need}")
                continue
            value = np.asarray(state[key], np.float32)
            if value.shape != need:
                problems.append(f"{key} ({layer_name}) is {value.shape}, model needs {need}")
                continue
            arrays[layer_name, attribute] = np.transpose(value, (2, 3, 1, 0)) if attribute == "kernel" else value
    return arrays, problems


def load_torchvision_vgg19(model, path):
    """Load torchvision's VGG-19 into a `vgg19_features` model, whole or not at all.

    Every conv of the model (only those up to its `last_layer`) needs its `features.{i}.weight`
    and `features.{i}.bias`; all are checked before any weight is assigned.

    Args:
        model: a model from `vgg19_features(1.0, ...)`.
        path: a local torchvision state dict (`vgg19-dcbb9e9d.pth`, or .safetensors / .npz with
            the same keys), read with `checkpoint.read_state_dict`.

    Raises:
        CheckpointError: the file is unreadable, or a key is missing or has another shape than
            the model's layer (e.g. a narrowed model, or a VGG-16 file); the message names the
            file and every offending key with its found and needed shapes.

    Example:
    ```python
    network = vgg19_features()
    load_torchvision_vgg19(network, "weights/vgg19-dcbb9e9d.pth")
    network.trainable = False
    ```
    """
    state = read_state_dict(path)
    convs = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    needed = {name: (tuple(conv.kernel.shape), tuple(conv.bias.shape)) for name, conv in convs.items()}
    arrays, problems = convert_torchvision_vgg19(state, needed)
    if problems:
        shown = problems[:10] + ([f"... {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise CheckpointError(
            f"{path}: not a torchvision VGG-19 for this network: " + "; ".join(shown)
            + ". Give torchvision's vgg19-dcbb9e9d.pth to a full-width (loss_network_width = 1.0) network."
        )
    for (layer_name, attribute), value in arrays.items():
        getattr(convs[layer_name], attribute).assign(value)
