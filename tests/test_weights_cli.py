"""`wsss weights` and the backbone registry, the parts that need no Keras backend.

Checkpoints are written with safetensors (numpy only). The conversions that build a model run in
tests/backend/test_resnet.py; here `convert` is exercised up to its argument and strict shape
checks, which run before Keras is imported.
"""

import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from wsss_keras.backbones import registry
from wsss_keras.backbones.resnet import ARCHS
from wsss_keras.backbones.resnet.convert import torchvision_shapes
from wsss_keras.commands import weights as weights_command


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    # float16 zeros: real resnet50 shapes at half the disk size; inspect only reads shapes.
    state = {name: np.zeros(shape, "float16") for name, shape in torchvision_shapes((3, 4, 6, 3)).items()}
    state["fc.weight"] = np.zeros((1000, 2048), "float16")
    state["fc.bias"] = np.zeros((1000,), "float16")
    path = str(tmp_path_factory.mktemp("ckpt") / "resnet50.safetensors")
    save_file(state, path)
    return path


def _cli():
    @click.group()
    def cli():
        pass

    weights_command.register(cli)
    return cli


def test_register_adds_the_weights_group():
    cli = _cli()
    assert "weights" in cli.commands
    result = CliRunner().invoke(cli, ["weights", "--help"])
    assert result.exit_code == 0 and "convert" in result.output and "inspect" in result.output
    result = CliRunner().invoke(cli, ["weights", "convert", "--help"])
    assert "--arch" in result.output and "resnet101" in result.output


def test_inspect_reports_format_counts_and_arch(resnet50_file):
    result = CliRunner().invoke(_cli(), ["weights", "inspect", resnet50_file])
    assert result.exit_code == 0, result.output
    expected_parameters = sum(int(np.prod(s)) for s in torchvision_shapes((3, 4, 6, 3)).values()) + 1000 * 2048 + 1000
    assert "format: safetensors" in result.output
    assert f"tensors: {len(torchvision_shapes((3, 4, 6, 3))) + 2}" in result.output
    assert f"parameters: {expected_parameters:,}" in result.output
    assert "arch: resnet50" in result.output
    assert "blocks 3-4-6-3, width 64" in result.output
    listed = [line for line in result.output.splitlines() if line.startswith("  ")]
    assert len(listed) == 20 and "--all lists every key" in result.output
    assert "conv1.weight" in result.output and "(64, 3, 7, 7)" in result.output

    result = CliRunner().invoke(_cli(), ["weights", "inspect", resnet50_file, "--all"])
    listed = [line for line in result.output.splitlines() if line.startswith("  ")]
    assert len(listed) == len(torchvision_shapes((3, 4, 6, 3))) + 2


def test_inspect_unknown_layout(tmp_path):
    path = str(tmp_path / "other.npz")
    np.savez(path, **{"encoder.weight": np.zeros((3, 4), "float32")})
    result = CliRunner().invoke(_cli(), ["weights", "inspect", path])
    assert result.exit_code == 0, result.output
    assert "format: npz" in result.output and "arch: unknown" in result.output and "parameters: 12" in result.output


def test_guess_arch_for_every_family():
    resnet101 = torchvision_shapes(ARCHS["resnet101"]["block_counts"])
    assert registry.guess_arch({f"module.{k}": v for k, v in resnet101.items()})[0] == ["resnet101"]
    slim = registry.guess_arch(torchvision_shapes((3, 4, 6, 3), base_width=8))
    assert slim[0] == [] and "width 8" in slim[1]
    vit = {"patch_embed.proj.weight": (384, 3, 16, 16), **{f"blocks.{i}.attn.qkv.weight": (1152, 384) for i in range(12)}}
    assert registry.guess_arch(vit)[0] == ["vit_s16", "deit_s16", "dino_vits16"]
    distilled = registry.guess_arch({**vit, "dist_token": (1, 1, 384)})
    assert distilled[0] == ["deit_s16_distilled"] and "distillation token" in distilled[1]
    clip = {"visual.conv1.weight": (768, 3, 16, 16), "visual.transformer.resblocks.0.attn.in_proj_weight": (2304, 768)}
    assert registry.guess_arch(clip)[0] == ["clip_vit_b16"]


def test_registry_maps_archs_to_families_lazily():
    assert registry.ARCH_FAMILIES["resnet101"] == "wsss_keras.backbones.resnet"
    assert registry.ARCH_FAMILIES["dino_vitb16"] == "wsss_keras.backbones.vit"
    assert registry.ARCH_FAMILIES["clip_vit_b16"] == "wsss_keras.backbones.clip"
    assert set(registry.known_archs()) == {
        "resnet50", "resnet101", "vit_b16", "vit_s16", "deit_s16", "deit_b16", "deit_s16_distilled",
        "deit_b16_distilled", "dino_vits16", "dino_vitb16",
        "clip_vit_b16", "clip_vit_b32", "clip_vit_l14",
    }
    assert registry.family("resnet50").ARCHS["resnet50"]["block_counts"] == (3, 4, 6, 3)
    with pytest.raises(registry.UnknownArchError, match="known: clip_vit_b16, clip_vit_b32, clip_vit_l14, deit_b16, deit_b16_distilled"):
        registry.family("resnet18")


def test_convert_refuses_a_wrong_destination_name(resnet50_file, tmp_path):
    result = CliRunner().invoke(
        _cli(), ["weights", "convert", resnet50_file, str(tmp_path / "out.h5"), "--arch", "resnet50"]
    )
    assert result.exit_code == 2
    assert "must end in .weights.h5" in result.output and "out.weights.h5" in result.output


