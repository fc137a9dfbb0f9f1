"""`wsss run`: a recipe's stages end to end, each reading and writing files in the run folder.

Stages, in order (a stage whose output is already there is skipped, so an interrupted run
resumes where it stopped):

| stage | writes |
|---|---|
| train | `model.keras`, `train_log.csv` |
| cams | `cams/<id>.npz` for the `[cams]` split (train by default, as the papers score seeds) |
| pseudo_labels | `pseudo_labels/<id>.png` |
| predict | `predictions/<id>.png` (+ `overlays/`) for the `[predict]` split (val by default) |
| evaluate | `metrics.json`: CAM mIoU (best background threshold of a sweep), pseudo-label and segmentation mIoU, where ground truth exists |
"""

import json
import os

from wsss_keras.pipelines.train import MODEL_FILE
from wsss_keras.recipes import recipe_error, section

STAGES = ("train", "cams", "pseudo_labels", "predict", "evaluate")


def ground_truth_dir(dataset):
    """The folder of the dataset's label PNGs, or None when the split has none."""
    paths = [path for path in dataset.label_map_paths if path]
    return os.path.dirname(paths[0]) if paths else None


def evaluate_run(out_dir, data_dir, recipe, echo=print):
    """Score what the run folder holds; returns the metrics dict (also written to metrics.json)."""
    from wsss_keras.data.dataset import open_dataset
    from wsss_keras.evaluation.cams import parse_thresholds, sweep_cam_folder
    from wsss_keras.evaluation.folders import score_folders

    metrics = {"recipe": recipe["recipe"]["name"]}
    cam_split = section(recipe, "cams").get("split", "train")
    seed_split = section(recipe, "pseudo_labels").get("split", cam_split)
    predict_split = section(recipe, "predict").get("split", "val")
    try:
        thresholds = parse_thresholds(section(recipe, "evaluate").get("cam_thresholds", "0.05:0.95:0.05"))
    except ValueError as error:
        raise recipe_error(recipe, f"[evaluate] cam_thresholds {error}") from None
    dataset = open_dataset(data_dir, cam_split)
    truth = ground_truth_dir(dataset)
    cam_dir = os.path.join(out_dir, "cams")
    if truth and os.path.isdir(cam_dir):
        sweep, count = sweep_cam_folder(cam_dir, truth, dataset.class_names, thresholds, names=dataset.names)
        threshold, scores = sweep.best()
        metrics["cams"] = {"split": cam_split, "images": count, "best_threshold": threshold, **scores.as_dict()}
        echo(f"[evaluate] CAMs on {cam_split} ({count} images): mIoU {100 * scores.miou:.1f} at background threshold {threshold:.2f}")
        echo(scores.table())
    for key, folder, split in (("pseudo_labels", "pseudo_labels", seed_split), ("segmentation", "predictions", predict_split)):
        dataset = open_dataset(data_dir, split)
        truth = ground_truth_dir(dataset)
        path = os.path.join(out_dir, folder)
        if truth and os.path.isdir(path):
            scores, count = score_folders(path, truth, dataset.class_names, dataset.names)
            metrics[key] = {"split": split, "images": count, **scores.as_dict()}
            echo(f"[evaluate] {key.replace('_', '-')} on {split} ({count} images): mIoU {100 * scores.miou:.1f}")
            echo(scores.table())
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    return metrics


def run_recipe(recipe, data_dir, out_dir, weights=None, stages=STAGES, steps=None, overwrite=False, echo=print, progress=None):
    """Run the recipe's `stages` into `out_dir`; returns the metrics dict.

    Args:
        progress: optional factory label -> callable(done, total) for per-image stages.
    """
    from wsss_keras.data.dataset import open_dataset

    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, MODEL_FILE)
    progress = progress or (lambda label: None)
    model = None

    def trained_model():
        nonlocal model
        if model is None:
            from wsss_keras.pipelines.model_io import load_model

            model = load_model(model_path)
        return model

    if "train" in stages:
        if os.path.isfile(model_path) and not overwrite:
            echo(f"[train] {model_path} exists; skipping (--overwrite retrains)")
        else:
            from wsss_keras.pipelines.train import train

            train(recipe, data_dir, out_dir, weights=weights, steps=steps, echo=echo)
    if "cams" in stages:
        from wsss_keras.pipelines.cams import compute_cams

        settings = section(recipe, "cams")
        dataset = open_dataset(data_dir, settings.get("split", "train"))
        written = compute_cams(
            trained_model(), dataset, os.path.join(out_dir, "cams"), scales=settings.get("scales", (1.0, 0.5, 1.5)),
            flip=settings.get("flip", True), resize=settings.get("resize"), progress=progress("cams"), overwrite=overwrite,
        )
        echo(f"[cams] {written} computed, {len(dataset) - written} already there ({dataset.description})")
    if "pseudo_labels" in stages:
        from wsss_keras.pipelines.pseudo_labels import make_pseudo_labels

        settings = section(recipe, "pseudo_labels")
        dataset = open_dataset(data_dir, settings.get("split", section(recipe, "cams").get("split", "train")))
        options = {key: settings[key] for key in ("high", "low", "down_scale") if key in settings}
        written = make_pseudo_labels(
            dataset, os.path.join(out_dir, "cams"), os.path.join(out_dir, "pseudo_labels"),
            mode=settings.get("mode", "par"), progress=progress("pseudo-labels"), overwrite=overwrite, **options,
        )
        echo(f"[pseudo-labels] {written} written ({settings.get('mode', 'par')})")
    if "predict" in stages:
        from wsss_keras.pipelines.predict import predict_folder

        settings = section(recipe, "predict")
        dataset = open_dataset(data_dir, settings.get("split", "val"))
        written = predict_folder(
            trained_model(), dataset, os.path.join(out_dir, "predictions"), scales=settings.get("scales", (1.0,)),
            flip=settings.get("flip", False), overlay=settings.get("overlay", True), progress=progress("predict"),
            overwrite=overwrite,
        )
        echo(f"[predict] {written} predicted ({dataset.description})")
    if "evaluate" in stages:
        return evaluate_run(out_dir, data_dir, recipe, echo)
    return {}
