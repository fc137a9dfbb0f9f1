"""`wsss quickstart`: the main job on the embedded synthetic dataset."""

import click

from wsss_keras.commands.options import progress_printer


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="wsss-quickstart", help="Run folder (created under the current directory by default).")
def quickstart(out):
    """Generate the synthetic dataset and run the pipeline on it, writing everything to --out."""
    from wsss_keras.pipelines.quickstart import run_quickstart

    _, failed = run_quickstart(out, echo=click.echo, progress=progress_printer("synth"))
    if failed:
        raise click.ClickException(f"the loader failed on backend(s): {', '.join(failed)} (see above).")


def register(cli):
    cli.add_command(quickstart)
