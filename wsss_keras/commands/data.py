"""`wsss data`: generate, check, describe and load datasets."""

import json
import os

import click

from wsss_keras.commands.options import (
    dataset_options,
    open_dataset_from_options,
    progress_printer,
)


@click.group()
def data():
    """Generate, check and inspect datasets (VOC, COCO, synthetic, custom VOC-layout)."""


class ImageSizes(click.ParamType):
    """`--size`: a side (128), WxH (500x375), a comma list of them, or voc / coco."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        from wsss_keras.data.synthetic import parse_sizes
        from wsss_keras.errors import DataError

        try:
            return parse_sizes(value)
        except DataError as error:
            self.fail(str(error).split(": ", 1)[-1], param, ctx)


@data.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--layout", type=click.Choice(["voc", "coco"]), default="voc", show_default=True,
    help="voc: PASCAL VOC folders (splits train, train_aug, val); coco: COCO 2014 folders "
    "(train2014, val2014, annotations/instances_<split>.json) with COCO's 80 classes.",
)  # fmt: skip
@click.option(
    "--classes", default=None, show_default="6",
    help="VOC layout: number of classes (the first N of the catalog) or a comma-separated list of names.",
)  # fmt: skip
@click.option(
    "--size", type=ImageSizes(), default="128", show_default=True,
    help="Image size: a side in pixels (square), WxH (500x375), a comma list the images cycle through "
    "(500x375,375x500), or voc / coco for those datasets' common sizes. Sides 32..4096.",
)  # fmt: skip
@click.option(
    "--style", type=click.Choice(["flat", "photo", "clutter"]), default="flat", show_default=True,
    help="What makes the data hard. flat: drawn objects with co-occurrence and under-activation traps; "
    "photo: small objects (0.5-2 % of the image each) with photographic textures on photographs, same traps; "
    "clutter: thin articulated shapes, 3-8 per image at many scales, among distractor strokes.",
)  # fmt: skip
@click.option(
    "--present-classes", default=None, metavar="N|NAMES",
    help="VOC layout: keep VOC's 21-class list (masks use VOC's indices) but let only these classes occur: "
    "a count (the catalog's first N, then VOC's other classes) or a comma-separated list of VOC names. Not with --classes.",
)  # fmt: skip
@click.option("--n-train", type=click.IntRange(min=1), default=600, show_default=True, help="Training images.")
@click.option("--n-val", type=click.IntRange(min=1), default=150, show_default=True, help="Validation images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; the same arguments give the same files.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
def synth(out, layout, classes, size, style, present_classes, n_train, n_val, seed, overwrite):
    """Write a synthetic WSSS dataset in the PASCAL VOC layout (or COCO's) to OUT.

    It contains co-occurrence traps (boat on water, train on rails) and under-activation traps
    (aeroplane and bus: a large plain body with one small distinctive part); --style picks how
    the objects look.
    """
    from wsss_keras.data.synthetic import generate

    info = generate(
        out, classes, size, n_train, n_val, seed, overwrite, progress=progress_printer("synth"), layout=layout, style=style,
        present_classes=present_classes,
    )  # fmt: skip
    if layout == "coco":
        splits = " + ".join(f"{count} {split}" for split, count in info["splits"].items())
        click.echo(f"wrote {out}: {splits} images, {len(info['classes']) - 1} COCO classes")
    else:
        classes_text = ", ".join(info.get("present_classes", info["classes"][1:]))
        if "present_classes" in info:
            classes_text += f" (of VOC's {len(info['classes']) - 1})"
        click.echo(f"wrote {out}: {info['splits']['train']} train + {info['splits']['val']} val images, classes: {classes_text}")
    for name, kind in info["traps"].items():
        click.echo(f"  trap: {name} ({kind})")


@data.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@dataset_options
@click.option("--label-maps/--no-label-maps", default=None, help="Also read label maps; default: when every image has one.")
def check(root, split, labels_from, cls_labels, instances, class_names, label_maps):
    """Read every file of a split and report each problem (exit status 1 if any)."""
    dataset = open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names)
    errors = dataset.check(with_label_maps=label_maps, progress=progress_printer("check"))
    for error in errors:
        click.echo(error, err=True)
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(dataset)} images have problems (listed above).")
    click.echo(f"{dataset}: all files read and valid.")


@data.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@dataset_options
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(root, split, labels_from, cls_labels, instances, class_names, as_json):
    """Print images per class, co-occurrence and pixel shares of a split."""
    from wsss_keras.data.dataset import format_statistics

    dataset = open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names)
    statistics = dataset.statistics()
    if as_json:
        click.echo(json.dumps(statistics, indent=2))
    else:
        click.echo(format_statistics(dataset, statistics))


@data.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@dataset_options
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Images in the batch.")
@click.option("--crop-size", type=click.IntRange(min=8), default=96, help="Training crop side.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def peek(root, split, labels_from, cls_labels, instances, class_names, batch_size, crop_size, as_json):
    """Load one augmented training batch through the Keras loader on the current backend."""
    import keras
    import numpy as np

    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import TrainTransform

    dataset = open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names)
    loader = SegmentationLoader(
        dataset, batch_size, TrainTransform(crop_size=crop_size, scale_range=(0.75, 1.25)), shuffle=True,
        with_label_maps=dataset.has_label_maps,
    )
    images, targets = loader[0]
    tensor = keras.ops.convert_to_tensor(images)
    report = {
        "backend": keras.backend.backend(),
        "tensor_type": f"{type(tensor).__module__}.{type(tensor).__name__}",
        "images": list(images.shape),
        "dtype": str(keras.backend.standardize_dtype(tensor.dtype)),
        "mean": float(keras.ops.convert_to_numpy(keras.ops.mean(tensor))),
        "labels": list(targets["labels"].shape),
        "labels_per_image": float(np.mean(targets["labels"].sum(1))),
    }
    if "label_maps" in targets:
        report["label_maps"] = list(targets["label_maps"].shape)
    if as_json:
        click.echo(json.dumps(report))
    else:
        for key, value in report.items():
            click.echo(f"{key:<17} {value}")


@data.command("coco-masks")
@click.argument("instances_json", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
def coco_masks(instances_json, out):
    """Convert a COCO instances JSON into label PNGs (0 background, 1..80 classes, 255 crowd)."""
    from wsss_keras.data.coco import instances_to_label_maps

    count = instances_to_label_maps(instances_json, out, progress=progress_printer("coco-masks"))
    click.echo(f"wrote {count} label maps to {os.path.abspath(out)}")


def register(cli):
    cli.add_command(data)
