"""SSC's CAM network, trained after the `superpixels` stage (`wsss_keras.pipelines.superpixels`,
shared with SSR) has cached the training split's SLIC superpixels.

- `train_ssc` (stage `train`): the DRS classifier with the reconstruction decoder and
  activation self-modulation (`wsss_keras.methods.ssc.SSC`), from `[model]`, `[ssc]` and
  `[train]`; saved as `model.keras`. Its CAMs then go through the IRN stages AMR uses (IR labels,
  IRNet, random walk) and the segmentation network.

Optimisers (spec §3.1): one SGD for the network (IRN's PolyOptimizer: lr 0.1, classifier 10x,
wd 1e-4, the momentum it really runs with, 1e-4), and Adam for the decoder (`[ssc]
decoder_learning_rate` 5e-4, betas 0.5/0.999, poly 0.9), in one `GroupedSGDWithAdam`.

The perceptual loss network is VGG-19 with torchvision's ImageNet weights, read from the local
file `[ssc] loss_network_weights` (`vgg19-dcbb9e9d.pth`). CPU recipes without it set
`random_loss_network = true`: a narrow VGG-19 with frozen random weights, which still measures
local image structure but is not the paper's loss network (the recipe says so). `--weights
random` builds the recipe's VGG-19 (at its own width) untrained the same way, file or not.
"""

import os

from wsss_keras.pipelines.superpixels import superpixel_folder
from wsss_keras.recipes import recipe_error, section
from wsss_keras.step_counts import default_steps

# IRN's PolyOptimizer as SSC runs it (spec §3.1): backbone 0.1, classifier 1.0, wd 1e-4, momentum 1e-4.
SSC_OPTIMIZER = {
    "optimizer": "sgd", "learning_rate": 0.1, "momentum": 1e-4, "weight_decay": 1e-4, "warmup_steps": 0, "power": 0.9,
}
SSC_KNOBS = (
    "drs_delta", "drs_layer4", "drs_stage2", "frozen_stages", "reconstruction_weight", "decoder_widths",
    "perceptual_weights", "loss_network_width", "self_modulation_weight", "self_modulation_threshold", "erosion_size",
    "self_modulation_stride",
)


def self_modulation_start(recipe, steps):
    """ASM's first step: `[ssc] self_modulation_start` (a step), or a fraction of the training
    (`self_modulation_start_fraction`, default 0.2: the code's 2 warm-up epochs of 10)."""
    knobs = section(recipe, "ssc")
    if "self_modulation_start" in knobs:
        return int(knobs["self_modulation_start"])
    return int(round(float(knobs.get("self_modulation_start_fraction", 0.2)) * steps))


def he_initialise(network):
    """He-normal kernels and zero biases for a random loss network: its ReLU features keep their
    scale through the depth (Keras's default Glorot init halves their variance at every layer,
    so relu5_1 would be near zero and the loss near constant). Seeded by keras' global seed."""
    import keras
    import numpy as np

    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = keras.initializers.HeNormal(seed=keras.random.SeedGenerator())(layer.kernel.shape)
            layer.kernel.assign(kernel)
            if layer.bias is not None:
                layer.bias.assign(np.zeros(layer.bias.shape, "float32"))


def loss_network_source(recipe, weights=None):
    """The local VGG-19 file of `[ssc] loss_network_weights`, or None for a random network
    (`random_loss_network = true`, or no reconstruction), or `registry.RANDOM_WEIGHTS` when the
    run's `weights` is (`--weights random`: untrained, the file need not exist); checked before
    anything is built."""
    from wsss_keras.backbones.registry import RANDOM_WEIGHTS, is_random

    knobs = section(recipe, "ssc")
    if not float(knobs.get("reconstruction_weight", 1.0)):
        return None
    if is_random(weights):
        return RANDOM_WEIGHTS
    path = knobs.get("loss_network_weights")
    if path:
        if not os.path.isfile(path):
            raise recipe_error(recipe, f"[ssc] loss_network_weights = {path!r}: no such file (torchvision's vgg19-dcbb9e9d.pth).")
        return path
    if knobs.get("random_loss_network"):
        return None
    raise recipe_error(
        recipe, "SSC's perceptual loss runs on torchvision's ImageNet VGG-19: set [ssc] loss_network_weights to a "
        "local vgg19-dcbb9e9d.pth (or random_loss_network = true to train with a random, frozen VGG).",
    )


