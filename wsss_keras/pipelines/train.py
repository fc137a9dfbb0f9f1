"""`wsss train`: build a method's model from a recipe and train it on a dataset folder.

The trained model is saved as one `.keras` file (weights, architecture, class names, the
recipe) that loads on every backend; `train_log.csv` holds the per-epoch losses.
"""

import json
import math
import os
import time

from wsss_keras.errors import WSSSError
from wsss_keras.recipes import recipe_error, recipe_source, section

MODEL_FILE = "model.keras"


def build_encoder(model_settings, weights, stem, recipe):
    """The ViT encoder: a backbone arch loaded from local weights, or an explicit encoder table."""
    from wsss_keras.backbones import registry
    from wsss_keras.backbones.vit.vit_encoder import ViTEncoder

    backbone = model_settings.get("backbone")
    if backbone:
        weights = weights or model_settings.get("weights")
        if not weights:
            raise recipe_error(
                recipe,
                f"backbone {backbone!r} trains from pretrained weights: pass --weights PATH (a local timm/Hugging "
                "Face/keras-hub checkpoint; see the recipe's notes) or set [model] weights.",
            )
        return registry.load_pretrained(weights, backbone, **dict(model_settings.get("encoder", {})))
    encoder_settings = dict(model_settings.get("encoder", {}))
    if not encoder_settings:
        raise recipe_error(recipe, "[model] needs a backbone (with weights) or an encoder table.")
    encoder_settings.setdefault("image_channels", stem.output_channels if stem is not None else 3)
    try:
        return ViTEncoder(**encoder_settings)
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[model.encoder] {error}") from None


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
        raise recipe_error(recipe, error) from None
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
        raise recipe_error(recipe, error) from None


def step_progress(steps, echo, every, stage="train"):
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
                echo(f"[{stage}] step {self.done}/{steps} {losses} ({elapsed:.0f} s, ETA {eta:.0f} s)")
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

    if recipe["recipe"]["method"] == "amr":
        from wsss_keras.pipelines.amr import train_amr

        return train_amr(recipe, data_dir, out_dir, weights=weights, steps=steps, echo=echo)
    if recipe["recipe"]["method"] == "ssc":
        from wsss_keras.pipelines.ssc import train_ssc

        return train_ssc(recipe, data_dir, out_dir, weights=weights, steps=steps, echo=echo)
    if recipe["recipe"]["method"] in ("weclip", "ssr"):
        from wsss_keras.pipelines.weclip import train_weclip

        return train_weclip(recipe, data_dir, out_dir, weights=weights, steps=steps, echo=echo)
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
        raise recipe_error(recipe, f"[train] augment: {error}") from None
    batch_size = int(settings.get("batch_size", 4))
    loader = SegmentationLoader(
        dataset, batch_size, transform, shuffle=True, seed=seed, drop_remainder=True,
        workers=int(settings.get("workers", 1)),
    )
    model = build_model(recipe, dataset, weights)
    model.compile(optimizer=make_optimizer(recipe, "train", steps, model, defaults={"warmup_steps": 1500}))
    return fit_steps(
        model, loader, steps, out_dir, MODEL_FILE, recipe, stage="train", echo=echo,
        summary={"batch_size": batch_size, "images": len(dataset)},
    )


