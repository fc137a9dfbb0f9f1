"""The backbone of a CAM network from a recipe's `[model]` table (AMR's two branches, SSC).

A ResNet arch gets AMR's defaults (`AMR_BACKBONE`, which SSC's recipes override where they
differ); a ViT arch takes `backbone` as `ViTEncoder` overrides.
"""

from wsss_keras.recipes import recipe_error, section

AMR_BACKBONE = {"output_stride": 16, "dilation": "none", "frozen_batchnorm": "statistics", "freeze_stem": True}


def build_backbone(recipe, table, weights=None, name=None):
    """The backbone of `[model]` (arch, backbone, weights), updated by `[table] backbone`, named
    `name` (its variable paths start with it: AMR's learning-rate groups select by them).

    A ResNet arch gets AMR's defaults (`AMR_BACKBONE`); a ViT arch (`vit_b16`, `deit_s16`, ...;
    spec §7, an option) takes `backbone` as `ViTEncoder` overrides, and its CAMs are the patch
    grid's. `weights` = `registry.RANDOM_WEIGHTS` (`--weights random`) builds the arch untrained,
    over the recipe's `[model] weights` too.
    """
    from wsss_keras.backbones import registry, resnet

    model_settings = section(recipe, "model")
    arch = model_settings.get("arch", "resnet50")
    overrides = {**dict(model_settings.get("backbone", {})), **dict(section(recipe, table).get("backbone", {}))}
    weights = weights or model_settings.get("weights")
    try:
        if arch in resnet.ARCHS:
            kwargs = {**AMR_BACKBONE, **overrides, "name": name}
            # registry.load_pretrained builds the arch untrained for RANDOM_WEIGHTS.
            return registry.load_pretrained(weights, arch, **kwargs) if weights else resnet.build(arch, **kwargs)
        if weights:
            return registry.load_pretrained(weights, arch, name=name, **overrides)
        from wsss_keras.backbones.vit.vit_encoder import ViTEncoder
        from wsss_keras.backbones.vit.vit_weights import resolve_arch

        registry.family(arch)  # an unknown arch is named with the list of known ones
        return ViTEncoder(**resolve_arch(arch, **overrides, name=name))
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[model] / [{table}] backbone: {error}") from None
