"""`wsss train`: build a method's model from a recipe and train it on a dataset folder.

The trained model is saved as one `.keras` file (weights, architecture, class names, the
recipe) that loads on every backend; `train_log.csv` holds the per-epoch losses.
"""

import json
import math
import os
import time

from wsss_keras.errors import RecipeError, WSSSError
from wsss_keras.recipes import section

MODEL_FILE = "model.keras"


def _recipe_error(recipe, error):
    return RecipeError(f"{recipe['recipe'].get('path', '<recipe>')}: {error}")


def build_encoder(model_settings, weights, stem, recipe):
    """The ViT encoder: a backbone arch loaded from local weights, or an explicit encoder table."""
    from wsss_keras.backbones import registry
    from wsss_keras.backbones.vit.vit_encoder import ViTEncoder

    backbone = model_settings.get("backbone")
    if backbone:
        weights = weights or model_settings.get("weights")
        if not weights:
            raise _recipe_error(
                recipe,
                f"backbone {backbone!r} trains from pretrained weights: pass --weights PATH (a local timm/Hugging "
                "Face/keras-hub checkpoint; see the recipe's notes) or set [model] weights.",
            )
        return registry.load_pretrained(weights, backbone, **dict(model_settings.get("encoder", {})))
    encoder_settings = dict(model_settings.get("encoder", {}))
    if not encoder_settings:
        raise _recipe_error(recipe, "[model] needs a backbone (with weights) or an encoder table.")
    encoder_settings.setdefault("image_channels", stem.output_channels if stem is not None else 3)
    try:
        return ViTEncoder(**encoder_settings)
    except (TypeError, ValueError) as error:
        raise _recipe_error(recipe, f"[model.encoder] {error}") from None


def build_model(recipe, dataset, weights=None):
    """The method's untrained model for `dataset`'s classes."""
    from wsss_keras.backbones.conv_stem import ConvStem
    from wsss_keras.methods.doei import DOEI
    from wsss_keras.methods.toco import ToCo

    model_settings = section(recipe, "model")
    train_settings = section(recipe, "train")
    try:
        stem = ConvStem(**model_settings["stem"]) if model_settings.get("stem") else None
        doei = DOEI(**recipe["doei"]) if "doei" in recipe else None
    except (TypeError, ValueError) as error:
        raise _recipe_error(recipe, error) from None
    encoder = build_encoder(model_settings, weights, stem, recipe)
    saved_recipe = {name: table for name, table in recipe.items()}
    saved_recipe["recipe"] = {key: value for key, value in recipe["recipe"].items() if key != "path"}
    try:
        return ToCo(
            encoder,
            dataset.num_classes - 1,
            stem=stem,
            aux_layer=model_settings.get("aux_layer", -3),
            decoder_channels=model_settings.get("decoder_channels", 512),
            decoder_dilation=model_settings.get("decoder_dilation", 5),
            projection=model_settings.get("projection", (2048, 256, 1024)),
            losses=section(recipe, "losses"),
            doei=doei,
            max_steps=train_settings.get("steps", 20000),
            pooling=model_settings.get("pooling", "max"),
            class_names=dataset.class_names,
            recipe=saved_recipe,
            seed=train_settings.get("seed", 0),
        )
    except (TypeError, ValueError) as error:
        raise _recipe_error(recipe, error) from None


def step_progress(steps, echo, every):
    """A Keras callback that prints the losses every `every` steps with elapsed time and ETA,
    and stops training after `steps` steps."""
    import keras

    class StepProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.done, self.start = 0, None

        def on_train_begin(self, logs=None):
            self.start = self.start or time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            if self.done % every == 0 or self.done == steps:
                elapsed = time.perf_counter() - self.start
                eta = elapsed / self.done * (steps - self.done)
                losses = " ".join(f"{key.replace('_loss', '')} {float(value):.3f}" for key, value in sorted((logs or {}).items()))
                echo(f"[train] step {self.done}/{steps} {losses} ({elapsed:.0f} s, ETA {eta:.0f} s)")
            if self.done >= steps:
                self.model.stop_training = True

    return StepProgress()


def train(recipe, data_dir, out_dir, weights=None, steps=None, echo=print):
    """Train the recipe's model on `data_dir` and save it to `out_dir/model.keras`.

    Args:
        recipe: a loaded recipe (`wsss_keras.recipes.load_recipe`).
        data_dir: a dataset folder (VOC or COCO layout, or the synthetic data).
        out_dir: the run folder.
        weights: local pretrained backbone weights (overrides the recipe's).
        steps: override the recipe's number of steps (for smoke runs).

    Returns:
        the path of the saved model.
    """
    import keras

    from wsss_keras.data.dataset import open_dataset
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import ToCoTrainTransform
    from wsss_keras.training.optimizers import GroupedAdamW
    from wsss_keras.training.schedules import PolyWarmup

    settings = section(recipe, "train")
    steps = int(steps or settings.get("steps", 20000))
    seed = int(settings.get("seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = open_dataset(data_dir, settings.get("split", "train"))
    try:
        transform = ToCoTrainTransform(
            crop_size=settings.get("crop_size", 448),
            scale_range=tuple(settings.get("scale_range", (0.5, 2.0))),
            **dict(settings.get("augment", {})),
        )
    except TypeError as error:
        raise _recipe_error(recipe, f"[train] augment: {error}") from None
    batch_size = int(settings.get("batch_size", 4))
    loader = SegmentationLoader(
        dataset, batch_size, transform, shuffle=True, seed=seed, drop_remainder=True,
        workers=int(settings.get("workers", 1)),
    )
    model = build_model(recipe, dataset, weights)
    schedule = PolyWarmup(
        float(settings.get("learning_rate", 6e-5)), int(settings.get("warmup_steps", 1500)), steps,
        power=float(settings.get("power", 0.9)),
    )
    model.compile(optimizer=GroupedAdamW(
        schedule, lr_multipliers=dict(settings.get("lr_multipliers", {})),
        weight_decay=float(settings.get("weight_decay", 0.01)),
    ))
    os.makedirs(out_dir, exist_ok=True)
    epochs = math.ceil(steps / len(loader))
    echo(
        f"[train] {recipe['recipe']['name']}: {steps} steps of {batch_size} images ({epochs} epochs of "
        f"{len(dataset)} images), backend {keras.backend.backend()}"
    )
    progress = step_progress(steps, echo, every=max(1, steps // 20))
    logger = keras.callbacks.CSVLogger(os.path.join(out_dir, "train_log.csv"))
    start = time.perf_counter()
    history = model.fit(loader, epochs=epochs, verbose=0, callbacks=[progress, logger])
    seconds = time.perf_counter() - start
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise WSSSError(f"training diverged (loss {losses[-1]}); lower [train] learning_rate in {recipe['recipe'].get('path')}.")
    path = os.path.join(out_dir, MODEL_FILE)
    model.save(path)
    summary = {
        "recipe": recipe["recipe"]["name"], "backend": keras.backend.backend(), "steps": steps,
        "batch_size": batch_size, "train_seconds": round(seconds, 1),
        "final": {key: float(values[-1]) for key, values in history.history.items()},
    }
    with open(os.path.join(out_dir, "train_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    echo(f"[train] saved {path}")
    return path
