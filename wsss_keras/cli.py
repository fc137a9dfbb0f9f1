"""The `wsss` command line.

The group's `--backend` runs before any command, and commands import Keras lazily inside
their bodies, so the backend takes effect before Keras is first imported. Command modules in
`wsss_keras.commands` register themselves on the group here.
"""

import os
import sys

import click

from wsss_keras import __version__
from wsss_keras.backend import BACKENDS, set_backend
from wsss_keras.commands.options import ErrorReportingGroup
from wsss_keras.errors import WSSSError
from wsss_keras.tf_startup import quiet_tensorflow_startup


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Keras backend for this run; default: $KERAS_BACKEND, else tensorflow.",
)
@click.option(
    "-v", "--verbose", is_flag=True, default=False,
    help="Show TensorFlow's start-up messages (hidden by default unless TF_CPP_MIN_LOG_LEVEL is set).",
)
@click.version_option(__version__, prog_name="wsss")
def cli(backend, verbose):
    """Weakly supervised semantic segmentation: from image-level labels to pixel masks."""
    quiet_tensorflow_startup(verbose)
    try:
        set_backend(backend or os.environ.get("KERAS_BACKEND", "tensorflow"))
    except WSSSError as error:
        raise click.BadParameter(str(error), param_hint="--backend") from None


def _register_commands():
    from wsss_keras.commands import data, evaluate, export, info, quickstart, report, serve, weights

    for module in (info, data, evaluate, quickstart, weights, export, serve, report):
        module.register(cli)
    from wsss_keras.commands import infer, launch, run, stages

    infer.register(cli)
    run.register(cli)
    stages.register(cli)
    launch.register(cli)


_register_commands()


def main(argv=None):
    """Entry point of the `wsss` script."""
    return cli.main(args=argv, prog_name="wsss")


if __name__ == "__main__":
    sys.exit(main())
