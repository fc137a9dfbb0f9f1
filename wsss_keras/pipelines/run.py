"""`wsss run`: a recipe's stages end to end, each reading and writing files in the run folder.

Every stage writes files and is skipped when they are there already, so an interrupted run
resumes where it stopped (per-image stages skip the images done). Which stages run depends on
the method (`METHOD_STAGES`): ToCo trains one model that gives CAMs and segmentation; AMR
trains a CAM network, refines its CAMs with IRN, and ends with a separate segmentation network;
SSC does the same after computing superpixels, without AMR's stage-A network; WeCLIP and SSR
train a decoder on a frozen CLIP (the CPU recipes train a tiny CLIP first) whose online
pseudo-labels are written by the pseudo-labels stage.

| stage | writes |
|---|---|
| superpixels | `superpixels/<id>.png`: SLIC superpixels of the training split (SSC, SSR; `[superpixels]`); for SSR also `regions/<id>.png`, their colour clusters |
| train_clip | `clip.keras`: the tiny CLIP the CPU recipes of WeCLIP and SSR train first (`[clip] source = "train"`) |
| train_cam | `cam_network.keras`: the plain CAM network (AMR's stage A, its spotlight branch) |
| train | `model.keras`, `train_log.csv`: the method's model |
| cams | `cams/<id>.npz` for the `[cams]` split (train by default, as the papers score seeds) |
| ir_labels | `ir_labels/<id>.png`: confident labels for IRNet (`[ir_labels]`) |
| train_irn | `irn.keras`: IRNet's boundary branch (`[irn]`) |
| pseudo_labels | `pseudo_labels/<id>.png` (`[pseudo_labels]`; mode "random_walk" uses `irn.keras`, "online" the frozen-CLIP methods' own) |
| train_seg | `segmenter.keras`: DeepLab-v2 on the pseudo-labels (`[segmentation]`) |
| predict | `predictions/<id>.png` (+ `overlays/`) for the `[predict]` split (val by default), from `segmenter.keras` when the method trains one, else `model.keras` |
| evaluate | `metrics.json`: CAM mIoU (best background threshold of a sweep), pseudo-label and segmentation mIoU, where ground truth exists |
"""

import json
import os

from wsss_keras.pipelines.fitting import MODEL_FILE
from wsss_keras.recipes import recipe_error, section, with_steps

STAGES = (
    "superpixels", "train_clip", "train_cam", "train", "cams", "ir_labels", "train_irn", "pseudo_labels", "train_seg",
    "predict", "evaluate",
)
_IRN_PIPELINE = ("train", "cams", "ir_labels", "train_irn", "pseudo_labels", "train_seg", "predict", "evaluate")
_SINGLE_STAGE = ("train", "cams", "pseudo_labels", "predict", "evaluate")
METHOD_STAGES = {
    "toco": _SINGLE_STAGE,
    "amr": ("train_cam",) + _IRN_PIPELINE,
    "ssc": ("superpixels",) + _IRN_PIPELINE,
    "weclip": ("train_clip",) + _SINGLE_STAGE,
    "ssr": ("superpixels", "train_clip") + _SINGLE_STAGE,
}


def method_stages(recipe):
    """The stages `wsss run` runs for the recipe's method, in order."""
    return METHOD_STAGES[recipe["recipe"]["method"]]


def ground_truth_dir(dataset):
    """The folder of the dataset's label PNGs, or None when the split has none."""
    paths = [path for path in dataset.label_map_paths if path]
    return os.path.dirname(paths[0]) if paths else None


