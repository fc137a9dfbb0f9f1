"""SSR's DINO: the released DINO ViT-S/16, or a small ViT trained here DINO-style (`train_dino`).

`[dino] source` says which:
- "released" (the default): `[dino] weights`, DINO's `dino_deitsmall16_pretrain.pth` (a local
  file), built as `[dino] arch`;
- "train": the CPU recipe's stand-in, a `StemViT` trained self-supervised on the training
  images (`methods.dino_pretrain`) by the `train_dino` stage into `dino.keras`; its teacher is
  SSR's DINO. Keys: `vit` (the `StemViT`'s arguments, its stem's stride must be the CLIP's
  token stride), `steps`, `batch_size`, `learning_rate`, `warmup_steps`, `weight_decay`,
  `global_size`, `local_size`, `local_crops`, `global_scale`, `local_scale`, `prototypes`,
  `head_hidden`, `bottleneck`, `freeze_last_layer_steps`, `teacher_momentum`, `student_temperature`,
  `teacher_temperature`, `center_momentum`, `seed`.
"""

import os

from wsss_keras.recipes import recipe_error, section
from wsss_keras.step_counts import default_steps, default_warmup

DINO_FILE = "dino.keras"
SOURCES = ("released", "train")


def dino_source(recipe):
    """`[dino] source`, checked: "released" (default) or "train"."""
    source = section(recipe, "dino").get("source", "released")
    if source not in SOURCES:
        raise recipe_error(recipe, f"[dino] source = {source!r}; choose 'released' (DINO's file in [dino] weights) "
                                   "or 'train' (a small ViT trained here).")
    return source


def _multicrop_loader(dataset, batch_size, transform, seed, workers):
    """A `SegmentationLoader` whose inputs are `DINOPretrainer`'s views dict."""
    import numpy as np

    from wsss_keras.data.loader import SegmentationLoader

    class MultiCropLoader(SegmentationLoader):
        def batch_at(self, epoch, batch_index, order=None, shard=None):
            images, targets = super().batch_at(epoch, batch_index, order, shard)
            views = {"global_views": np.stack([images, targets.pop("global_view")], axis=1),
                     "local_views": targets.pop("local_views")}
            return views, targets

    return MultiCropLoader(dataset, batch_size, transform, shuffle=True, seed=seed, drop_remainder=True, workers=workers)


def train_dino(recipe, data_dir, out_dir, steps=None, echo=print):
    """Train the DINO-style ViT of `[dino]` (source "train") into `out_dir/dino.keras`; returns
    its path, or None when the recipe reads a released DINO (or none)."""
    import keras

    from wsss_keras.backbones.vit.stem_vit import StemViT
    from wsss_keras.data.layouts import open_split
    from wsss_keras.data.transforms import MultiCropTransform
    from wsss_keras.methods.dino_pretrain import DINOPretrainer
    from wsss_keras.pipelines.fitting import fit_steps, make_optimizer

    if dino_source(recipe) != "train":
        echo("[train-dino] the recipe reads a released DINO (or none); nothing to train")
        return None
    settings = section(recipe, "dino")
    steps = int(steps or settings.get("steps", default_steps(recipe["recipe"]["method"], "dino")))
    seed = int(settings.get("seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = open_split(data_dir, section(recipe, "train").get("split", "train"))
    try:
        backbone = StemViT(**dict(settings.get("vit", {})))
        model = DINOPretrainer(
            backbone, total_steps=steps, momentum=settings.get("teacher_momentum", 0.996),
            prototypes=settings.get("prototypes", 256), head_hidden=settings.get("head_hidden", 256),
            bottleneck=settings.get("bottleneck", 64), student_temperature=settings.get("student_temperature", 0.1),
            teacher_temperature=settings.get("teacher_temperature", 0.04),
            center_momentum=settings.get("center_momentum", 0.9),
            freeze_last_layer_steps=settings.get("freeze_last_layer_steps", 0),
            head_batch_norm=settings.get("head_batch_norm", False))
        transform = MultiCropTransform(
            global_size=int(settings.get("global_size", 96)), local_size=int(settings.get("local_size", 48)),
            local_crops=int(settings.get("local_crops", 4)), global_scale=tuple(settings.get("global_scale", (0.4, 1.0))),
            local_scale=tuple(settings.get("local_scale", (0.05, 0.4))))
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[dino] {error}") from None
    loader = _multicrop_loader(dataset, int(settings.get("batch_size", 32)), transform, seed,
                               int(settings.get("workers", 1)))
    # DINO's AdamW at 5e-4 x batch / 256 with a warm-up; weight decay 0.04 (its schedule's start).
    defaults = {"optimizer": "adamw", "learning_rate": 5e-4 * loader.batch_size / 256, "weight_decay": 0.04,
                "warmup_steps": default_warmup(recipe["recipe"]["method"], "dino"), "power": 1.0}
    model.compile(optimizer=make_optimizer(recipe, "dino", steps, None, defaults=defaults))
    return fit_steps(model, loader, steps, out_dir, DINO_FILE, recipe, stage="train-dino", echo=echo,
                     summary={"batch_size": loader.batch_size, "images": len(dataset),
                              "views": 2 + transform.local_crops})


def load_dino(recipe, echo=print, weights=None, out_dir="."):
    """The frozen DINO SSR reads, or None (no `[dino]` weights and not trained here): with
    source "train", the teacher of `out_dir/dino.keras`.

    `weights` is the run's `--weights`: only `registry.RANDOM_WEIGHTS` matters here (a path is
    CLIP's), and builds the recipe's released DINO untrained instead of reading its file.
    """
    import keras

    from wsss_keras.backbones import registry

    settings = section(recipe, "dino")
    if dino_source(recipe) == "train":
        path = os.path.join(out_dir, DINO_FILE)
        if not os.path.isfile(path):
            raise recipe_error(recipe, f"[dino] source = 'train' and {path} is not there; run the train_dino stage "
                                       "first (`wsss run` does, before train).")
        import wsss_keras.methods.dino_pretrain  # noqa: F401  (registers DINOPretrainer for loading)

        echo(f"[train] DINO attention from the ViT trained here ({path})")
        return keras.saving.load_model(path, compile=False, safe_mode=True).teacher
    path = settings.get("weights")
    if not path:
        echo("[train] no [dino] weights: the affinity is CLIP's attention alone")
        return None
    arch = settings.get("arch", "dino_vits16")
    if registry.is_random(weights):
        echo(f"[train] DINO attention from {registry.weights_origin(weights)}")
        return registry.build_untrained(arch, family_name="vit")
    if not os.path.isfile(path):
        raise recipe_error(recipe, f"[dino] weights = {path!r}: no such file (DINO's dino_deitsmall16_pretrain.pth).")
    from wsss_keras.backbones.vit.vit_weights import load_pretrained

    echo(f"[train] DINO attention from {path}")
    # A ViT arch name (dino_vits16) or a table of ViTEncoder arguments.
    return load_pretrained(path, arch)
