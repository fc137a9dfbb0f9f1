"""`wsss irn train` and `wsss irn walk`: IRNet on confident labels, then random-walk pseudo-labels.

The IRN stages of the multi-stage methods (spec methods/amr.md §4.4-4.5), reading and writing
files in the run folder:

- `train_irn`: IRNet's boundary branch (`wsss_keras.methods.irn.IRNet`) trained on the
  confident labels of `ir_labels/` (`wsss irn labels`); saved as `irn.keras`. Settings: the
  recipe's `[irn]` table.
- `walk_pseudo_labels`: per image, the boundary map of IRNet (image + mirror), the run's CAMs
  shrunk to its stride-4 grid, raised to `power`, the random walk, and the label map with a
  background plane (`wsss_keras.ops.affinity.random_walk_labels`); written to
  `pseudo_labels/`. Settings: `[pseudo_labels]` with `mode = "random_walk"`.

The random walk reads the CAM files `wsss cams` wrote at the image size and bilinearly shrinks
them to the boundary grid (ceil(H/4) x ceil(W/4)); IRN keeps a separate stride-4 CAM summed
over scales at that size. Both are max-normalised per class before the walk.
"""

import os

import numpy as np

from wsss_keras.errors import DataError
from wsss_keras.recipes import labelled_split, recipe_error, section
from wsss_keras.step_counts import IRN_STEPS

IRN_FILE = "irn.keras"

# IRN's train_irn defaults with AMR's batch (spec §4.4): SGD on the PolyOptimizer's terms.
# momentum 1e-4 is what IRN's PolyOptimizer really runs with (it passes weight_decay where
# torch's SGD takes momentum; spec §3.3).
IRN_DEFAULTS = {
    "optimizer": "sgd", "learning_rate": 0.1, "momentum": 1e-4, "weight_decay": 1e-4, "warmup_steps": 0, "power": 0.9,
}
# make_sem_seg_labels in AMR (IRN uses power 1).
WALK_DEFAULTS = {"power": 1.5, "background": 0.25, "radius": 5, "beta": 10.0, "exp_times": 8}
IRN_BACKBONE = {"output_stride": 16, "dilation": "none", "frozen_batchnorm": "statistics"}


def build_irn(recipe, dataset, weights=None):
    """The untrained IRNet of the recipe's `[irn]` table (backbone from local weights when given;
    `registry.RANDOM_WEIGHTS` builds it untrained, over the recipe's `[irn] weights` too)."""
    from wsss_keras.backbones import registry, resnet
    from wsss_keras.methods.irn import IRNet

    settings = section(recipe, "irn")
    arch = settings.get("arch", "resnet50")
    backbone_kwargs = {**IRN_BACKBONE, **dict(settings.get("backbone", {}))}
    weights = weights or settings.get("weights")
    try:
        backbone = registry.load_pretrained(weights, arch, **backbone_kwargs) if weights else resnet.build(arch, **backbone_kwargs)
        return IRNet(
            backbone, radius=int(settings.get("radius", 10)), class_names=dataset.class_names,
            recipe={"recipe": {k: v for k, v in recipe["recipe"].items() if k != "path"}, "irn": settings},
        )
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[irn] {error}") from None


