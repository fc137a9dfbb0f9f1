"""`wsss quickstart`: the main job on the embedded synthetic dataset."""

import click

from wsss_keras.commands.options import progress_printer


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="wsss-quickstart", help="Run folder (created under the current directory by default).")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Train for N steps instead of the recipe's 1000 (smoke runs); the recipe's step counts (warm-up, ToCo's loss phases, DOEI's schedule) scale with it, as in `wsss run --steps`.")
def quickstart(out, steps):
    """Generate the synthetic dataset, train ToCo + DOEI on it and score CAMs, pseudo-labels and
    segmentation, writing everything to --out (a few minutes on a 2-core CPU)."""
    from wsss_keras.pipelines.quickstart import run_quickstart

    run_quickstart(out, echo=click.echo, progress=progress_printer("synth"), steps=steps)


def register(cli):
    cli.add_command(quickstart)
