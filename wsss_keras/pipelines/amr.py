"""AMR's two training stages: the plain CAM network (stage A), then AMR itself (stage B).

- `train_cam_network` (`wsss run` stage `train_cam`): a ResNet CAM classifier (`CamNetwork`)
  trained with the recipe's `[cam_network]` table; saved as `cam_network.keras`. It is the
  plain-CAM baseline AMR is compared with, and AMR's spotlight branch.
- `train_amr` (stage `train`, what `wsss train` runs for an AMR recipe): the spotlight branch
  (the stage-A network, backbone frozen) and the compensation branch (a ResNet with AMMs),
  trained with `[train]` and `[amr]`; saved as `model.keras`, whose `cam_maps` are the fused
  (recalibrated) CAMs the later stages use.

Backbones come from `[model]` (`arch`, `backbone` = ResNet arguments, `weights`, or `--weights`)
over AMR's defaults (output stride 16 without dilation, IRN's FixedBatchNorm, frozen stem;
spec methods/amr.md §2.2). Without pretrained weights, `[amr] init_compensation =
"cam_network"` starts the compensation backbone from the stage-A network: the CPU recipes'
stand-in for the ImageNet initialisation of the paper. `--weights random` builds every ResNet
untrained and counts as pretrained weights for that choice: the recipe's own code path runs.
"""

import os

from wsss_keras.backbones.registry import is_random, weights_origin
from wsss_keras.pipelines.cam_backbone import build_backbone
from wsss_keras.pipelines.fitting import (
    MODEL_FILE,
    fit_steps,
    make_optimizer,
    saved_recipe,
)
from wsss_keras.recipes import recipe_error, section
from wsss_keras.step_counts import default_steps

CAM_NETWORK_FILE = "cam_network.keras"
# AMR's train_cam / train_amr with IRN's PolyOptimizer (spec §3.1-3.3): SGD, lr 0.01, poly 0.9,
# wd 1e-4 and the momentum the reference really runs with (1e-4, see IRN_DEFAULTS).
AMR_OPTIMIZER = {
    "optimizer": "sgd", "learning_rate": 0.01, "momentum": 1e-4, "weight_decay": 1e-4, "warmup_steps": 0, "power": 0.9,
}
AMR_KNOBS = ("cps_mode", "cls_weight_spotlight", "cls_weight_compensation", "cps_weight", "amm_reduction", "cam_branch_weights")


def classification_loader(recipe, table, dataset, cutout_default=0):
    """The loader of a classification stage: IRN's long-side resize, flip, crop, cutout."""
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import CamTrainTransform

    settings = section(recipe, table)
    seed = int(settings.get("seed", section(recipe, "train").get("seed", 0)))
    transform = CamTrainTransform(
        crop_size=int(settings.get("crop_size", 512)), long_side=tuple(settings.get("long_side", (320, 640))),
        cutout_count=int(settings.get("cutout_count", cutout_default)), cutout_size=int(settings.get("cutout_size", 128)),
    )
    return SegmentationLoader(
        dataset, int(settings.get("batch_size", 16)), transform, shuffle=True, seed=seed, drop_remainder=True,
        workers=int(settings.get("workers", 1)),
    )


def train_cam_network(recipe, data_dir, out_dir, weights=None, steps=None, echo=print):
    """Train the plain CAM network of `[cam_network]` (AMR's stage A); returns its path.

    Defaults are AMR's `train_cam`: 8 epochs of batch 16 (5,288 steps on VOC train_aug), crop
    512, cutout 3 x 128, lr 0.01 with the classifier at 10x, poly 0.9, wd 1e-4.
    """
    import keras

    from wsss_keras.data.layouts import open_split
    from wsss_keras.methods.amr import CamNetwork

    settings = section(recipe, "cam_network")
    steps = int(steps or settings.get("steps", default_steps("amr", "cam_network")))
    keras.utils.set_random_seed(int(settings.get("seed", section(recipe, "train").get("seed", 0))))
    dataset = open_split(data_dir, settings.get("split", "train"))
    loader = classification_loader(recipe, "cam_network", dataset, cutout_default=3)
    if is_random(weights):
        echo(f"[train-cam] backbone: {weights_origin(weights)}")
    try:
        model = CamNetwork(
            build_backbone(recipe, "cam_network", weights, name="cam_backbone"), dataset.num_classes - 1, class_names=dataset.class_names,
            recipe=saved_recipe(recipe),
        )
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[cam_network] {error}") from None
    model.compile(optimizer=make_optimizer(recipe, "cam_network", steps, model, defaults=AMR_OPTIMIZER))
    return fit_steps(
        model, loader, steps, out_dir, CAM_NETWORK_FILE, recipe, stage="train-cam", echo=echo,
        summary={"batch_size": loader.batch_size, "images": len(dataset)},
    )


def train_amr(recipe, data_dir, out_dir, weights=None, steps=None, echo=print):
    """Train AMR (stage B) from the run's `cam_network.keras`; returns the path of `model.keras`.

    Defaults are AMR's `train_amr`: 8 epochs of batch 16 (5,288 steps), crop 512, no cutout,
    lr 0.01 with the compensation backbone at 10x (the reference's inverted groups), wd 1e-4.
    """
    import keras

    from wsss_keras.data.layouts import open_split
    from wsss_keras.methods.amr import AMR
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.segmentation import init_backbone_from

    settings = section(recipe, "train")
    knobs = section(recipe, "amr")
    steps = int(steps or settings.get("steps", default_steps("amr", "train")))
    keras.utils.set_random_seed(int(settings.get("seed", 0)))
    spotlight_file = os.path.join(out_dir, CAM_NETWORK_FILE)
    if not os.path.isfile(spotlight_file):
        raise recipe_error(
            recipe, f"AMR's spotlight branch is the stage-A CAM network, and {spotlight_file} does not exist; "
            "train it first with `wsss train-cam` on the same --out (`wsss run` does both).",
        )
    dataset = open_split(data_dir, settings.get("split", "train"))
    loader = classification_loader(recipe, "train", dataset)
    compensation = build_backbone(recipe, "amr", weights, name="compensation_backbone")
    if is_random(weights):
        echo(f"[train] compensation backbone: {weights_origin(weights)}")
    # `--weights random` (RANDOM_WEIGHTS, truthy) counts as weights here: the compensation backbone
    # keeps its own (untrained) initialisation as a pretrained one would, so a smoke run of the
    # paper recipe takes the paper's code path instead of the CPU recipes' init_compensation.
    if not (weights or section(recipe, "model").get("weights")):
        init_backbone_from(recipe, "amr", knobs.get("init_compensation"), out_dir, compensation, echo, stage="train")
    try:
        model = AMR(
            load_model(spotlight_file), compensation, dataset.num_classes - 1, class_names=dataset.class_names,
            recipe=saved_recipe(recipe), **{key: knobs[key] for key in AMR_KNOBS if key in knobs},
        )
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[amr] {error}") from None
    model.compile(optimizer=make_optimizer(recipe, "train", steps, model, defaults=AMR_OPTIMIZER))
    return fit_steps(
        model, loader, steps, out_dir, MODEL_FILE, recipe, stage="train", echo=echo,
        summary={"batch_size": loader.batch_size, "images": len(dataset), "spotlight": spotlight_file},
    )
