"""VGG-19 features on the current backend: keras.applications' layout, torchvision weights loaded
and checked against a plain-PyTorch VGG-19, and clear errors for files that do not fit."""

import keras
import numpy as np
import pytest
import torch

from wsss_keras.backbones.checkpoint import CheckpointError
from wsss_keras.backbones.vgg import load_torchvision_vgg19, vgg19_features

TORCH_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
RELU_X_1 = (1, 6, 11, 20, 29)  # torchvision features indices of relu1_1 .. relu5_1


def torch_vgg19_features():
    """torchvision's vgg19().features, written out (torchvision is not installed here)."""
    layers, channels = [], 3
    for item in TORCH_CFG:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(channels, item, 3, padding=1), torch.nn.ReLU(inplace=False)]
            channels = item
    return torch.nn.Sequential(*layers)


def save_torch_vgg(path, mutate=None):
    torch.manual_seed(0)
    features = torch_vgg19_features()
    state = {f"features.{key}": value for key, value in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 3)  # the classifier is ignored
    if mutate:
        mutate(state)
    torch.save(state, path)
    return features


def test_width_one_has_keras_applications_layers_and_shapes():
    ours = vgg19_features()
    reference = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    names = [layer.name for layer in ours.layers[1:]]
    assert names == [layer.name for layer in reference.layers[1 : len(names) + 1]] and names[-1] == "block5_conv1"
    for name in names:
        assert [tuple(w.shape) for w in ours.get_layer(name).weights] == [
            tuple(w.shape) for w in reference.get_layer(name).weights
        ]


def test_torchvision_weights_give_torchs_relu_features(tmp_path):
    path = str(tmp_path / "vgg19.pth")
    features = save_torch_vgg(path)
    model = vgg19_features()
    load_torchvision_vgg19(model, path)
    image = np.random.default_rng(0).normal(size=(1, 48, 48, 3)).astype("float32")
    ours = [keras.ops.convert_to_numpy(f) for f in model(image)]
    x, expected = torch.from_numpy(image.transpose(0, 3, 1, 2)), []
    with torch.no_grad():
        for index, layer in enumerate(features[:30]):
            x = layer(x)
            if index in RELU_X_1:
                expected.append(x.numpy().transpose(0, 2, 3, 1))
    assert len(ours) == 5
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_files_that_do_not_fit_are_refused_whole(tmp_path):
    model = vgg19_features()
    before = [w.copy() for w in model.get_weights()]
    wrong = str(tmp_path / "wrong.pth")
    save_torch_vgg(wrong, lambda state: state.__setitem__("features.7.weight", torch.zeros(128, 64, 5, 5)))
    with pytest.raises(CheckpointError, match=r"wrong.pth.*features\.7\.weight \(block2_conv2\) is \(128, 64, 5, 5\), model needs \(128, 128, 3, 3\)"):
        load_torchvision_vgg19(model, wrong)
    missing = str(tmp_path / "missing.pth")
    save_torch_vgg(missing, lambda state: state.pop("features.28.bias"))
    with pytest.raises(CheckpointError, match=r"features\.28\.bias \(block5_conv1\) is missing, model needs \(512,\)"):
        load_torchvision_vgg19(model, missing)
    bias = str(tmp_path / "bias.pth")  # the last tensor checked: nothing before it may be assigned
    save_torch_vgg(bias, lambda state: state.__setitem__("features.28.bias", torch.zeros(7)))
    with pytest.raises(CheckpointError, match=r"bias.pth.*features\.28\.bias \(block5_conv1\) is \(7,\), model needs \(512,\)"):
        load_torchvision_vgg19(model, bias)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    narrow = vgg19_features(0.5)
    with pytest.raises(CheckpointError, match="loss_network_width = 1.0"):
        load_torchvision_vgg19(narrow, wrong)


def test_narrow_network_runs():
    network = vgg19_features(0.25)
    assert [network.get_layer(name).filters for name in ("block1_conv1", "block3_conv2", "block5_conv1")] == [16, 64, 128]
    outputs = network(np.zeros((2, 32, 32, 3), "float32"))
    assert [tuple(f.shape) for f in outputs] == [(2, 32, 32, 16), (2, 16, 16, 32), (2, 8, 8, 64), (2, 4, 4, 128), (2, 2, 2, 128)]


def test_truncated_network_needs_only_its_own_layers(tmp_path):
    path = str(tmp_path / "first_blocks.pth")
    features = save_torch_vgg(path, lambda state: [state.pop(key) for key in list(state) if key.startswith("features.") and int(key.split(".")[1]) > 10])
    model = vgg19_features(last_layer="block3_conv1")
    assert model.layers[-1].name == "block3_conv1"
    load_torchvision_vgg19(model, path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("block3_conv1").kernel), features[10].weight.detach().numpy().transpose(2, 3, 1, 0)
    )
    with pytest.raises(CheckpointError, match=r"features\.19\.weight \(block4_conv1\) is missing"):
        load_torchvision_vgg19(vgg19_features(last_layer="block4_conv1"), path)


def test_last_layer_that_is_not_perceptual_is_appended():
    network = vgg19_features(0.25, last_layer="block2_conv2")  # the narrow test's shapes: no new JAX compiles
    assert [layer.name for layer in network.layers[1:]] == ["block1_conv1", "block1_conv2", "block1_pool", "block2_conv1", "block2_conv2"]
    assert [tuple(f.shape) for f in network(np.zeros((1, 16, 16, 3), "float32"))] == [(1, 16, 16, 16), (1, 8, 8, 32), (1, 8, 8, 32)]
    with pytest.raises(ValueError, match="block6_conv1"):
        vgg19_features(last_layer="block6_conv1")
