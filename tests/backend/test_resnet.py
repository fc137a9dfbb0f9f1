"""ResNet backbone: parity with a torchvision-structured torch model and keras-hub, hooks,
frozen BatchNorm, .keras round trip, strict checkpoint errors. Runs once per Keras backend.

torchvision is not installed, so `TorchvisionResNet` below rebuilds its ResNet in plain torch.nn
with exactly torchvision's module names and structure (stride on the 3x3 conv,
`replace_stride_with_dilation`), plus IRN's `strides` variant (layer4 stride 1, no dilation).
Models are tiny (base width 8, few blocks) and inputs have odd sizes, so padding is exercised.
"""

import os

import keras
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from keras import ops

from wsss_keras.backbones import registry
from wsss_keras.backbones.checkpoint import CheckpointError
from wsss_keras.backbones.resnet import ARCHS, BottleneckHooks, ResNet, load_pretrained
from wsss_keras.backbones.resnet.convert import torchvision_shapes, variable_map
from wsss_keras.commands import weights as weights_command

TINY = {"block_counts": (1, 2, 2, 2), "base_width": 8}
TOLERANCE = 1e-4


class TorchBottleneck(torch.nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv3 = torch.nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(planes * 4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TorchvisionResNet(torch.nn.Module):
    """torchvision.models.resnet.ResNet with Bottleneck, names kept; `layer_strides` is IRN's knob."""

    def __init__(self, layers, width=64, layer_strides=(1, 2, 2, 2), replace_stride_with_dilation=(False, False, False)):
        super().__init__()
        self.inplanes, self.dilation = width, 1
        self.conv1 = torch.nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(3, stride=2, padding=1)
        dilate = (False,) + tuple(replace_stride_with_dilation)
        for index in range(4):
            layer = self._make_layer(width * 2**index, layers[index], layer_strides[index], dilate[index])
            setattr(self, f"layer{index + 1}", layer)
        self.fc = torch.nn.Linear(width * 32, 10)

    def _make_layer(self, planes, blocks, stride, dilate):
        downsample, previous_dilation = None, self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * 4:
            downsample = torch.nn.Sequential(
                torch.nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), torch.nn.BatchNorm2d(planes * 4)
            )
        layers = [TorchBottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * 4
        layers += [TorchBottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return torch.nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = {"stem": x}
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            taps[f"stage{index}"] = x
        return taps


def _random_torch_resnet(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = TorchvisionResNet(**kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics and affine
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _images(seed=0, height=67, width=61):
    return np.random.default_rng(seed).normal(size=(2, height, width, 3)).astype("float32")


def _torch_taps(model, images):
    with torch.no_grad():
        taps = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    return {name: value.numpy().transpose(0, 2, 3, 1) for name, value in taps.items()}


def _numpy(value):
    return ops.convert_to_numpy(value)


@pytest.mark.parametrize(
    "output_stride, dilation, torch_kwargs",
    [
        (32, "none", {}),
        (16, "none", {"layer_strides": (1, 2, 2, 1)}),  # IRN / AMR / SSC: layer4 stride 1, not dilated
        (16, "torchvision", {"replace_stride_with_dilation": (False, False, True)}),
        (8, "torchvision", {"replace_stride_with_dilation": (False, True, True)}),
    ],
)
def test_torchvision_state_dict_parity(tmp_path, output_stride, dilation, torch_kwargs):
    reference = _random_torch_resnet(layers=TINY["block_counts"], width=TINY["base_width"], **torch_kwargs)
    path = str(tmp_path / "resnet.pth")
    torch.save(reference.state_dict(), path)  # with fc.* and num_batches_tracked, like the real files

    model = load_pretrained(path, "resnet50", output_stride=output_stride, dilation=dilation, **TINY)
    images = _images()
    expected = _torch_taps(reference, images)
    got = {name: _numpy(value) for name, value in model(images, return_stages=True).items()}
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        difference = np.abs(got[name] - expected[name]).max()
        assert difference <= TOLERANCE, f"{name}: max abs diff {difference}"
    assert got["stage4"].shape[1:3] == (-(-67 // output_stride), -(-61 // output_stride))
    # the plain call returns the last stage
    np.testing.assert_allclose(_numpy(model(images)), got["stage4"], atol=1e-6)


def test_safetensors_state_dict_loads_like_pth(tmp_path):
    from safetensors.numpy import save_file

    reference = _random_torch_resnet(seed=1, layers=TINY["block_counts"], width=TINY["base_width"])
    state = {name: value.numpy() for name, value in reference.state_dict().items() if value.dtype == torch.float32}
    path = str(tmp_path / "resnet.safetensors")
    save_file(state, path)
    model = registry.load_pretrained(path, "resnet50", output_stride=32, **TINY)
    images = _images(1, 64, 64)
    difference = np.abs(_numpy(model(images)) - _torch_taps(reference, images)["stage4"]).max()
    assert difference <= TOLERANCE


def test_keras_hub_preset_parity(tmp_path):
    import keras_hub

    hub = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
    )
    rng = np.random.default_rng(2)
    for variable in hub.weights:
        if "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))
        elif "moving_mean" in variable.path or "beta" in variable.path:
            variable.assign(rng.uniform(-0.3, 0.3, variable.shape).astype("float32"))
        elif "gamma" in variable.path:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    hub.save_to_preset(str(tmp_path / "preset"))

    model = load_pretrained(str(tmp_path / "preset"), "resnet50", block_counts=(1, 1, 1, 1), output_stride=32)
    images = _images(2, 64, 64)
    difference = np.abs(_numpy(model(images)) - _numpy(hub(images))).max()
    assert difference <= TOLERANCE, difference
    result = CliRunner().invoke(weights_command.weights, ["inspect", str(tmp_path / "preset")])
    assert "format: keras_hub_preset (ResNetBackbone)" in result.output
    assert f"tensors: {len(hub.weights)}" in result.output and "blocks 1-1-1-1" in result.output


def test_keras_hub_vd_and_v2_presets_are_refused(tmp_path):
    # The refusal comes from the preset's config.json, before keras-hub builds anything.
    import json

    for name, settings, message in (
        ("vd", {"block_type": "bottleneck_block_vd", "input_conv_kernel_sizes": [3, 3, 3]}, "bottleneck_block_vd"),
        ("v2", {"block_type": "bottleneck_block", "use_pre_activation": True}, "use_pre_activation=True"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"class_name": "ResNetBackbone", "config": settings}))
        with pytest.raises(CheckpointError, match=message):
            load_pretrained(str(folder), "resnet50", block_counts=(1, 1, 1, 1))


# --- hooks -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(3)
    model = ResNet(output_stride=16, **TINY)
    # random BN statistics so that the manual computations below are not trivial
    rng = np.random.default_rng(3)
    for key, (variable, _) in variable_map(model).items():
        if key.endswith("running_var"):
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))
        elif key.endswith(("running_mean", ".bias")):
            variable.assign(rng.uniform(-0.3, 0.3, variable.shape).astype("float32"))
    return model


def test_no_hooks_is_identical_to_the_plain_model(tiny_model):
    images = _images(4, 64, 64)
    plain = _numpy(tiny_model(images))
    identity = _numpy(tiny_model(images, hooks={(None, None, "output"): lambda x, ctx: x}))
    empty = _numpy(tiny_model(images, hooks={}))
    np.testing.assert_array_equal(plain, identity)
    np.testing.assert_array_equal(plain, empty)


def test_zero_residual_hook_leaves_the_shortcut(tiny_model):
    # Zeroing the residual branch of every layer4 block makes layer4 = ReLU(downsample(stage3)).
    images = _images(5, 64, 64)
    stage3 = tiny_model(images, return_stages=True)["stage3"]
    first = tiny_model.stages[3][0]
    manual = ops.relu(first.downsample_bn(first.downsample_conv(stage3), training=False))
    hooked = tiny_model(images, hooks={(4, None, "residual"): lambda x, ctx: x * 0.0})
    np.testing.assert_allclose(_numpy(hooked), _numpy(manual), atol=1e-5)
    assert np.abs(_numpy(hooked) - _numpy(tiny_model(images))).max() > 1e-3  # the hook did act


def test_output_hook_adds_a_constant_and_reaches_only_later_blocks(tiny_model):
    images = _images(6, 64, 64)
    plain = tiny_model(images, return_stages=True)
    last = len(tiny_model.stages[3]) - 1
    hooked = tiny_model(images, return_stages=True, hooks=BottleneckHooks({(4, last, "output"): lambda x, ctx: x + 2.5}))
    np.testing.assert_allclose(_numpy(hooked["stage4"]), _numpy(plain["stage4"]) + 2.5, atol=1e-5)
    np.testing.assert_array_equal(_numpy(hooked["stage3"]), _numpy(plain["stage3"]))


def test_hook_context_and_wildcards(tiny_model):
    seen = []

    def record(x, ctx):
        seen.append((ctx.stage, ctx.block, ctx.point, tuple(ctx.inputs.shape), tuple(ctx.shortcut.shape), ctx.training))
        return x

    tiny_model(_images(7, 64, 64), training=False, hooks={(None, None, "residual"): record, (2, 1, "output"): record})
    residual_sites = [entry[:2] for entry in seen if entry[2] == "residual"]
    expected_sites = [(s, b) for s, count in enumerate(TINY["block_counts"], start=1) for b in range(count)]
    assert residual_sites == expected_sites
    assert [entry[:3] for entry in seen if entry[2] == "output"] == [(2, 1, "output")]
    stage2_block1 = next(entry for entry in seen if entry[:3] == (2, 1, "residual"))
    assert stage2_block1[3] == stage2_block1[4] == (2, 8, 8, 64)  # identity shortcut of a stage-2 block
    assert all(entry[5] is False for entry in seen)


def test_bad_hook_keys_are_refused(tiny_model):
    with pytest.raises(ValueError, match="point must be one of"):
        tiny_model(_images(8, 32, 32), hooks={(4, 0, "after"): lambda x, ctx: x})
    with pytest.raises(ValueError, match="stage 4 has blocks 0..1"):
        tiny_model(_images(8, 32, 32), hooks={(4, 5, "output"): lambda x, ctx: x})


# --- BatchNorm freezing, serialisation ---------------------------------------------------------


def _moving_statistics(model):
    return [_numpy(v).copy() for v in model.non_trainable_weights if "moving" in v.path]


def test_frozen_batchnorm_statistics_ignore_training():
    keras.utils.set_random_seed(9)
    frozen = ResNet(output_stride=16, frozen_batchnorm="statistics", **TINY)
    images = _images(9, 32, 32) * 3.0 + 1.0
    before = _moving_statistics(frozen)
    trained = _numpy(frozen(images, training=True))
    after = _moving_statistics(frozen)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    np.testing.assert_allclose(trained, _numpy(frozen(images, training=False)), atol=1e-6)
    # gamma/beta and the conv kernels still train; only the statistics are fixed
    affine_and_kernels = [key for key in variable_map(frozen) if not key.endswith(("running_mean", "running_var"))]
    assert len(frozen.trainable_weights) == len(affine_and_kernels)

    # Control: ordinary BatchNorm does move its statistics in training.
    keras.utils.set_random_seed(9)
    plain = ResNet(output_stride=16, **TINY)
    before = _moving_statistics(plain)
    plain(images, training=True)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _moving_statistics(plain)))


def test_frozen_batchnorm_all_and_frozen_stem():
    model = ResNet(output_stride=16, frozen_batchnorm="all", freeze_stem=True, **TINY)
    trainable = {v.path for v in model.trainable_weights}
    assert not any("gamma" in path or "beta" in path for path in trainable)
    assert not any("stem_conv" in path for path in trainable)
    convs = sum(1 for key in variable_map(model) if key.endswith("weight") and "bn" not in key and "downsample.1" not in key)
    assert len(model.trainable_weights) == convs - 1  # every conv kernel but the stem's


def test_keras_file_round_trip(tmp_path, tiny_model):
    path = str(tmp_path / "resnet.keras")
    tiny_model.save(path)
    loaded = keras.models.load_model(path)
    images = _images(10, 48, 40)
    np.testing.assert_allclose(_numpy(loaded(images)), _numpy(tiny_model(images)), atol=1e-6)
    assert loaded.get_config()["block_counts"] == list(TINY["block_counts"])
    assert loaded.get_config()["output_stride"] == 16


def test_layout_shapes_match_the_model():
    model = ResNet(output_stride=32, **TINY)
    from wsss_keras.backbones.resnet.convert import _torch_shape

    mapped = {key: _torch_shape(variable.shape, key) for key, (variable, _) in variable_map(model).items()}
    assert mapped == torchvision_shapes(TINY["block_counts"], TINY["base_width"])
    assert len(mapped) == len(model.weights)
    assert ARCHS["resnet101"]["block_counts"] == (3, 4, 23, 3)


# --- strict loading ---------------------------------------------------------------------------


def _save_tiny(tmp_path, name, layers, width=4):
    path = str(tmp_path / name)
    torch.save(_random_torch_resnet(layers=layers, width=width).state_dict(), path)
    return path


def test_resnet101_file_into_resnet50_names_the_extra_blocks(tmp_path):
    path = _save_tiny(tmp_path, "r101.pth", ARCHS["resnet101"]["block_counts"])
    with pytest.raises(CheckpointError) as error:
        load_pretrained(path, "resnet50", base_width=4)
    message = str(error.value)
    # 17 extra layer3 blocks x (3 convs + 3 BN x 4 tensors)
    assert "unexpected keys (255)" in message and "layer3.10.bn1.bias" in message and "r101.pth" in message
    assert "missing" not in message and "wrong shapes" not in message


def test_missing_and_misshaped_keys_are_named(tmp_path):
    state = _random_torch_resnet(layers=TINY["block_counts"], width=TINY["base_width"]).state_dict()
    del state["layer2.1.conv2.weight"]
    state["layer3.0.bn2.running_var"] = torch.ones(7)
    path = str(tmp_path / "broken.pth")
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_pretrained(path, "resnet50", **TINY)
    message = str(error.value)
    assert "missing keys (1): layer2.1.conv2.weight" in message
    assert "layer3.0.bn2.running_var is (7,), model needs (32,)" in message


def test_failed_load_changes_nothing(tmp_path):
    from wsss_keras.backbones.resnet.convert import load_weights

    model = ResNet(output_stride=32, **TINY)
    before = [_numpy(v).copy() for v in model.weights]
    state = _random_torch_resnet(layers=TINY["block_counts"], width=TINY["base_width"]).state_dict()
    state["layer4.1.conv3.weight"] = torch.zeros(1)
    path = str(tmp_path / "bad.pth")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="layer4.1.conv3.weight"):
        load_weights(model, path)
    assert all(np.array_equal(a, _numpy(v)) for a, v in zip(before, model.weights))