def evaluate_run(out_dir, data_dir, recipe, echo=print):
    """Score what the run folder holds; returns the metrics dict (also written to metrics.json).
    `data_dir` is the dataset folder, or the run's `DatasetFolder`."""
    from wsss_keras.data.layouts import dataset_root, open_split
    from wsss_keras.evaluation.cams import parse_thresholds, sweep_cam_folder
    from wsss_keras.evaluation.folders import score_folders

    metrics = {"recipe": recipe["recipe"]["name"], "data": os.path.abspath(dataset_root(data_dir))}  # `wsss report` reads it
    cam_split = section(recipe, "cams").get("split", "train")
    seed_split = section(recipe, "pseudo_labels").get("split", cam_split)
    predict_split = section(recipe, "predict").get("split", "val")
    try:
        thresholds = parse_thresholds(section(recipe, "evaluate").get("cam_thresholds", "0.05:0.95:0.05"))
    except ValueError as error:
        raise recipe_error(recipe, f"[evaluate] cam_thresholds {error}") from None
    dataset = open_split(data_dir, cam_split)
    truth = ground_truth_dir(dataset)
    cam_dir = os.path.join(out_dir, "cams")
    if truth and os.path.isdir(cam_dir):
        sweep, count = sweep_cam_folder(cam_dir, truth, dataset.class_names, thresholds, names=dataset.names)
        threshold, scores = sweep.best()
        metrics["cams"] = {"split": cam_split, "images": count, "best_threshold": threshold, **scores.as_dict()}
        echo(f"[evaluate] CAMs on {cam_split} ({count} images): mIoU {100 * scores.miou:.1f} at background threshold {threshold:.2f}")
        echo(scores.table())
    for key, folder, split in (("pseudo_labels", "pseudo_labels", seed_split), ("segmentation", "predictions", predict_split)):
        dataset = open_split(data_dir, split)
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


def _skip_existing(path, overwrite, stage, echo):
    """True (and say so) when a training stage's output exists and is not to be redone."""
    if os.path.isfile(path) and not overwrite:
        echo(f"[{stage}] {path} exists; skipping (--overwrite retrains)")
        return True
    return False