def train_irn(recipe, data_dir, out_dir, label_dir=None, weights=None, steps=None, echo=print):
    """Train IRNet on the confident labels in `label_dir` (default `out_dir/ir_labels`); returns
    the path of `irn.keras`.

    Args:
        weights: a local ImageNet ResNet checkpoint for the (frozen) backbone; overrides the
            recipe's `[irn] weights`. Without one, `[irn] init_backbone` may name a network of the
            run folder ("cam_network") to start from, the CPU recipes' stand-in for ImageNet.
            "random" (`registry.RANDOM_WEIGHTS`): an untrained backbone, and, as with a
            checkpoint, no `init_backbone` (the recipe's own code path).
        steps: override the recipe's number of steps (smoke runs).
    """
    import keras

    from wsss_keras.backbones import registry
    from wsss_keras.data.layouts import open_split
    from wsss_keras.pipelines.fitting import fit_steps, make_optimizer
    from wsss_keras.pipelines.segmentation import init_backbone_from, label_map_loader

    settings = section(recipe, "irn")
    steps = int(steps or settings.get("steps", IRN_STEPS))
    seed = int(settings.get("seed", section(recipe, "train").get("seed", 0)))
    keras.utils.set_random_seed(seed)
    label_dir = label_dir or os.path.join(out_dir, "ir_labels")
    dataset = open_split(data_dir, labelled_split(recipe, "irn"))
    dataset = dataset.with_label_maps_from(label_dir, "IR labels", made_by="the IR-label stage (wsss irn labels)")
    loader = label_map_loader(settings, dataset, seed, crop_size=512, batch_size=16)
    model = build_irn(recipe, dataset, weights)
    if registry.is_random(weights):
        echo(f"[train-irn] backbone: {registry.weights_origin(weights)}")
    if not weights:  # RANDOM_WEIGHTS counts as weights: the recipe's path with a checkpoint
        init_backbone_from(recipe, "irn", settings.get("init_backbone"), out_dir, model.backbone, echo, stage="train-irn")
    model.compile(optimizer=make_optimizer(recipe, "irn", steps, model, defaults=IRN_DEFAULTS))
    return fit_steps(
        model, loader, steps, out_dir, IRN_FILE, recipe, stage="train-irn", echo=echo,
        summary={"batch_size": loader.batch_size, "images": len(dataset), "labels": label_dir},
    )


def walk_settings(recipe):
    """The random walk's settings: `[pseudo_labels]` over AMR's defaults."""
    settings = section(recipe, "pseudo_labels")
    return {key: settings.get(key, default) for key, default in WALK_DEFAULTS.items()}


def walk_pseudo_labels(irn, dataset, cam_dir, out_dir, power=1.5, background=0.25, radius=5, beta=10.0, exp_times=8,
                       progress=None, overwrite=False):
    """Write random-walk pseudo-labels (`<image id>.png`) for every image of `dataset`.

    Args:
        irn: a trained `IRNet`.
        dataset: the split the CAMs were computed on.
        cam_dir: its CAM files (`wsss cams`).
        power: CAM exponent before the walk (AMR 1.5, IRN 1).
        background: the background plane after the walk (0.25).
        radius, beta, exp_times: the walk's neighbourhood radius, affinity exponent and number
            of squarings (2**exp_times steps).

    Returns:
        the number of label maps written (existing ones skipped unless `overwrite`).
    """
    from keras import ops

    from wsss_keras.data.imageio import write_label_map
    from wsss_keras.data.transforms import normalize
    from wsss_keras.ops.affinity import walk_to_labels
    from wsss_keras.pipelines.cams import run_per_image
    from wsss_keras.pipelines.inference import BoundaryMaps, RandomWalk
    from wsss_keras.pipelines.pseudo_labels import image_and_present_cams

    if not os.path.isdir(cam_dir):
        raise DataError(f"{cam_dir}: CAM folder not found; write it with `wsss cams`.")
    boundaries = BoundaryMaps(irn)
    walker = RandomWalk(power, radius, beta, exp_times)

    def work(index, paths):
        image, present, stack = image_and_present_cams(dataset, index, cam_dir)
        height, width = image.shape[:2]
        boundary = boundaries.predict_on_batch(normalize(image, irn.image_mean, irn.image_std)[None])
        boundary = ops.convert_to_numpy(boundary)[0]
        if len(present):
            propagated = walker.predict_on_batch((strided_cams(stack, boundary.shape)[None], boundary[None]))
            label_map = walk_to_labels(ops.convert_to_numpy(propagated)[0], present, (height, width), background)
        else:
            label_map = np.zeros((height, width), np.uint8)
        write_label_map(paths[0], label_map)

    return run_per_image(dataset.names, lambda name: [os.path.join(out_dir, f"{name}.png")], work, overwrite, progress)


def strided_cams(cams, size):
    """(H, W, k) CAMs bilinearly shrunk to `size` = (h, w) and max-normalised per class."""
    import cv2

    if cams.shape[-1] == 0:
        return np.zeros(tuple(size) + (0,), np.float32)
    small = cv2.resize(cams, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    small = small.reshape(tuple(size) + (cams.shape[-1],)).astype(np.float32)
    return small / (small.max(axis=(0, 1), keepdims=True) + 1e-5)
