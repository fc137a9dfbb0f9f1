"""ToCo's training stage (with DOEI plugged into its encoder when the recipe has `[doei]`).

`train_toco` (stage `train`, what `wsss train` runs for a ToCo recipe) builds ToCo's ViT from
`[model]` (a pretrained backbone, or an explicit `[model.encoder]` table, with an optional
`[model.stem]`), its losses from `[losses]`, and trains it with `[train]`; the model is saved as
`model.keras` and gives both the CAMs and the segmentation.
"""

from wsss_keras.pipelines.fitting import (
    MODEL_FILE,
    fit_steps,
    make_optimizer,
    saved_recipe,
)
from wsss_keras.recipes import recipe_error, section
from wsss_keras.step_counts import default_steps, default_warmup


def build_encoder(model_settings, weights, stem, recipe):
    """The ViT encoder: a backbone arch loaded from local weights, or an explicit encoder table.

    `weights` = `registry.RANDOM_WEIGHTS` (`--weights random`) builds the backbone arch untrained,
    with the `[model] encoder` overrides applied as on a loaded one (smoke runs of a paper recipe).
    """
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
        # RANDOM_WEIGHTS: registry.load_pretrained builds the same arch untrained.
        return registry.load_pretrained(weights, backbone, **dict(model_settings.get("encoder", {})))
    encoder_settings = dict(model_settings.get("encoder", {}))
    if not encoder_settings:
        raise recipe_error(recipe, "[model] needs a backbone (with weights) or an encoder table.")
    encoder_settings.setdefault("image_channels", stem.output_channels if stem is not None else 3)
    try:
        return ViTEncoder(**encoder_settings)
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[model.encoder] {error}") from None


def build_model(recipe, dataset, weights=None, max_steps=None):
    """The method's untrained model for `dataset`'s classes; `max_steps` (default `[train]
    steps`) is the length DOEI's schedule runs against."""
    from wsss_keras.backbones.conv_stem import ConvStem
    from wsss_keras.methods.toco import ToCo

    model_settings = section(recipe, "model")
    train_settings = section(recipe, "train")
    try:
        stem = ConvStem(**model_settings["stem"]) if model_settings.get("stem") else None
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, error) from None
    encoder = build_encoder(model_settings, weights, stem, recipe)
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
            # DOEI plugs into ToCo's encoder through its attention hook; ToCo builds it from
            # the `[doei]` table (as from a saved config), so this pipeline never imports it.
            doei=dict(recipe["doei"]) if "doei" in recipe else None,
            max_steps=int(max_steps or train_settings.get("steps", default_steps("toco", "train"))),
            pooling=model_settings.get("pooling", "max"),
            class_names=dataset.class_names,
            recipe=saved_recipe(recipe),
            seed=train_settings.get("seed", 0),
        )
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, error) from None


def train_toco(recipe, data_dir, out_dir, weights=None, steps=None, echo=print):
    """Train ToCo (with DOEI when the recipe has a `[doei]` table) on `data_dir` and save it to
    `out_dir/model.keras`; returns its path. The arguments are `pipelines.train.train`'s, which
    calls this with the recipe already through `with_steps`."""
    import keras

    from wsss_keras.backbones.registry import is_random, weights_origin
    from wsss_keras.data.layouts import open_split
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import ToCoTrainTransform

    settings = section(recipe, "train")
    steps = int(steps or settings.get("steps", default_steps("toco", "train")))
    seed = int(settings.get("seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = open_split(data_dir, settings.get("split", "train"))
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
    model = build_model(recipe, dataset, weights, max_steps=steps)
    if is_random(weights):
        echo(f"[train] backbone {section(recipe, 'model').get('backbone')}: {weights_origin(weights)}")
    model.compile(optimizer=make_optimizer(recipe, "train", steps, model, defaults={"warmup_steps": default_warmup("toco", "train")}))
    return fit_steps(
        model, loader, steps, out_dir, MODEL_FILE, recipe, stage="train", echo=echo,
        summary={"batch_size": batch_size, "images": len(dataset)},
    )