def run_recipe(recipe, data_dir, out_dir, weights=None, stages=None, steps=None, overwrite=False, echo=print, progress=None):
    """Run the recipe's `stages` (default: its method's, `method_stages`) into `out_dir`;
    returns the metrics dict.

    Args:
        weights: local pretrained weights of the method's backbone (for AMR the ResNet-50 of the
            CAM networks and of IRNet; the segmentation network's come from `[segmentation]`).
        steps: train every stage for this many steps, with what the recipe counts in steps scaled
            to match (`wsss_keras.recipes.with_steps`).
        progress: optional factory label -> callable(done, total) for per-image stages.
    """
    from wsss_keras.data.layouts import DatasetFolder, open_split
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.segmentation import SEGMENTER_FILE

    recipe = with_steps(recipe, steps)
    stages = method_stages(recipe) if stages is None else tuple(stages)
    online = section(recipe, "pseudo_labels").get("mode") == "online"
    if online and recipe["recipe"]["method"] not in ("weclip", "ssr"):
        # Checked before any stage runs, so a long run does not fail at its fourth stage.
        raise recipe_error(recipe, "[pseudo_labels] mode = \"online\" is WeCLIP's and SSR's; choose \"par\" or \"random_walk\".")
    os.makedirs(out_dir, exist_ok=True)
    progress = progress or (lambda label: None)
    loaded = {}
    data = DatasetFolder(data_dir)  # handed to every stage, so each split is opened once per run

    def saved(file_name):
        if file_name not in loaded:
            loaded[file_name] = load_model(os.path.join(out_dir, file_name))
        return loaded[file_name]

    def split_of(table, fallback="train"):
        return open_split(data, section(recipe, table).get("split", fallback))

    cam_split = section(recipe, "cams").get("split", "train")
    if "superpixels" in stages:
        from wsss_keras.pipelines.superpixels import make_regions, make_superpixels

        make_superpixels(recipe, data, out_dir, progress=progress("superpixels"), overwrite=overwrite, echo=echo)
        if recipe["recipe"]["method"] == "ssr":
            make_regions(recipe, data, out_dir, progress=progress("regions"), overwrite=overwrite, echo=echo)
    if "train_clip" in stages:
        from wsss_keras.pipelines.weclip import CLIP_FILE, train_clip

        if not _skip_existing(os.path.join(out_dir, CLIP_FILE), overwrite, "train-clip", echo):
            train_clip(recipe, data, out_dir, steps=steps, echo=echo)
    if "train_cam" in stages:
        from wsss_keras.pipelines.amr import CAM_NETWORK_FILE, train_cam_network

        if not _skip_existing(os.path.join(out_dir, CAM_NETWORK_FILE), overwrite, "train-cam", echo):
            train_cam_network(recipe, data, out_dir, weights=weights, steps=steps, echo=echo)
    if "train" in stages:
        from wsss_keras.pipelines.train import train

        if not _skip_existing(os.path.join(out_dir, MODEL_FILE), overwrite, "train", echo):
            train(recipe, data, out_dir, weights=weights, steps=steps, echo=echo)
    if "cams" in stages:
        from wsss_keras.pipelines.cams import compute_cams

        settings = section(recipe, "cams")
        dataset = split_of("cams")
        written = compute_cams(
            saved(MODEL_FILE), dataset, os.path.join(out_dir, "cams"), scales=settings.get("scales", (1.0, 0.5, 1.5)),
            flip=settings.get("flip", True), resize=settings.get("resize"), progress=progress("cams"), overwrite=overwrite,
            adversarial=settings.get("adversarial"),
        )
        echo(f"[cams] {written} computed, {len(dataset) - written} already there ({dataset.description})")
    if "ir_labels" in stages:
        from wsss_keras.pipelines.ir_labels import make_ir_labels

        settings = section(recipe, "ir_labels")
        dataset = split_of("ir_labels", cam_split)
        written = make_ir_labels(
            dataset, os.path.join(out_dir, "cams"), os.path.join(out_dir, "ir_labels"),
            fg_threshold=settings.get("fg_threshold", 0.60), bg_threshold=settings.get("bg_threshold", 0.33),
            crf=settings.get("crf", True), progress=progress("ir-labels"), overwrite=overwrite,
        )
        echo(f"[ir-labels] {written} written ({dataset.description})")
    if "train_irn" in stages:
        from wsss_keras.pipelines.irn import IRN_FILE, train_irn

        if not _skip_existing(os.path.join(out_dir, IRN_FILE), overwrite, "train-irn", echo):
            train_irn(recipe, data, out_dir, weights=weights, steps=steps, echo=echo)
    if "pseudo_labels" in stages:
        settings = section(recipe, "pseudo_labels")
        dataset = split_of("pseudo_labels", cam_split)
        mode = settings.get("mode", "par")
        if mode == "online":
            from wsss_keras.pipelines.weclip import make_online_pseudo_labels

            regions = None
            if recipe["recipe"]["method"] == "ssr":
                from wsss_keras.pipelines.ssr import region_cache

                regions = region_cache(recipe, out_dir)
            written = make_online_pseudo_labels(
                saved(MODEL_FILE), dataset, os.path.join(out_dir, "pseudo_labels"), regions=regions,
                progress=progress("pseudo-labels"), overwrite=overwrite,
            )
        elif mode == "random_walk":
            from wsss_keras.pipelines.irn import (
                IRN_FILE,
                walk_pseudo_labels,
                walk_settings,
            )

            written = walk_pseudo_labels(
                saved(IRN_FILE), dataset, os.path.join(out_dir, "cams"), os.path.join(out_dir, "pseudo_labels"),
                progress=progress("pseudo-labels"), overwrite=overwrite, **walk_settings(recipe),
            )
        else:
            from wsss_keras.pipelines.pseudo_labels import make_pseudo_labels

            options = {key: settings[key] for key in ("high", "low", "down_scale") if key in settings}
            written = make_pseudo_labels(
                dataset, os.path.join(out_dir, "cams"), os.path.join(out_dir, "pseudo_labels"),
                mode=mode, progress=progress("pseudo-labels"), overwrite=overwrite, **options,
            )
        echo(f"[pseudo-labels] {written} written ({mode})")
    if "train_seg" in stages:
        from wsss_keras.pipelines.segmentation import train_segmenter

        if not _skip_existing(os.path.join(out_dir, SEGMENTER_FILE), overwrite, "train-seg", echo):
            train_segmenter(recipe, data, out_dir, steps=steps, echo=echo)
    if "predict" in stages:
        from wsss_keras.pipelines.predict import predict_folder

        settings = section(recipe, "predict")
        dataset = split_of("predict", "val")
        predictor = SEGMENTER_FILE if "train_seg" in method_stages(recipe) else MODEL_FILE
        written = predict_folder(
            saved(predictor), dataset, os.path.join(out_dir, "predictions"), scales=settings.get("scales", (1.0,)),
            flip=settings.get("flip", False), overlay=settings.get("overlay", True), progress=progress("predict"),
            overwrite=overwrite, model_name=predictor, crf=settings.get("crf"),
        )
        echo(f"[predict] {written} predicted with {predictor} ({dataset.description})")
    if "evaluate" in stages:
        return evaluate_run(out_dir, data, recipe, echo)
    return {}
