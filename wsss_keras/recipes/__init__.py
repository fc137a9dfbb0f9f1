"""Recipes: TOML files that say how a method is trained and run, stage by stage.

A recipe has these tables (every one but `[recipe]` optional; unknown tables or keys are
errors that name the file and the key):

- `[recipe]`: `name`, `method` (a name in `METHODS`), `description`, `notes` (GPU launch notes),
  and optionally `extends`: another recipe (name or path relative to this file) whose tables
  this one updates key by key (tables nested in tables are merged too).
- `[model]`: the network (backbone arch or an explicit encoder, stem, heads; see the method).
- `[doei]`: DOEI's knobs (the table's presence switches DOEI on; `wsss_keras.methods.doei`).
- `[losses]`: loss weights, start steps and thresholds (the method's defaults are the paper's).
- `[train]`: steps, batch size, crop, augmentation, optimiser and schedule, seed.
- `[cams]`, `[pseudo_labels]`, `[predict]`: settings of the later stages.
- `[segmentation]`: the segmentation network the multi-stage methods train on their
  pseudo-labels (`wsss_keras.pipelines.segmentation`).
- AMR (`wsss_keras.pipelines.amr`): `[cam_network]` (stage A, the plain CAM network),
  `[amr]` (the method's knobs; `[train]` holds stage B's schedule).
- SSC (`wsss_keras.pipelines.ssc`): `[superpixels]` (SLIC parameters or a ready folder) and
  `[ssc]` (DRS, reconstruction and self-modulation knobs; `[train]` holds the schedule).
- WeCLIP and SSR (`wsss_keras.pipelines.weclip`, `wsss_keras.pipelines.ssr`): `[clip]` (the
  frozen CLIP: local pretrained weights and tokenizer, or a tiny one trained here; prompts),
  `[weclip]` / `[ssr]` (the method's knobs), `[dino]` (SSR's DINO ViT-S/16), `[model]`'s
  decoder size, `[superpixels]` (SSR's SLIC and colour clusters).
- The IRN stages (`wsss_keras.pipelines.ir_labels`, `wsss_keras.pipelines.irn`):
  `[ir_labels]` (confident-label thresholds, CRF) and `[irn]` (IRNet and its training); the
  random walk's settings are in `[pseudo_labels]` with `mode = "random_walk"`.

The recipes shipped with wsss-keras live next to this module; `load_recipe` takes a path or
one of their names (`wsss_keras.recipes.available()`).
"""

import os
import tomllib

from wsss_keras.errors import RecipeError

METHODS = ("toco", "amr", "ssc", "weclip", "ssr")
SECTIONS = {
    "recipe": {"name", "method", "description", "notes", "extends"},
    "model": {
        "arch", "backbone", "weights", "encoder", "stem", "aux_layer", "decoder_channels", "decoder_dilation",
        "projection", "pooling", "decoder_width", "decoder_layers", "decoder_heads",
    },
    "doei": None,  # checked by the DOEI constructor
    "losses": None,  # checked by the method
    "train": {
        "steps", "batch_size", "crop_size", "scale_range", "learning_rate", "warmup_steps", "power",
        "weight_decay", "lr_multipliers", "seed", "augment", "workers", "split", "optimizer", "momentum",
        "long_side", "cutout_count", "cutout_size",
    },
    "cam_network": {
        "backbone", "steps", "batch_size", "crop_size", "long_side", "cutout_count", "cutout_size", "optimizer",
        "learning_rate", "warmup_steps", "power", "momentum", "weight_decay", "lr_multipliers", "seed", "workers",
        "split",
    },
    "amr": {
        "cps_mode", "cls_weight_spotlight", "cls_weight_compensation", "cps_weight", "amm_reduction",
        "cam_branch_weights", "backbone", "init_compensation",
    },
    "superpixels": {"folder", "n_segments", "compactness", "sigma", "colour_clusters", "position_weight", "regions_folder"},
    "clip": {
        "source", "arch", "weights", "tokenizer", "templates", "class_prompts", "background", "image", "text",
        "context_length", "caption_template", "caption_weight", "prompt_weight", "token_weight", "residual_drop", "steps", "batch_size", "crop_size",
        "scale_range", "optimizer", "learning_rate", "warmup_steps", "power", "weight_decay", "seed", "workers",
    },
    "weclip": None,  # checked by wsss_keras.methods.weclip.weclip_options
    "ssr": None,  # checked by the SSR constructor
    "dino": {"arch", "weights"},
    "ssc": {
        "backbone", "drs_delta", "drs_layer4", "drs_stage2", "frozen_stages", "reconstruction_weight", "decoder_widths",
        "perceptual_weights", "loss_network_width", "loss_network_weights", "random_loss_network",
        "self_modulation_weight", "self_modulation_start", "self_modulation_start_fraction", "self_modulation_threshold",
        "erosion_size", "self_modulation_stride", "decoder_learning_rate", "decoder_beta_1", "decoder_beta_2",
    },
    "ir_labels": {"split", "fg_threshold", "bg_threshold", "crf"},
    "irn": {
        "arch", "weights", "backbone", "init_backbone", "radius", "split", "steps", "batch_size", "crop_size",
        "scale_range", "optimizer", "learning_rate", "warmup_steps", "power", "momentum", "weight_decay",
        "lr_multipliers", "seed", "workers",
    },
    "cams": {"split", "scales", "flip", "resize", "adversarial"},
    "pseudo_labels": {"split", "mode", "high", "low", "down_scale", "power", "background", "radius", "beta", "exp_times"},
    "predict": {"split", "scales", "flip", "overlay", "crf"},
    "evaluate": {"cam_thresholds"},
    "segmentation": {
        "arch", "weights", "backbone", "msc_scales", "loss_resolution", "init_backbone", "split", "steps",
        "batch_size", "crop_size", "scale_range", "optimizer", "learning_rate", "warmup_steps", "power",
        "momentum", "weight_decay", "lr_multipliers", "seed", "workers",
    },
}
RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))


