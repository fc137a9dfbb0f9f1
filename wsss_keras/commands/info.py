"""`wsss info`: versions, backend and devices, shipped recipes and the stages of each method."""

import platform
from importlib import metadata

import click

PACKAGES = ("wsss-keras", "keras", "keras-hub", "tensorflow", "jax", "jaxlib", "torch", "numpy", "opencv-python-headless", "onnxruntime", "tf2onnx")


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _devices(keras):
    """Devices of the current backend; keras.distribution does not list them on PyTorch."""
    if keras.backend.backend() == "torch":
        import torch

        return ["cpu:0"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return keras.distribution.list_devices()


@click.command()
def info():
    """Print package versions, the Keras backend of this run and its devices, the shipped
    recipes and the stages `wsss run` runs for each method."""
    import keras

    from wsss_keras.pipelines.run import METHOD_STAGES
    from wsss_keras.recipes import available

    click.echo(f"python                   {platform.python_version()} ({platform.machine()}, {platform.system()})")
    for package in PACKAGES:
        click.echo(f"{package:<24} {_version(package)}")
    click.echo(f"backend                  {keras.backend.backend()}")
    click.echo(f"devices                  {', '.join(_devices(keras))}")
    click.echo(f"recipes                  {', '.join(available())}")
    for method, stages in METHOD_STAGES.items():
        click.echo(f"{'stages (' + method + ')':<24} {', '.join(stages)}")
    click.echo(f"{'stages (any, last)':<24} train_student, with a [student] table (before evaluate)")


def register(cli):
    cli.add_command(info)