def load_loss_network(model, path, echo=print):
    """Load the torchvision VGG-19 at `path` into the perceptual loss, or He-initialise a random
    one (`path` None, or `registry.RANDOM_WEIGHTS`)."""
    from wsss_keras.backbones.registry import is_random, weights_origin
    from wsss_keras.backbones.vgg import load_torchvision_vgg19

    if model.perceptual is None:
        return
    if is_random(path):
        he_initialise(model.perceptual.network)
        echo(f"[train] perceptual loss network: VGG-19 at width {model.loss_network_width}, "
             f"{weights_origin(path)} frozen weights")
    elif path:
        load_torchvision_vgg19(model.perceptual.network, path)
        echo(f"[train] perceptual loss network: VGG-19 from {path}")
    else:
        he_initialise(model.perceptual.network)
        echo(f"[train] perceptual loss network: VGG-19 at width {model.loss_network_width}, random frozen weights")


def train_ssc(recipe, data_dir, out_dir, weights=None, steps=None, echo=print):
    """Train SSC's CAM network; returns the path of `model.keras`.

    Defaults are SSC's `train_cam` (spec §3.1, §10): 10 epochs of batch 6 (17,630 steps on VOC
    train_aug), crop 512, long side 320..640, flip, no cutout.
    """
    import keras

    from wsss_keras.backbones.registry import is_random, weights_origin
    from wsss_keras.data.layouts import open_split
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import CamTrainTransform
    from wsss_keras.methods.ssc import SSC
    from wsss_keras.ops.superpixels import SuperpixelCache
    from wsss_keras.pipelines.cam_backbone import build_backbone
    from wsss_keras.pipelines.fitting import (
        MODEL_FILE,
        fit_steps,
        make_optimizer,
        saved_recipe,
    )

    settings = section(recipe, "train")
    knobs = section(recipe, "ssc")
    steps = int(steps or settings.get("steps", default_steps("ssc", "train")))
    vgg_path = loss_network_source(recipe, weights)
    seed = int(settings.get("seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = open_split(data_dir, settings.get("split", "train"))
    modulating = float(knobs.get("self_modulation_weight", 1.0)) > 0
    cache = SuperpixelCache(superpixel_folder(recipe, out_dir)) if modulating else None
    transform = CamTrainTransform(
        crop_size=int(settings.get("crop_size", 512)), long_side=tuple(settings.get("long_side", (320, 640))),
    )
    item_maps = (lambda index: {"superpixels": cache.load(dataset.names[index])}) if cache else None
    loader = SegmentationLoader(
        dataset, int(settings.get("batch_size", 6)), transform, shuffle=True, seed=seed, drop_remainder=True,
        item_maps=item_maps, workers=int(settings.get("workers", 1)),
    )
    backbone = build_backbone(recipe, "ssc", weights, name="ssc_backbone")
    if is_random(weights):
        echo(f"[train] backbone: {weights_origin(weights)}")
    try:
        model = SSC(
            backbone, dataset.num_classes - 1, self_modulation_start=self_modulation_start(recipe, steps),
            num_superpixels=cache.num_segments if cache else None, class_names=dataset.class_names,
            recipe=saved_recipe(recipe), **{key: knobs[key] for key in SSC_KNOBS if key in knobs},
        )
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[ssc] {error}") from None
    load_loss_network(model, vgg_path, echo)
    adam_group = {
        "paths": model.decoder_paths, "learning_rate": float(knobs.get("decoder_learning_rate", 5e-4)),
        "beta_1": float(knobs.get("decoder_beta_1", 0.5)), "beta_2": float(knobs.get("decoder_beta_2", 0.999)),
    }
    model.compile(optimizer=make_optimizer(recipe, "train", steps, model, defaults=SSC_OPTIMIZER, adam_group=adam_group))
    return fit_steps(
        model, loader, steps, out_dir, MODEL_FILE, recipe, stage="train", echo=echo,
        summary={
            "batch_size": loader.batch_size, "images": len(dataset),
            "superpixels": cache.folder if cache else None, "self_modulation_start": model.self_modulation_start,
        },
    )
