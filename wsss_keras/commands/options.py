"""Click options shared by several commands."""

import click

from wsss_keras.errors import WSSSError


class ErrorReportingGroup(click.Group):
    """A click group that turns the project's own errors into one-line messages (exit status 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WSSSError as error:
            raise click.ClickException(str(error)) from None


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

