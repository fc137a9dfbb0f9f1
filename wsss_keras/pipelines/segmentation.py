"""`wsss train-seg`: train the segmentation network (DeepLab-v2) on a run's pseudo-labels.

The multi-stage methods (AMR, SSC) end with a separate segmentation network trained on the
pseudo-labels their CAMs and IRN produced. Its settings live in the recipe's
`[segmentation]` table; the trained network is saved as `segmenter.keras` in the run folder,
next to the method's own model, and `wsss predict` / `wsss run` use it for predictions.

Without pretrained weights (the CPU recipes) the backbone can start from the run's CAM
network (`init_backbone = "cam_network"` or `"model"`): the synthetic-data stand-in for the
ImageNet initialisation every paper uses; the backbone's shape must then match that network's.
"""

import os

from wsss_keras.errors import WSSSError
from wsss_keras.recipes import labelled_split, recipe_error, section
from wsss_keras.step_counts import SEGMENTATION_STEPS

SEGMENTER_FILE = "segmenter.keras"

# deeplab-pytorch's configs/voc12.yaml (spec methods/amr.md 4.7).
SEGMENTATION_DEFAULTS = {
    "optimizer": "sgd", "learning_rate": 2.5e-4, "momentum": 0.9, "weight_decay": 5e-4, "warmup_steps": 0,
    "power": 0.9,
}


def build_segmenter(recipe, dataset, weights=None):
    """The untrained `DeepLabV2` of the recipe's `[segmentation]` table for `dataset`'s classes;
    `weights` = `registry.RANDOM_WEIGHTS` leaves its backbone untrained, over `[segmentation] weights`."""
    from wsss_keras.backbones.registry import is_random
    from wsss_keras.methods.segmenter import build_deeplab_v2

    settings = section(recipe, "segmentation")
    weights = weights or settings.get("weights")
    try:
        return build_deeplab_v2(
            dataset.num_classes,
            arch=settings.get("arch", "resnet101"),
            weights=None if is_random(weights) else weights,
            backbone_kwargs=dict(settings.get("backbone", {})),
            msc_scales=tuple(settings.get("msc_scales", (0.5, 0.75))),
            loss_resolution=settings.get("loss_resolution", "logits"),
            class_names=dataset.class_names,
            recipe={"recipe": {k: v for k, v in recipe["recipe"].items() if k != "path"}, "segmentation": settings},
        )
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[segmentation] {error}") from None


def copy_backbone(source_model, target_backbone, source_file, table="segmentation"):
    """Copy `source_model.backbone`'s weights into `target_backbone` (same block layout)."""
    source = getattr(source_model, "backbone", None)
    if source is None:
        raise WSSSError(f"{source_file}: {type(source_model).__name__} has no ResNet backbone to start from.")
    shapes = [tuple(w.shape) for w in source.weights], [tuple(w.shape) for w in target_backbone.weights]
    if shapes[0] != shapes[1]:
        raise WSSSError(
            f"{source_file}: its backbone ({len(shapes[0])} variables) does not match the [{table}] backbone "
            f"({len(shapes[1])}); give [{table}] backbone the same block_counts and base_width, or drop init_backbone."
        )
    for variable, value in zip(target_backbone.weights, source.get_weights()):
        variable.assign(value)


def label_map_loader(settings, dataset, seed, crop_size, batch_size):
    """The loader of a stage that trains on label maps (DeepLab, IRNet): random rescale
    (`scale_range`, default 0.5-1.5), flip, crop (labels padded with 255), no colour jitter.

    Args:
        settings: the stage's recipe table (`crop_size`, `scale_range`, `batch_size`, `workers`).
        dataset: a dataset view whose label maps are the training targets.
        crop_size, batch_size: defaults for the table's keys.
    """
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import TrainTransform

    transform = TrainTransform(
        crop_size=int(settings.get("crop_size", crop_size)), scale_range=tuple(settings.get("scale_range", (0.5, 1.5))),
        jitter=None,
    )
    return SegmentationLoader(
        dataset, int(settings.get("batch_size", batch_size)), transform, shuffle=True, seed=seed, with_label_maps=True,
        drop_remainder=True, workers=int(settings.get("workers", 1)),
    )


def init_backbone_from(recipe, table, start_from, out_dir, backbone, echo=print, stage="train-seg"):
    """Copy the backbone of the run folder's `<start_from>.keras` into `backbone` (no-op for None).

    The CPU recipes' stand-in for ImageNet weights: a later stage's ResNet starts from the run's
    own CAM network (`init_backbone = "cam_network"` in the stage's table).
    """
    from wsss_keras.pipelines.model_io import load_model

    if not start_from:
        return
    source_file = os.path.join(out_dir, f"{start_from}.keras")
    if not os.path.isfile(source_file):
        raise recipe_error(recipe, f"[{table}] init_backbone = {start_from!r}, but {source_file} does not exist.")
    copy_backbone(load_model(source_file), backbone, source_file, table)
    echo(f"[{stage}] backbone initialised from {source_file}")


def train_segmenter(recipe, data_dir, out_dir, label_dir=None, weights=None, steps=None, echo=print):
    """Train the `[segmentation]` network on the label maps in `label_dir`; returns the model path.

    Args:
        recipe: a loaded recipe with a `[segmentation]` table.
        data_dir: the dataset folder (images and image-level labels), or `wsss run`'s `DatasetFolder`.
        out_dir: the run folder (`segmenter.keras`, `segmenter_log.csv` go there).
        label_dir: the pseudo-labels (`<name>.png`); default `out_dir/pseudo_labels`.
        weights: a local ImageNet ResNet checkpoint for the backbone (overrides the recipe's);
            "random" (`registry.RANDOM_WEIGHTS`): untrained, and, as with a checkpoint, no
            `init_backbone` (the recipe's own code path).
        steps: override the recipe's number of steps (smoke runs).
    """
    import keras

    from wsss_keras.backbones.registry import is_random, weights_origin
    from wsss_keras.data.layouts import open_split
    from wsss_keras.pipelines.fitting import fit_steps, make_optimizer

    settings = section(recipe, "segmentation")
    steps = int(steps or settings.get("steps", SEGMENTATION_STEPS))
    seed = int(settings.get("seed", section(recipe, "train").get("seed", 0)))
    keras.utils.set_random_seed(seed)
    label_dir = label_dir or os.path.join(out_dir, "pseudo_labels")
    dataset = open_split(data_dir, labelled_split(recipe, "segmentation"))
    dataset = dataset.with_label_maps_from(label_dir, "pseudo-labels", made_by="the pseudo-label stage (wsss irn walk)")
    loader = label_map_loader(settings, dataset, seed, crop_size=321, batch_size=10)
    model = build_segmenter(recipe, dataset, weights)
    if is_random(weights):
        echo(f"[train-seg] backbone: {weights_origin(weights)}")
    if not (weights or settings.get("weights")):  # RANDOM_WEIGHTS counts as weights, as in AMR
        init_backbone_from(recipe, "segmentation", settings.get("init_backbone"), out_dir, model.backbone, echo)
    model.compile(optimizer=make_optimizer(recipe, "segmentation", steps, model, defaults=SEGMENTATION_DEFAULTS))
    return fit_steps(
        model, loader, steps, out_dir, SEGMENTER_FILE, recipe, stage="train-seg", echo=echo,
        summary={"batch_size": loader.batch_size, "images": len(dataset), "labels": label_dir},
    )
