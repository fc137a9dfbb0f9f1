"""`wsss evaluate`: score label PNGs from any tool against ground truth."""

import json
import os

import click

from wsss_keras.commands.options import progress_printer


def resolve_class_names(class_names_file, num_classes, ground_truth_dir):
    """Class names from a file, a count, the dataset beside GT_DIR, or VOC's 21 by default."""
    from wsss_keras.data.classes import CLASS_NAMES_FILE, VOC_CLASSES, read_class_names

    if class_names_file:
        return read_class_names(class_names_file)
    if num_classes:
        return ("background",) + tuple(f"class {i}" for i in range(1, num_classes))
    beside = os.path.join(os.path.dirname(os.path.abspath(ground_truth_dir)), CLASS_NAMES_FILE)
    return read_class_names(beside) if os.path.isfile(beside) else VOC_CLASSES


@click.command()
@click.argument("pred_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("gt_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--class-names", type=click.Path(exists=True, dir_okay=False), default=None, help="Class-names file, background first; default: class_names.txt beside GT_DIR, else the 21 VOC classes.")
@click.option("--num-classes", type=click.IntRange(min=2, max=255), default=None, help="Number of classes with background, when there is no names file.")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False), default=None, help="Score only the image ids listed here (every one must be predicted).")
@click.option("--prediction-ignore", type=click.Choice(["miss", "skip"]), default="miss", help="Predicted 255 pixels: count as misses, or leave them out of the score.")
@click.option("--thresholds", default="0.05:0.95:0.05", help="CAMs only: background thresholds to sweep, start:stop:step or a comma list.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the scores to this JSON file.")
def evaluate(pred_dir, gt_dir, class_names, num_classes, split_file, prediction_ignore, thresholds, json_path):
    """Score PRED_DIR against ground-truth PNGs in GT_DIR (mIoU).

    PRED_DIR holds label PNGs (pseudo-labels, segmentation from any tool) or CAM files (.npz,
    as `wsss cams` writes them); CAMs are scored at every background threshold of the sweep.
    Files are matched by name; 255 in the ground truth is ignored; classes absent from both
    predictions and ground truth are left out of the mean.
    """
    from wsss_keras.data.dataset import read_split_file
    from wsss_keras.evaluation import score_folders

    names = resolve_class_names(class_names, num_classes, gt_dir)
    ids = read_split_file(split_file) if split_file else None
    if any(f.endswith(".npz") for f in os.listdir(pred_dir)):
        report = _evaluate_cams(pred_dir, gt_dir, names, ids, parse_thresholds(thresholds))
    else:
        scores, count = score_folders(pred_dir, gt_dir, names, ids, prediction_ignore, progress=progress_printer("evaluate"))
        click.echo(scores.table())
        click.echo(f"scored {count} images; mIoU {100 * scores.miou:.2f}")
        report = {"images": count, **scores.as_dict()}
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)


def parse_thresholds(text):
    """--thresholds: "0.05:0.95:0.05" (inclusive) or "0.3,0.5", values in [0, 1]."""
    from wsss_keras.evaluation.cams import parse_thresholds as parse

    try:
        return parse(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--thresholds") from None


def _evaluate_cams(cam_dir, gt_dir, names, ids, thresholds):
    from wsss_keras.evaluation.cams import sweep_cam_folder

    sweep, count = sweep_cam_folder(cam_dir, gt_dir, names, thresholds, ids, progress=progress_printer("evaluate"))
    click.echo("threshold  mIoU")
    all_scores = sweep.scores()
    for threshold, scores in zip(sweep.thresholds, all_scores):
        click.echo(f"{threshold:9.2f}  {100 * scores.miou:5.2f}")
    best_threshold, best = sweep.best()
    click.echo(best.table())
    click.echo(f"scored CAMs of {count} images; best background threshold {best_threshold:.2f}, mIoU {100 * best.miou:.2f}")
    return {
        "images": count,
        "best_threshold": best_threshold,
        "sweep": {f"{t:.2f}": s.miou for t, s in zip(sweep.thresholds, all_scores)},
        **best.as_dict(),
    }


def register(cli):
    cli.add_command(evaluate)
