"""`wsss report`: a run's results as a static HTML page with pictures."""

import click


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The dataset the run used [default: the one its metrics.json records].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for index.html and its pictures [default: RUN_DIR/report].")
@click.option("--samples", type=click.IntRange(min=0), default=6, help="Sample images per split.")
def report(run_dir, data_dir, out_dir, samples):
    """Write RUN_DIR/report/index.html: sample images with their CAMs, pseudo-labels, predictions
    and ground truth, per-class IoU bars and loss curves. RUN_DIR is the --out folder of
    `wsss run` or `wsss quickstart`; the page opens from disk (no server needed)."""
    from wsss_keras.pipelines.report import build_report

    path = build_report(run_dir, data_dir, out_dir, samples, echo=click.echo)
    click.echo(f"open {path}")


def register(cli):
    cli.add_command(report)
