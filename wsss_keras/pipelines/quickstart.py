"""The quickstart: the synthetic dataset end to end on this machine.

It generates the data (reusing it when already there with the same settings), prints its
statistics, runs the `toco_doei_synthetic_cpu` recipe (train ToCo + DOEI, CAMs, PAR
pseudo-labels, segmentation predictions, evaluation) into `OUT/toco_doei`, and scores a
trivial predictor (all background) on the validation split as the floor every method must beat.
"""

import json
import os

import numpy as np

from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import write_label_map
from wsss_keras.data.synthetic import generate
from wsss_keras.evaluation import score_folders

QUICKSTART_RECIPE = "toco_doei_synthetic_cpu"
QUICKSTART_DATA = {"classes": "6", "size": 128, "n_train": 600, "n_val": 150, "seed": 0}


def ensure_synthetic_data(folder, settings, echo, progress=None):
    """Generate the synthetic data into `folder` unless it is already there with `settings`."""
    marker = os.path.join(folder, "synthetic.json")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as handle:
            info = json.load(handle)
        same = (info.get("seed"), info.get("size"), info["splits"].get("train"), info["splits"].get("val"), len(info["classes"]) - 1,
                info.get("style", "flat")) == (
            settings["seed"], settings["size"], settings["n_train"], settings["n_val"], int(settings["classes"]),
            settings.get("style", "flat"))
        if same:
            echo(f"[data] reusing {folder}")
            return info
        echo(f"[data] {folder} was made with other settings; regenerating")
    echo(f"[data] writing the synthetic dataset to {folder}")
    return generate(folder, overwrite=True, progress=progress, **settings)


def run_quickstart(out, echo=print, progress=None, steps=None):
    """Run the quickstart into the folder `out`; returns the metrics dict (also written to metrics.json).

    Args:
        steps: train for this many steps instead of the recipe's (smoke runs).
    """
    from wsss_keras.data.dataset import format_statistics
    from wsss_keras.pipelines.run import run_recipe
    from wsss_keras.recipes import load_recipe

    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(out, "data")
    ensure_synthetic_data(data_dir, QUICKSTART_DATA, echo, progress)
    metrics = {"data": data_dir}
    for split in ("train", "val"):
        dataset = VocDataset(data_dir, split)
        statistics = dataset.statistics()
        metrics[f"{split}_statistics"] = statistics
        echo(format_statistics(dataset, statistics))

    val = VocDataset(data_dir, "val")
    prediction_dir = os.path.join(out, "trivial_all_background")
    for index, name in enumerate(val.names):
        height, width = val.load_image(index).shape[:2]
        write_label_map(os.path.join(prediction_dir, f"{name}.png"), np.zeros((height, width), np.uint8))
    scores, count = score_folders(prediction_dir, os.path.join(data_dir, "SegmentationClass"), val.class_names, val.names)
    metrics["trivial_all_background"] = {"images": count, **scores.as_dict()}
    echo(f"[floor] a trivial predictor (all background) scores mIoU {100 * scores.miou:.1f} on val")

    run_dir = os.path.join(out, "toco_doei")
    recipe = load_recipe(QUICKSTART_RECIPE)
    echo(f"[run] {recipe['recipe']['description']} -> {run_dir}")
    metrics["toco_doei"] = run_recipe(recipe, data_dir, run_dir, steps=steps, echo=echo)
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    result = metrics["toco_doei"]
    echo(
        f"[done] ToCo + DOEI on the synthetic data: CAM mIoU {100 * result['cams']['miou']:.1f} (train), "
        f"pseudo-labels {100 * result['pseudo_labels']['miou']:.1f} (train), segmentation "
        f"{100 * result['segmentation']['miou']:.1f} (val); trivial floor {100 * scores.miou:.1f}. "
        f"Run folder: {os.path.abspath(out)}"
    )
    return metrics