def test_convert_names_the_offending_keys_before_building(tmp_path):
    state = {name: np.zeros(shape, "float16") for name, shape in torchvision_shapes((3, 4, 6, 3)).items()}
    del state["layer2.3.bn2.running_var"]
    state["layer4.0.conv2.weight"] = np.zeros((512, 512, 1, 1), "float16")
    state["layer5.0.conv1.weight"] = np.zeros((1,), "float16")
    source = str(tmp_path / "broken.safetensors")
    save_file(state, source)
    result = CliRunner().invoke(
        _cli(), ["weights", "convert", source, str(tmp_path / "x.weights.h5"), "--arch", "resnet50"]
    )
    assert result.exit_code == 1
    assert "broken.safetensors" in result.output
    assert "missing keys (1): layer2.3.bn2.running_var" in result.output
    assert "unexpected keys (1): layer5.0.conv1.weight" in result.output
    assert "layer4.0.conv2.weight is (512, 512, 1, 1), model needs (512, 512, 3, 3)" in result.output
    assert "Traceback" not in result.output

    # The check runs on shapes alone, before Keras is imported (so --backend still applies).
    probe = (
        "import sys; from click.testing import CliRunner; from wsss_keras.commands.weights import weights; "
        f"r = CliRunner().invoke(weights, ['convert', {source!r}, {str(tmp_path / 'y.weights.h5')!r}, '--arch', 'resnet50']); "
        "print(r.exit_code, 'keras' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert completed.stdout.split()[-2:] == ["1", "False"], completed.stdout + completed.stderr


def test_registry_and_families_name_the_same_archs():
    import importlib

    from wsss_keras.backbones.registry import ARCH_FAMILIES

    families = {}
    for arch, module in ARCH_FAMILIES.items():
        families.setdefault(module, set()).add(arch)
    for module, archs in families.items():
        assert archs == set(importlib.import_module(module).ARCHS), module


def _write_damaged_checkpoint(kind, folder):
    """A checkpoint file damaged the ways downloads and hand-made files are; returns its path."""
    import pickle

    import torch

    def cut_in_half(path):
        with open(path, "rb") as handle:
            data = handle.read()
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])

    suffix = ".npz" if kind.endswith("npz") else ".pt"
    path = str(folder / f"{kind}{suffix}")
    if kind in ("empty_npz", "empty_torch"):
        open(path, "wb").close()
    elif kind in ("text_npz", "text_torch"):
        with open(path, "w") as handle:
            handle.write("<html>404 Not Found</html>\n")
    elif kind == "truncated_npz":
        np.savez(path, weight=np.zeros((64, 64), "float32"))
        cut_in_half(path)
    elif kind == "object_npz":
        np.savez(path, weight=np.zeros((2,), "float32"), meta=np.array([{"epoch": 3}], dtype=object))
    elif kind == "truncated_torch":
        torch.save({"weight": torch.zeros(64, 64)}, path)
        cut_in_half(path)
    elif kind == "namespace_torch":
        import argparse

        torch.save({"model": {"weight": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    elif kind == "plain_pickle_torch":
        with open(path, "wb") as handle:
            pickle.dump({"weight": [0.0, 1.0]}, handle, protocol=4)
    return path


DAMAGED_CHECKPOINTS = {
    "empty_npz": "the file is empty (0 bytes), not a NumPy .npz archive",
    "text_npz": "not a NumPy .npz archive",
    "truncated_npz": "a damaged or truncated NumPy .npz archive",
    "object_npz": "holds pickled Python objects",
    "empty_torch": "the file is empty (0 bytes), not a PyTorch checkpoint",
    "text_torch": "not a PyTorch checkpoint",
    "truncated_torch": "a damaged or truncated zip archive",
    "namespace_torch": "not a plain PyTorch state dict: it holds Python objects (argparse.Namespace)",
    "plain_pickle_torch": "not a plain PyTorch state dict",
}


@pytest.mark.parametrize("kind", sorted(DAMAGED_CHECKPOINTS))
@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_damaged_checkpoint_is_one_line_naming_the_file(kind, command, tmp_path):
    from wsss_keras.cli import cli

    path = _write_damaged_checkpoint(kind, tmp_path)
    arguments = [path] if command == "inspect" else [path, str(tmp_path / "out.weights.h5"), "--arch", "resnet50"]
    result = CliRunner().invoke(cli, ["weights", command, *arguments])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {path}: "), result.output
    assert DAMAGED_CHECKPOINTS[kind] in lines[0], result.output
    assert not (tmp_path / "out.weights.h5").exists()


def test_inspect_reports_a_torch_files_half_precision_dtypes_as_stored(tmp_path):
    import torch

    path = str(tmp_path / "half.pt")
    torch.save({"a.weight": torch.zeros(2, 3, dtype=torch.float16), "b.bias": torch.zeros(4, dtype=torch.bfloat16),
                "c.weight": torch.zeros(1, dtype=torch.float32)}, path)
    fmt, tensors = registry.read_tensor_shapes(path)
    assert fmt == "torch"
    assert tensors == {"a.weight": ((2, 3), "float16"), "b.bias": ((4,), "bfloat16"), "c.weight": ((1,), "float32")}
    result = CliRunner().invoke(_cli(), ["weights", "inspect", path])
    assert result.exit_code == 0, result.output
    assert "bfloat16" in result.output and "float16" in result.output