def make_optimizer(recipe, table, steps, model=None, defaults=None, adam_group=None):
    """The optimiser a recipe table asks for, on a poly schedule with linear warm-up.

    Keys of the table: `optimizer` ("adamw", ToCo's PolyWarmupAdamW; or "sgd", IRN's
    PolyOptimizer), `learning_rate`, `warmup_steps`, `power`, `weight_decay`, `momentum` (SGD)
    and `lr_multipliers` ({variable-path substring: factor}, added to the model's own groups).

    Args:
        recipe: the loaded recipe.
        table: the table holding the stage's settings ("train", "irn", "segmentation", ...).
        steps: the schedule's length.
        model: the model to train; its own parameter groups (`lr_multipliers`, and for SGD
            `weight_decay_multipliers`), when it has them, come before the table's.
        defaults: fallback values for keys the table leaves out.
        adam_group: for SGD, an optional second group trained with Adam (SSC's decoder): a dict
            with `paths` (variable-path substrings) and `learning_rate`, `beta_1`, `beta_2`,
            `epsilon`, `power` (its own poly schedule over the same steps).
    """
    from wsss_keras.training.schedules import PolyWarmup

    settings = {**(defaults or {}), **section(recipe, table)}
    kind = settings.get("optimizer", "adamw")
    multipliers = {**dict(getattr(model, "lr_multipliers", None) or {}), **dict(settings.get("lr_multipliers", {}))}
    schedule = PolyWarmup(
        float(settings.get("learning_rate", 6e-5)), int(settings.get("warmup_steps", 0)), steps,
        power=float(settings.get("power", 0.9)),
    )
    if kind == "adamw":
        from wsss_keras.training.optimizers import GroupedAdamW

        return GroupedAdamW(schedule, lr_multipliers=multipliers, weight_decay=float(settings.get("weight_decay", 0.01)))
    if kind == "sgd":
        from wsss_keras.training.optimizers import GroupedSGD, GroupedSGDWithAdam

        options = dict(
            lr_multipliers=multipliers, momentum=float(settings.get("momentum", 0.0)),
            weight_decay=float(settings.get("weight_decay", 1e-4)),
            weight_decay_multipliers=dict(getattr(model, "weight_decay_multipliers", None) or {}),
        )
        if not adam_group:
            return GroupedSGD(schedule, **options)
        adam_schedule = PolyWarmup(float(adam_group["learning_rate"]), 0, steps, power=float(adam_group.get("power", 0.9)))
        return GroupedSGDWithAdam(
            schedule, adam_paths=tuple(adam_group["paths"]), adam_learning_rate=adam_schedule,
            adam_beta_1=float(adam_group.get("beta_1", 0.5)), adam_beta_2=float(adam_group.get("beta_2", 0.999)),
            adam_epsilon=float(adam_group.get("epsilon", 1e-8)), **options,
        )
    raise recipe_error(recipe, f"[{table}] optimizer = {kind!r}; choose \"adamw\" or \"sgd\".")


def fit_steps(model, loader, steps, out_dir, model_file, recipe, stage="train", echo=print, summary=None, callbacks=()):
    """Fit a compiled `model` for `steps` steps of `loader`; save it and its logs into `out_dir`.

    Every training stage of every method ends here, so they all print the same progress, stop
    on a diverged loss, and leave `<model_file>`, `<stem>_log.csv` and `<stem>_summary.json`
    (`train_log.csv` / `train_summary.json` for the main model).

    Args:
        model: a compiled Keras model whose `compute_loss` reads the loader's targets.
        loader: a `SegmentationLoader` (or any PyDataset) of (images, targets).
        steps: optimiser steps; the loader is cycled through as many epochs as needed.
        model_file: the file name of the saved model inside `out_dir`; the log files take its
            stem (`segmenter.keras` -> `segmenter_log.csv`), except `model.keras` -> `train_*`.
        recipe: the loaded recipe (its name and path go into messages and the summary).
        stage: the stage's name, the prefix of its messages.
        summary: extra entries for the summary JSON.
        callbacks: further Keras callbacks (SSR's prototype refresh).

    Returns:
        the path of the saved model.
    """
    import keras

    os.makedirs(out_dir, exist_ok=True)
    epochs = math.ceil(steps / len(loader))
    stem = "train" if model_file == MODEL_FILE else os.path.splitext(model_file)[0]
    echo(
        f"[{stage}] {recipe['recipe']['name']}: {steps} steps of {loader.batch_size} images ({epochs} epochs), "
        f"backend {keras.backend.backend()}"
    )
    progress = step_progress(steps, echo, every=max(1, steps // 20), stage=stage)
    logger = keras.callbacks.CSVLogger(os.path.join(out_dir, f"{stem}_log.csv"))
    start = time.perf_counter()
    history = model.fit(loader, epochs=epochs, verbose=0, callbacks=[progress, logger, *callbacks])
    seconds = time.perf_counter() - start
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        raise WSSSError(
            f"[{stage}] training diverged (loss {losses[-1]}); lower the learning_rate of this stage in "
            f"{recipe_source(recipe)}."
        )
    path = os.path.join(out_dir, model_file)
    model.save(path)
    record = {
        "recipe": recipe["recipe"]["name"], "stage": stage, "backend": keras.backend.backend(), "steps": steps,
        "train_seconds": round(seconds, 1), **(summary or {}),
        "final": {key: float(values[-1]) for key, values in history.history.items()},
    }
    with open(os.path.join(out_dir, f"{stem}_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    echo(f"[{stage}] saved {path}")
    return path
