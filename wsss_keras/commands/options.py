"""Click options shared by several commands."""

import functools
import os

import click

from wsss_keras.errors import WSSSError
from wsss_keras.training.options import DISTRIBUTIONS, PRECISIONS


class ErrorReportingGroup(click.Group):
    """A click group that turns the project's own errors into one-line messages (exit status 1,
    or the error's own `exit_code`: 128 + the signal for training stopped by a signal)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WSSSError as error:
            exception = click.ClickException(str(error))
            exception.exit_code = getattr(error, "exit_code", 1)
            raise exception from None


class WeightsParam(click.ParamType):
    """`--weights`: an existing local checkpoint (file or folder), or the word `random`
    (`wsss_keras.backbones.registry.RANDOM_WEIGHTS`) for untrained backbones, so a smoke run of a
    paper recipe needs no checkpoint. A file that happens to be called `random` is `./random`."""

    name = "path|random"

    def get_metavar(self, param, ctx=None):
        return "PATH|random"

    def convert(self, value, param, ctx):
        from wsss_keras.backbones.registry import RANDOM_WEIGHTS

        if value is None or not isinstance(value, str):
            return value
        if value == RANDOM_WEIGHTS:
            return RANDOM_WEIGHTS
        if not value:
            self.fail("give a local checkpoint (file or folder) or the word 'random' (untrained backbones).", param, ctx)
        if not os.path.exists(value):
            self.fail(
                f"{value!r}: no such file or folder. Give a local checkpoint (timm/HF safetensors, .pth, keras-hub "
                f"preset), or '{RANDOM_WEIGHTS}' to build every backbone untrained (smoke runs).", param, ctx,
            )
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        items = [CompletionItem(incomplete, type="file")]
        return ([CompletionItem("random")] if "random".startswith(incomplete) else []) + items


WEIGHTS = WeightsParam()


def training_flags(function):
    """--resume/--restart, --checkpoint-every, --log-every, --tensorboard, --precision and
    --distribute; the command then runs inside `training_session` with them."""

    @functools.wraps(function)
    def run_in_session(*args, resume, checkpoint_every, log_every, tensorboard, precision, distribute, **kwargs):
        from wsss_keras.training.options import TrainingOptions, training_session

        options = TrainingOptions(resume=resume, checkpoint_every=checkpoint_every, log_every=log_every,
                                  tensorboard=tensorboard, precision=precision, distribute=distribute)
        with training_session(options, echo=click.echo):
            return function(*args, **kwargs)

    options = [
        click.option("--resume/--restart", "resume", default=None,
                     help="Continue each training stage from its last checkpoint / delete it and start over "
                          "[default: continue when there is one]."),
        click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
                     help="Steps between checkpoints [default: min(1000, max(50, steps / 10))]; 0: only on "
                          "SIGTERM or Ctrl-C, which always checkpoint before stopping."),
        click.option("--log-every", type=click.IntRange(min=1), default=None,
                     help="Steps per progress line and log row [default: steps / 20, at most 100]."),
        click.option("--tensorboard/--no-tensorboard", default=True,
                     help="Also write the logged losses for TensorBoard (OUT/tensorboard/)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="float32",
                     help="Keras dtype policy; mixed_float16 scales the loss, mixed_bfloat16 suits recent GPUs/TPUs."),
        click.option("--distribute", type=click.Choice(DISTRIBUTIONS), default="none",
                     help="data-parallel: every device gets a share of each batch (JAX: keras.distribution; "
                          "TensorFlow: tf.distribute, multi-worker from TF_CONFIG). The recipe's batch_size is "
                          "the global batch."),
    ]
    for option in reversed(options):
        run_in_session = option(run_in_session)
    return run_in_session


def dataset_options(function):
    """--split, --labels-from, --cls-labels and --class-names, opening a dataset root."""
    options = [
        click.option("--split", default="train", help="Split file name (VOC: ImageSets/Segmentation/<split>.txt; COCO: train2014/val2014)."),
        click.option(
            "--labels-from",
            type=click.Choice(["auto", "xml", "cls_labels", "masks", "instances"]),
            default="auto",
            help="Source of the image-level labels: Annotations XML, a cls_labels .npy, the label maps, or a COCO instances JSON.",
        ),
        click.option("--cls-labels", type=click.Path(dir_okay=False), default=None, help="cls_labels .npy dictionary (image id -> multi-hot)."),
        click.option("--instances", type=click.Path(dir_okay=False), default=None, help="COCO instances_<split>.json (COCO layout only)."),
        click.option("--class-names", type=click.Path(dir_okay=False), default=None, help="Class-names file, background first; default ROOT/class_names.txt or the dataset's standard list."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names):
    """Open ROOT as COCO or VOC layout from the options of `dataset_options`."""
    from wsss_keras.data import CocoDataset, open_dataset
    from wsss_keras.errors import DataError

    if instances:
        return CocoDataset(root, split, labels_from, cls_labels=cls_labels, instances=instances, class_names=class_names)
    if labels_from == "instances":
        raise DataError("--labels-from instances needs --instances PATH (a COCO instances JSON).")
    return open_dataset(root, split, labels_from=labels_from, cls_labels=cls_labels, class_names=class_names)


def progress_printer(label):
    """A callable(done, total) that draws a click progress bar on stderr."""
    state = {}

    def update(done, total):
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label=label, file=click.get_text_stream("stderr"))
            state["bar"].__enter__()
        state["bar"].update(done - state["bar"].pos)
        if done >= total:
            state["bar"].__exit__(None, None, None)

    return update

