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
| train_dino | `dino.keras`: the small ViT SSR's CPU recipe trains DINO-style as its DINO (`[dino] source = "train"`) |
| train_cam | `cam_network.keras`: the plain CAM network (AMR's stage A, its spotlight branch) |
| train | `model.keras`, `train_log.csv`: the method's model |
| cams | `cams/<id>.npz` for the `[cams]` split (train by default, as the papers score seeds) |
| ir_labels | `ir_labels/<id>.png`: confident labels for IRNet (`[ir_labels]`) |
| train_irn | `irn.keras`: IRNet's boundary branch (`[irn]`) |
| pseudo_labels | `pseudo_labels/<id>.png` (`[pseudo_labels]`; mode "random_walk" uses `irn.keras`, "online" the frozen-CLIP methods' own) |
| train_seg | `segmenter.keras`: DeepLab-v2 on the pseudo-labels (`[segmentation]`) |
| predict | `predictions/<id>.png` (+ `overlays/`) for the `[predict]` split (val by default), from `segmenter.keras` when the method trains one, else `model.keras` |
| train_student | only with a `[student]` table: `student_<arch>.keras`, a compact keras-hub segmenter trained on the pseudo-labels (`wsss_keras.pipelines.student`), and `student_predictions/<id>.png`, its single-view predictions on the `[predict]` split |
| evaluate | `metrics.json`: CAM mIoU (best background threshold of a sweep), pseudo-label, segmentation and student mIoU, where ground truth exists |
"""

import json
import os

from wsss_keras.pipelines.fitting import MODEL_FILE
from wsss_keras.pipelines.student import STUDENT_PREDICTIONS, student_arch
from wsss_keras.recipes import recipe_error, section, with_steps

STAGES = (
    "superpixels", "train_clip", "train_dino", "train_cam", "train", "cams", "ir_labels", "train_irn", "pseudo_labels", "train_seg",
    "predict", "train_student", "evaluate",
)
_IRN_PIPELINE = ("train", "cams", "ir_labels", "train_irn", "pseudo_labels", "train_seg", "predict", "evaluate")
_SINGLE_STAGE = ("train", "cams", "pseudo_labels", "predict", "evaluate")
METHOD_STAGES = {
    "toco": _SINGLE_STAGE,
    "amr": ("train_cam",) + _IRN_PIPELINE,
    "ssc": ("superpixels",) + _IRN_PIPELINE,
    "weclip": ("train_clip",) + _SINGLE_STAGE,
    "ssr": ("superpixels", "train_clip", "train_dino") + _SINGLE_STAGE,
}


def method_stages(recipe):
    """The stages `wsss run` runs for the recipe, in order: its method's, and train_student
    before evaluate when the recipe has a `[student]` table."""
    stages = METHOD_STAGES[recipe["recipe"]["method"]]
    if "student" in recipe:
        stages = stages[:-1] + ("train_student",) + stages[-1:]
    return stages


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
    scored = (("pseudo_labels", "pseudo_labels", seed_split), ("segmentation", "predictions", predict_split),
              ("student", STUDENT_PREDICTIONS, predict_split))
    for key, folder, split in scored:
        dataset = open_split(data_dir, split)
        truth = ground_truth_dir(dataset)
        path = os.path.join(out_dir, folder)
        if truth and os.path.isdir(path):
            scores, count = score_folders(path, truth, dataset.class_names, dataset.names)
            metrics[key] = {"split": split, "images": count, **scores.as_dict()}
            if key == "student":
                metrics[key]["arch"] = student_arch(recipe)
            echo(f"[evaluate] {key.replace('_', '-')} on {split} ({count} images): mIoU {100 * scores.miou:.1f}")
            echo(scores.table())
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    return metrics


class _Run:
    """What every stage of one `run_recipe` call reads: the recipe, the data, the run folder,
    the command's options, and the models the run has loaded so far."""

    def __init__(self, recipe, data, out_dir, weights, steps, overwrite, echo, progress):
        self.recipe, self.data, self.out_dir = recipe, data, out_dir
        self.weights, self.steps, self.overwrite = weights, steps, overwrite
        self.echo, self.progress = echo, progress
        self.cam_split = section(recipe, "cams").get("split", "train")
        self._loaded = {}

    def saved(self, file_name):
        """The run's model `file_name`, loaded once per run."""
        from wsss_keras.pipelines.model_io import load_model

        if file_name not in self._loaded:
            self._loaded[file_name] = load_model(self.path(file_name))
        return self._loaded[file_name]

    def split_of(self, table, fallback="train"):
        """The dataset of `[table] split` (default `fallback`), opened once per run."""
        from wsss_keras.data.layouts import open_split

        return open_split(self.data, section(self.recipe, table).get("split", fallback))

    def path(self, *parts):
        return os.path.join(self.out_dir, *parts)

    def skip_existing(self, file_name, stage):
        """True (and say so) when a training stage's output exists and is not to be redone."""
        path = self.path(file_name)
        if os.path.isfile(path) and not self.overwrite:
            self.echo(f"[{stage}] {path} exists; skipping (--overwrite retrains)")
            return True
        return False


def _superpixels(run):
    from wsss_keras.pipelines.superpixels import make_regions, make_superpixels

    make_superpixels(run.recipe, run.data, run.out_dir, progress=run.progress("superpixels"), overwrite=run.overwrite, echo=run.echo)
    if run.recipe["recipe"]["method"] == "ssr":
        make_regions(run.recipe, run.data, run.out_dir, progress=run.progress("regions"), overwrite=run.overwrite, echo=run.echo)


def _train_clip(run):
    from wsss_keras.pipelines.weclip import CLIP_FILE, train_clip

    if not run.skip_existing(CLIP_FILE, "train-clip"):
        train_clip(run.recipe, run.data, run.out_dir, steps=run.steps, echo=run.echo)


def _train_dino(run):
    from wsss_keras.pipelines.dino import DINO_FILE, train_dino

    if not run.skip_existing(DINO_FILE, "train-dino"):
        train_dino(run.recipe, run.data, run.out_dir, steps=run.steps, echo=run.echo)


def _train_cam(run):
    from wsss_keras.pipelines.amr import CAM_NETWORK_FILE, train_cam_network

    if not run.skip_existing(CAM_NETWORK_FILE, "train-cam"):
        train_cam_network(run.recipe, run.data, run.out_dir, weights=run.weights, steps=run.steps, echo=run.echo)


def _train(run):
    from wsss_keras.pipelines.train import train

    if not run.skip_existing(MODEL_FILE, "train"):
        train(run.recipe, run.data, run.out_dir, weights=run.weights, steps=run.steps, echo=run.echo)


def _cams(run):
    from wsss_keras.pipelines.cams import compute_cams

    settings = section(run.recipe, "cams")
    dataset = run.split_of("cams")
    written = compute_cams(
        run.saved(MODEL_FILE), dataset, run.path("cams"), scales=settings.get("scales", (1.0, 0.5, 1.5)),
        flip=settings.get("flip", True), resize=settings.get("resize"), progress=run.progress("cams"),
        overwrite=run.overwrite, adversarial=settings.get("adversarial"),
    )
    run.echo(f"[cams] {written} computed, {len(dataset) - written} already there ({dataset.description})")


def _ir_labels(run):
    from wsss_keras.pipelines.ir_labels import make_ir_labels

    settings = section(run.recipe, "ir_labels")
    dataset = run.split_of("ir_labels", run.cam_split)
    written = make_ir_labels(
        dataset, run.path("cams"), run.path("ir_labels"),
        fg_threshold=settings.get("fg_threshold", 0.60), bg_threshold=settings.get("bg_threshold", 0.33),
        crf=settings.get("crf", True), progress=run.progress("ir-labels"), overwrite=run.overwrite,
    )
    run.echo(f"[ir-labels] {written} written ({dataset.description})")


def _train_irn(run):
    from wsss_keras.pipelines.irn import IRN_FILE, train_irn

    if not run.skip_existing(IRN_FILE, "train-irn"):
        train_irn(run.recipe, run.data, run.out_dir, weights=run.weights, steps=run.steps, echo=run.echo)


def _pseudo_labels(run):
    settings = section(run.recipe, "pseudo_labels")
    dataset = run.split_of("pseudo_labels", run.cam_split)
    mode = settings.get("mode", "par")
    common = {"progress": run.progress("pseudo-labels"), "overwrite": run.overwrite}
    if mode == "online":
        from wsss_keras.pipelines.weclip import make_online_pseudo_labels

        regions = None
        if run.recipe["recipe"]["method"] == "ssr":
            from wsss_keras.pipelines.ssr import region_cache

            regions = region_cache(run.recipe, run.out_dir)
        written = make_online_pseudo_labels(
            run.saved(MODEL_FILE), dataset, run.path("pseudo_labels"), regions=regions, **common,
        )
    elif mode == "random_walk":
        from wsss_keras.pipelines.irn import IRN_FILE, walk_pseudo_labels, walk_settings

        written = walk_pseudo_labels(
            run.saved(IRN_FILE), dataset, run.path("cams"), run.path("pseudo_labels"), **common,
            **walk_settings(run.recipe),
        )
    else:
        from wsss_keras.pipelines.pseudo_labels import make_pseudo_labels

        options = {key: settings[key] for key in ("high", "low", "down_scale") if key in settings}
        written = make_pseudo_labels(dataset, run.path("cams"), run.path("pseudo_labels"), mode=mode, **common, **options)
    run.echo(f"[pseudo-labels] {written} written ({mode})")


def _train_seg(run):
    from wsss_keras.backbones.registry import is_random
    from wsss_keras.pipelines.segmentation import SEGMENTER_FILE, train_segmenter

    if not run.skip_existing(SEGMENTER_FILE, "train-seg"):
        # --weights is the method's backbone; DeepLab's ResNet-101 takes [segmentation] weights,
        # unless the whole run is untrained.
        weights = run.weights if is_random(run.weights) else None
        train_segmenter(run.recipe, run.data, run.out_dir, weights=weights, steps=run.steps, echo=run.echo)


def _predict(run):
    from wsss_keras.pipelines.predict import predict_folder
    from wsss_keras.pipelines.segmentation import SEGMENTER_FILE

    settings = section(run.recipe, "predict")
    dataset = run.split_of("predict", "val")
    predictor = SEGMENTER_FILE if "train_seg" in method_stages(run.recipe) else MODEL_FILE
    written = predict_folder(
        run.saved(predictor), dataset, run.path("predictions"), scales=settings.get("scales", (1.0,)),
        flip=settings.get("flip", False), overlay=settings.get("overlay", True), progress=run.progress("predict"),
        overwrite=run.overwrite, model_name=predictor, crf=settings.get("crf"),
        flip_merge=settings.get("flip_merge", "sum"), scale_merge=settings.get("scale_merge", "max"),
        resize_long=settings.get("resize_long"),
    )
    run.echo(f"[predict] {written} predicted with {predictor} ({dataset.description})")


def _train_student(run):
    from wsss_keras.backbones.registry import is_random
    from wsss_keras.pipelines.predict import predict_folder
    from wsss_keras.pipelines.student import student_file, train_student

    arch = student_arch(run.recipe)
    settings = {key: value for key, value in section(run.recipe, "student").items() if key not in ("arch", "weights")}
    preset = section(run.recipe, "student").get("weights")
    if not run.skip_existing(student_file(arch), "train-student"):
        # `--weights random`: the whole run untrained, the student's ImageNet preset too.
        preset = None if is_random(run.weights) else preset
        train_student(run.out_dir, run.data, arch, student_weights=preset, settings=settings, echo=run.echo)
    # One view, no CRF: what the student does once exported.
    dataset = run.split_of("predict", "val")
    written = predict_folder(run.saved(student_file(arch)), dataset, run.path(STUDENT_PREDICTIONS), overlay=False,
                             progress=run.progress("student"), overwrite=run.overwrite, model_name=student_file(arch))
    run.echo(f"[train-student] {written} predicted with {student_file(arch)} ({dataset.description})")


def _evaluate(run):
    return evaluate_run(run.out_dir, run.data, run.recipe, run.echo)


def _check_student_settings(recipe):
    """`[student] arch`, checked before any stage runs (the student trains last)."""
    from wsss_keras.methods.student import ARCHS

    arch = student_arch(recipe)
    if arch not in ARCHS:
        raise recipe_error(recipe, f"[student] arch = {arch!r}: unknown student architecture; choose one of "
                                   f"{', '.join(ARCHS)}.")


def _check_predict_settings(recipe):
    """`[predict]`'s CRF and merges, checked before any stage runs: a wrong value would
    otherwise stop the run at its last stage, after the training."""
    from wsss_keras.ops.crf import segmentation_crf
    from wsss_keras.pipelines.inference import MERGES

    settings = section(recipe, "predict")
    try:
        segmentation_crf(settings.get("crf"))
    except ValueError as error:
        raise recipe_error(recipe, f"[predict] {error}") from None
    for key, default in (("flip_merge", "sum"), ("scale_merge", "max")):
        if settings.get(key, default) not in MERGES:
            raise recipe_error(recipe, f"[predict] {key} = {settings[key]!r}: choose one of {', '.join(MERGES)}.")


# One function per stage, run in `STAGES` order whatever order they were asked in.
_STAGE_FUNCTIONS = {
    "superpixels": _superpixels, "train_clip": _train_clip, "train_dino": _train_dino, "train_cam": _train_cam, "train": _train, "cams": _cams,
    "ir_labels": _ir_labels, "train_irn": _train_irn, "pseudo_labels": _pseudo_labels, "train_seg": _train_seg,
    "predict": _predict, "train_student": _train_student, "evaluate": _evaluate,
}


def run_recipe(recipe, data_dir, out_dir, weights=None, stages=None, steps=None, overwrite=False, echo=print, progress=None,
               meter=None):
    """Run the recipe's `stages` (default: its method's, `method_stages`) into `out_dir`;
    returns the metrics dict.

    Args:
        data_dir: the dataset folder, or a `DatasetFolder` (a smoke run's, holding a few images).
        weights: local pretrained weights of the method's backbone (for AMR the ResNet-50 of the
            CAM networks and of IRNet; the segmentation network's come from `[segmentation]`).
        steps: train every stage for this many steps, with what the recipe counts in steps scaled
            to match (`wsss_keras.recipes.with_steps`).
        progress: optional factory label -> callable(done, total) for per-image stages.
        meter: optional factory stage -> context manager wrapped around each stage (the smoke
            run's measurements, `pipelines.smoke`).
    """
    import contextlib

    from wsss_keras.data.layouts import DatasetFolder

    recipe = with_steps(recipe, steps)
    stages = method_stages(recipe) if stages is None else tuple(stages)
    online = section(recipe, "pseudo_labels").get("mode") == "online"
    if online and recipe["recipe"]["method"] not in ("weclip", "ssr"):
        # Checked before any stage runs, so a long run does not fail at its fourth stage.
        raise recipe_error(recipe, "[pseudo_labels] mode = \"online\" is WeCLIP's and SSR's; choose \"par\" or \"random_walk\".")
    if "predict" in stages:
        _check_predict_settings(recipe)
    if "train_student" in stages:
        _check_student_settings(recipe)
    os.makedirs(out_dir, exist_ok=True)
    # One DatasetFolder handed to every stage, so each split is opened once per run.
    data = data_dir if isinstance(data_dir, DatasetFolder) else DatasetFolder(data_dir)
    run = _Run(recipe, data, out_dir, weights, steps, overwrite, echo, progress or (lambda label: None))
    meter = meter or (lambda stage: contextlib.nullcontext())
    metrics = {}
    for stage in STAGES:
        if stage in stages:
            with meter(stage):
                metrics = _STAGE_FUNCTIONS[stage](run) or metrics
    return metrics
