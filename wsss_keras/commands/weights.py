"""`wsss weights`: look into checkpoints and convert them to Keras weights files.

Keras is imported only inside `convert`, after the checkpoint was checked against the arch,
so `--backend` still takes effect and `inspect` never needs a backend.
"""

import os

import click

from wsss_keras.backbones import registry
from wsss_keras.commands.options import ErrorReportingGroup


# Its own error reporting too, so the commands behave the same when this group is used alone.
@click.group("weights", cls=ErrorReportingGroup, context_settings={"show_default": True})
def weights():
    """Inspect checkpoints and convert them to Keras `.weights.h5` files (local files only)."""


@weights.command("convert")
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option(
    "--arch",
    required=True,
    type=click.Choice(registry.known_archs()),
    help="Architecture to build; the checkpoint must match it exactly (`wsss weights inspect SRC` guesses it).",
)
@click.option("--force", is_flag=True, default=False, help="Overwrite DST if it exists.")
def convert(src, dst, arch, force):
    """Load SRC strictly into ARCH and save its weights to DST (must end in .weights.h5).

    SRC is a torchvision/timm state dict (.pth, .pt, .bin, .safetensors, .npz) or a keras-hub
    preset folder. Any missing, unexpected or mis-shaped tensor stops the conversion.
    """
    if not dst.endswith(".weights.h5"):
        raise click.BadParameter(
            f"{dst!r} must end in .weights.h5 (Keras' weights-only format), e.g. {_weights_name(dst)}.",
            param_hint="DST",
        )
    if os.path.exists(dst) and not force:
        raise click.BadParameter(f"{dst!r} exists; pass --force to overwrite it.", param_hint="DST")
    model = registry.load_pretrained(src, arch)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    model.save_weights(dst, overwrite=True)
    parameters = sum(int(_size(variable.shape)) for variable in model.weights)
    click.echo(f"{arch}: {len(model.weights)} tensors, {parameters:,} parameters from {src} -> {dst}")


@weights.command("inspect")
@click.argument("src", type=click.Path(exists=True))
@click.option("--all", "show_all", is_flag=True, default=False, help="List every tensor instead of the first --limit.")
@click.option("--limit", type=click.IntRange(min=0), default=20, help="How many tensors to list without --all.")
def inspect(src, show_all, limit):
    """Show a checkpoint's format, tensors, parameter count and the arch it most likely is."""
    fmt, tensors = registry.read_tensor_shapes(src)
    candidates, layout = registry.guess_arch(tensors, source=src)
    parameters = sum(_size(shape) for shape, _ in tensors.values())
    click.echo(f"source: {src}")
    click.echo(f"format: {fmt}")
    click.echo(f"tensors: {len(tensors)}")
    click.echo(f"parameters: {parameters:,}")
    click.echo(f"layout: {layout}")
    click.echo("arch: " + (" or ".join(candidates) if candidates else "unknown (none of: " + ", ".join(registry.known_archs()) + ")"))
    names = sorted(tensors)
    shown = names if show_all else names[:limit]
    click.echo(f"keys ({len(shown)} of {len(names)}" + ("" if len(shown) == len(names) else "; --all lists every key") + "):")
    width = max((len(name) for name in shown), default=0)
    for name in shown:
        shape, dtype = tensors[name]
        click.echo(f"  {name:<{width}}  {str(tuple(shape)):<22} {dtype}")


def _size(shape):
    size = 1
    for dim in shape:
        size *= int(dim)
    return size


def _weights_name(path):
    root = path
    for suffix in (".weights.h5", ".h5", ".keras", ".pth", ".pt", ".safetensors"):
        if root.endswith(suffix):
            root = root[: -len(suffix)]
            break
    return root + ".weights.h5"


def register(cli):
    """Add the `weights` group to the `wsss` group."""
    cli.add_command(weights)
