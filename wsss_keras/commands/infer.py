"""`wsss cams`, `wsss pseudo-labels`, `wsss predict`: the inference stages, file to file.

Each stage skips images whose output is already there (so an interrupted run resumes) unless
--overwrite is given; score any of their outputs with `wsss evaluate`.
"""

import os

import click

from wsss_keras.commands.options import dataset_options, open_dataset_from_options, progress_printer


def parse_scales(ctx, param, text):
    """"1.0,0.5,1.5" -> (1.0, 0.5, 1.5); every scale positive."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        scales = ()
    if not scales or min(scales) <= 0:
        raise click.BadParameter(f"{text!r}: give a comma list of positive scales, e.g. 1.0,0.5,1.5.")
    return scales


def dataset_options_with_split(default_split):
    """`dataset_options` with another default for --split."""

    def decorate(function):
        function = dataset_options(function)
        for param in function.__click_params__:
            if param.name == "split":
                param.default = default_split
        return function

    return decorate


def summary(count, total, what, out):
    skipped = total - count
    kept = f"; {skipped} already there were kept (--overwrite redoes them)" if skipped else ""
    return f"wrote {what} of {count} images to {os.path.abspath(out)}{kept}"


@click.command()
@click.argument("model_path", metavar="MODEL.keras", type=click.Path(dir_okay=False))
@click.option("--data", "root", required=True, type=click.Path(file_okay=False), help="Dataset root (VOC or COCO layout).")
@dataset_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder of <image id>.npz CAM files.")
@click.option("--scales", default="1.0,0.5,1.5", callback=parse_scales, help="Input scales of the multi-scale CAMs (comma list).")
@click.option("--flip/--no-flip", default=True, help="Add the mirrored view of each scale.")
@click.option("--resize", type=click.IntRange(min=16), default=None, help="Resize each image to N x N first (ToCo's infer_cam: 448); default: original size.")
@click.option("--overwrite", is_flag=True, help="Recompute images whose CAM file exists (default: skip them).")
def cams(model_path, root, split, labels_from, cls_labels, instances, class_names, out, scales, flip, resize, overwrite):
    """Compute multi-scale CAMs of a trained model for every image of a split.

    Writes OUT/<image id>.npz with the CAMs of the image's classes at the image size, in
    [0, 1]. Score them with `wsss evaluate OUT GT_DIR` (background-threshold sweep) and turn
    them into labels with `wsss pseudo-labels`.
    """
    from wsss_keras.pipelines.cams import compute_cams
    from wsss_keras.pipelines.model_io import load_model

    dataset = open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names)
    model = load_model(model_path)
    count = compute_cams(model, dataset, out, scales, flip, resize, progress_printer("cams"), overwrite)
    click.echo(summary(count, len(dataset), "CAMs", out))


@click.command("pseudo-labels")
@click.option("--data", "root", required=True, type=click.Path(file_okay=False), help="Dataset root the CAMs were computed on.")
@dataset_options
@click.option("--cams", "cam_dir", required=True, type=click.Path(file_okay=False), help="Folder of CAM files from `wsss cams`.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder of <image id>.png label maps.")
@click.option("--mode", type=click.Choice(["par", "threshold", "crf"]), default="par", help="par: PAR-refined (ToCo online); threshold: two thresholds; crf: dense CRF (ToCo offline, needs the crf extra).")
@click.option("--high", type=click.FloatRange(0, 1), default=0.7, help="Background score above which the strongest class is taken.")
@click.option("--low", type=click.FloatRange(0, 1), default=0.25, help="Background score at or below which a pixel is background; in between: 255 (ignore).")
@click.option("--background", type=click.FloatRange(0, 1), default=None, help="One background threshold instead of --high/--low (no ignore band).")
@click.option("--down-scale", type=click.IntRange(min=1), default=2, help="par: refine at 1/N of the image size.")
@click.option("--overwrite", is_flag=True, help="Rewrite label maps that exist (default: skip them).")
def pseudo_labels(root, split, labels_from, cls_labels, instances, class_names, cam_dir, out, mode, high, low, background, down_scale, overwrite):
    """Turn CAM files into pseudo-label PNGs (VOC palette, 255 = ignore).

    Score them with `wsss evaluate OUT GT_DIR`; train a segmentation network on them.
    """
    from wsss_keras.pipelines.pseudo_labels import make_pseudo_labels

    if background is None and low > high:
        raise click.BadParameter(f"--low {low} is above --high {high}; the ignore band needs low <= high.", param_hint="--low")
    dataset = open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names)
    count = make_pseudo_labels(
        dataset, cam_dir, out, mode, high, low, background, down_scale, progress=progress_printer("pseudo-labels"), overwrite=overwrite
    )
    click.echo(summary(count, len(dataset), f"{mode} pseudo-labels", out))


@click.command()
@click.argument("model_path", metavar="MODEL.keras", type=click.Path(dir_okay=False))
@click.option("--data", "root", type=click.Path(file_okay=False), default=None, help="Dataset root (VOC or COCO layout); or give --images.")
@click.option("--images", "image_dir", type=click.Path(file_okay=False), default=None, help="A folder of .jpg/.png images instead of a dataset.")
@dataset_options_with_split("val")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder of <name>.png label maps (overlays in OUT/overlays/).")
@click.option("--scales", default="1.0,1.25,1.5", callback=parse_scales, help="Test scales, merged by --scale-merge.")
@click.option("--flip/--no-flip", default=True, help="Add the mirrored view's logits at each scale.")
@click.option("--overlay/--no-overlay", default=True, help="Also write each image blended with its label colours.")
@click.option("--crf", type=click.Choice(["none", "toco", "deeplab", "weclip"]), default="none", help="Refine with a dense CRF: ToCo's MS+CRF settings, deeplab-pytorch's or WeCLIP's test script's (the crf extra).")
@click.option("--flip-merge", type=click.Choice(["sum", "mean", "max"]), default="sum", help="How a view's and its mirror's logits merge (ToCo VOC: sum; ToCo COCO: max; WeCLIP: mean).")
@click.option("--scale-merge", type=click.Choice(["sum", "mean", "max"]), default="max", help="How the scales' logits merge (ToCo VOC: max; ToCo COCO: sum; WeCLIP: mean).")
@click.option("--resize-long", type=click.IntRange(min=16), default=None, help="Resize each image to this long side first, the labels back to its size (WeCLIP: 512) [default: as it is].")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs exist (default: skip them).")
def predict(model_path, root, image_dir, split, labels_from, cls_labels, instances, class_names, out, scales, flip, overlay, crf,
            flip_merge, scale_merge, resize_long, overwrite):
    """Segment images with a trained model's segmentation head.

    Writes OUT/<name>.png (VOC palette) and, unless --no-overlay, OUT/overlays/<name>.jpg.
    Score the PNGs with `wsss evaluate OUT GT_DIR`.
    """
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.predict import ImageFolder, predict_folder

    if (root is None) == (image_dir is None):
        raise click.UsageError("give either --data DIR (a dataset split) or --images DIR (a folder of images).")
    if root is not None:
        images = open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names)
    else:
        images = ImageFolder(image_dir)
    model = load_model(model_path)
    count = predict_folder(
        model, images, out, scales, flip, overlay, progress_printer("predict"), overwrite, model_name=model_path,
        crf=None if crf == "none" else crf, flip_merge=flip_merge, scale_merge=scale_merge, resize_long=resize_long,
    )
    click.echo(summary(count, len(images), "label maps" + (" and overlays" if overlay else ""), out))


def register(cli):
    for command in (cams, pseudo_labels, predict):
        cli.add_command(command)