def test_cli_convert_writes_loadable_weights_and_refuses_mismatches(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(11)
    shapes = torchvision_shapes(ARCHS["resnet50"]["block_counts"])
    state = {name: rng.normal(size=shape).astype("float32") * 0.01 for name, shape in shapes.items()}
    source = str(tmp_path / "resnet50.safetensors")
    save_file(state, source)
    runner = CliRunner()
    destination = str(tmp_path / "out" / "resnet50.weights.h5")
    result = runner.invoke(weights_command.weights, ["convert", source, destination, "--arch", "resnet50"])
    assert result.exit_code == 0, result.output
    model = ResNet(**ARCHS["resnet50"])
    model.load_weights(destination)
    np.testing.assert_allclose(_numpy(model.blocks[-1].conv2.kernel), state["layer4.2.conv2.weight"].transpose(2, 3, 1, 0))
    result = runner.invoke(weights_command.weights, ["inspect", destination])
    assert "format: keras_weights" in result.output and f"tensors: {len(model.weights)}" in result.output

    # The same file is not a resnet101: the missing blocks are named, nothing is written.
    refused = str(tmp_path / "r101.weights.h5")
    result = runner.invoke(weights_command.weights, ["convert", source, refused, "--arch", "resnet101"])
    assert result.exit_code != 0
    assert "missing keys" in result.output and "layer3.10.bn1.bias" in result.output
    assert not os.path.exists(refused)