def available():
    """Names of the recipes shipped with wsss-keras."""
    return sorted(name[:-5] for name in os.listdir(RECIPE_DIR) if name.endswith(".toml"))


def resolve(name_or_path):
    """The file of a recipe given by path or by the name of a shipped recipe."""
    path = os.fspath(name_or_path)
    if os.path.isfile(path):
        return path
    shipped = os.path.join(RECIPE_DIR, path if path.endswith(".toml") else path + ".toml")
    if os.path.isfile(shipped):
        return shipped
    raise RecipeError(f"{path}: no such recipe file, and no shipped recipe of that name; shipped: {', '.join(available())}.")


def merge(base, update):
    """`base` updated by `update`, merging nested tables key by key."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _read(path, seen):
    if path in seen:
        raise RecipeError(f"{path}: `extends` loops back to itself ({' -> '.join(seen + [path])}).")
    try:
        with open(path, "rb") as handle:
            recipe = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: not valid TOML ({error}); fix the line it names.") from None
    parent = recipe.get("recipe", {}).pop("extends", None)
    if parent is None:
        return recipe
    candidate = os.path.join(os.path.dirname(path), parent)
    parent_path = resolve(candidate if os.path.isfile(candidate) else parent)
    return merge(_read(parent_path, seen + [path]), recipe)


def load_recipe(name_or_path):
    """Read and check a recipe; returns a dict of tables, with `recipe.path` set to the file."""
    path = resolve(name_or_path)
    recipe = _read(path, [])
    check_recipe(recipe, path)
    recipe["recipe"]["path"] = path
    return recipe


def check_recipe(recipe, path="<recipe>"):
    """Raise `RecipeError` for unknown tables or keys, or a missing or unknown method."""
    unknown = sorted(set(recipe) - set(SECTIONS))
    if unknown:
        raise RecipeError(f"{path}: unknown table(s) {unknown}; known tables: {sorted(SECTIONS)}.")
    for section, keys in SECTIONS.items():
        table = recipe.get(section, {})
        if not isinstance(table, dict):
            raise RecipeError(f"{path}: [{section}] must be a table, got {table!r}.")
        extra = sorted(set(table) - keys - {"path"}) if keys is not None else []
        if extra:
            raise RecipeError(f"{path}: unknown key(s) {extra} in [{section}]; known: {sorted(keys)}.")
    method = recipe.get("recipe", {}).get("method")
    if method not in METHODS:
        raise RecipeError(f"{path}: [recipe] method = {method!r}; choose one of {list(METHODS)}.")
    return recipe


def section(recipe, name):
    """A table of the recipe (empty dict when absent)."""
    return dict(recipe.get(name, {}))


def recipe_source(recipe):
    """How messages name a loaded recipe: its file, else its name (recipes built in code)."""
    header = recipe.get("recipe", {})
    return header.get("path") or header.get("name") or "<recipe>"


def recipe_error(recipe, message):
    """A `RecipeError` whose message starts with the recipe's file (or name)."""
    return RecipeError(f"{recipe_source(recipe)}: {message}")
