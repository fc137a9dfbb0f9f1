"""Recipes: TOML files that say how a method is trained and run, stage by stage.

A recipe has these tables (every one but `[recipe]` optional). Each method reads its own set
of tables and keys (`METHOD_TABLES`, some keys only under one setting: `ONLY_WHEN`);
`load_recipe` refuses a table or key the recipe's method would not read, with one line naming
the file that set it, the table and key, and the fix. `with_steps` is `--steps`.

- `[recipe]`: `name`, `method` (a name in `METHODS`), `description`, `notes` (GPU launch notes),
  and optionally `extends`: another recipe (name or path relative to this file) whose tables
  this one updates key by key (tables nested in tables are merged too). A recipe of another
  method than its parent's (SSR extending WeCLIP) inherits only what its own method reads.
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
  `[weclip]` / `[ssr]` (the method's knobs), `[dino]` (SSR's DINO ViT-S/16, or with `source = "train"` a
  small ViT trained here DINO-style, `wsss_keras.pipelines.dino`), `[model]`'s
  decoder size, `[superpixels]` (SSR's SLIC and colour clusters).
- `[student]`: a compact keras-hub segmenter trained last on the run's pseudo-labels
  (`wsss_keras.pipelines.student`; `arch`, `weights`: a local keras-hub preset folder, `steps`,
  `input_size`, `kd_weight`, ...); the table's presence adds the `train_student` stage.
- The IRN stages (`wsss_keras.pipelines.ir_labels`, `wsss_keras.pipelines.irn`):
  `[ir_labels]` (confident-label thresholds, CRF) and `[irn]` (IRNet and its training); the
  random walk's settings are in `[pseudo_labels]` with `mode = "random_walk"`.

The recipes shipped with wsss-keras live in the repository's top-level `recipes/` folder, which
installs inside the package (`RECIPE_DIR`); `load_recipe` takes a path or one of their names
(`wsss_keras.recipes.available()`).
"""

import os
import tomllib

from wsss_keras.errors import RecipeError
from wsss_keras.step_counts import PERIODS, STEP_COUNTS

# What each method's pipelines read, table by table: `load_recipe` refuses a table or key its
# method would ignore. Adding a key a pipeline reads is one word in one of these sets. ANY_KEY:
# the table's keys are checked by the method itself when its model is built (DOEI, ToCo's
# losses, WeCLIP's and SSR's knobs), with an error naming the key.
ANY_KEY = None
_RECIPE = {"name", "method", "description", "notes", "extends"}
_LOOP = {"split", "steps", "batch_size", "accumulate", "seed", "workers"}  # every training stage
_OPTIMIZER = {"optimizer", "learning_rate", "warmup_steps", "power", "momentum", "weight_decay", "lr_multipliers"}
_LONG_SIDE_LOADER = {"crop_size", "long_side"}  # IRN's classification transform (AMR, SSC)
_CUTOUT = {"cutout_count", "cutout_size"}  # AMR's classification loader
_CAMS = {"split", "scales", "flip", "resize", "adversarial"}
_PREDICT = {"split", "scales", "flip", "overlay", "crf", "flip_merge", "scale_merge", "resize_long"}
_EVALUATE = {"cam_thresholds"}
_CAM_LABELS = {"split", "mode", "high", "low", "down_scale"}  # pseudo-labels from CAM files
_WALK = {"power", "background", "radius", "beta", "exp_times"}  # IRN's random walk
_SLIC = {"folder", "n_segments", "compactness", "sigma"}
# The IRN refinement and DeepLab-v2 stages: AMR's and SSC's `wsss run`, and any method's CAMs
# through `wsss irn ...`, `wsss train-seg` or `wsss run --stages`.
_REFINEMENT = {
    "ir_labels": {"split", "fg_threshold", "bg_threshold", "crf"},
    "irn": {"arch", "weights", "backbone", "init_backbone", "radius", "crop_size", "scale_range"} | _LOOP | _OPTIMIZER,
    "segmentation": {
        "arch", "weights", "backbone", "msc_scales", "loss_resolution", "init_backbone", "crop_size", "scale_range",
    } | _LOOP | _OPTIMIZER,
}
# The compact student any recipe may end with (`wsss_keras.pipelines.student`): its table's
# presence adds the train_student stage.
_STUDENT = {
    "arch", "weights", "input_size", "crop_size", "scale_range", "kd_weight", "kd_temperature", "backbone",
    "projection_filters", "head_channels",
} | _LOOP - {"split"} | _OPTIMIZER
_LATER_STAGES = {  # every method: CAMs, pseudo-labels (the walk's keys with mode = "random_walk"), predict, evaluate
    "cams": _CAMS,
    "pseudo_labels": _CAM_LABELS | _WALK,
    "predict": _PREDICT,
    "evaluate": _EVALUATE,
    "student": _STUDENT,
    **_REFINEMENT,
}
_CLIP_TRAINING = {  # the tiny CLIP trained here ([clip] source = "train")
    "image", "text", "context_length", "caption_template", "caption_weight", "prompt_weight", "token_weight",
    "residual_drop", "crop_size", "scale_range",
} | _LOOP - {"split"} | _OPTIMIZER
_DINO_TRAINING = {  # the DINO-style ViT trained here ([dino] source = "train", SSR's CPU recipe)
    "vit", "prototypes", "head_hidden", "bottleneck", "freeze_last_layer_steps", "teacher_momentum", "student_temperature", "teacher_temperature",
    "center_momentum", "global_size", "local_size", "local_crops", "global_scale", "local_scale",
} | _LOOP - {"split"} | _OPTIMIZER
_FROZEN_CLIP = {  # WeCLIP and SSR
    "recipe": _RECIPE,
    "clip": {"source", "arch", "weights", "tokenizer", "templates", "class_prompts", "background"} | _CLIP_TRAINING,
    "model": {"decoder_width", "decoder_layers", "decoder_heads"},
    "train": _LOOP | _OPTIMIZER | {"crop_size", "scale_range"},
    **_LATER_STAGES,
}
METHOD_TABLES = {
    "toco": {  # with DOEI when [doei] is there
        "recipe": _RECIPE,
        "model": {
            "backbone", "weights", "encoder", "stem", "aux_layer", "decoder_channels", "decoder_dilation", "projection",
            "pooling",
        },
        "doei": ANY_KEY,
        "losses": ANY_KEY,
        "train": _LOOP | _OPTIMIZER | {"crop_size", "scale_range", "augment"},
        **_LATER_STAGES,
    },
    "amr": {
        "recipe": _RECIPE,
        "model": {"arch", "backbone", "weights"},
        "cam_network": {"backbone"} | _LOOP | _OPTIMIZER | _LONG_SIDE_LOADER | _CUTOUT,
        "amr": {
            "cps_mode", "cls_weight_spotlight", "cls_weight_compensation", "cps_weight", "amm_reduction",
            "cam_branch_weights", "backbone", "init_compensation",
        },
        "train": _LOOP | _OPTIMIZER | _LONG_SIDE_LOADER | _CUTOUT,
        **_LATER_STAGES,
    },
    "ssc": {
        "recipe": _RECIPE,
        "model": {"arch", "backbone", "weights"},
        "superpixels": _SLIC,
        "ssc": {
            "backbone", "drs_delta", "drs_layer4", "drs_stage2", "frozen_stages", "reconstruction_weight",
            "decoder_widths", "perceptual_weights", "loss_network_width", "loss_network_weights", "random_loss_network",
            "self_modulation_weight", "self_modulation_start", "self_modulation_start_fraction",
            "self_modulation_threshold", "erosion_size", "self_modulation_stride", "decoder_learning_rate",
            "decoder_beta_1", "decoder_beta_2",
        },
        "train": _LOOP | _OPTIMIZER | _LONG_SIDE_LOADER,
        **_LATER_STAGES,
    },
    "weclip": {**_FROZEN_CLIP, "weclip": ANY_KEY},
    "ssr": {
        **_FROZEN_CLIP,
        "ssr": ANY_KEY,  # WeCLIP's knobs and SSR's own; SSR does not read [weclip]
        "dino": {"source", "arch", "weights"} | _DINO_TRAINING,
        "superpixels": _SLIC | {"colour_clusters", "position_weight", "regions_folder"},
    },
}
METHODS = tuple(METHOD_TABLES)
# Every table and key some method reads (what a recipe may contain at all).
SECTIONS = {}
for _tables in METHOD_TABLES.values():
    for _name, _keys in _tables.items():
        SECTIONS[_name] = None if _keys is ANY_KEY or SECTIONS.get(_name, set()) is None else SECTIONS.get(_name, set()) | _keys
# Keys read only under one value of a setting of their table: {table: (setting, default, {key: values})}.
ONLY_WHEN = {
    "pseudo_labels": ("mode", "par", {
        **dict.fromkeys(("high", "low"), ("par", "crf", "threshold")), "down_scale": ("par",),
        **dict.fromkeys(_WALK, ("random_walk",)),
    }),
    "clip": ("source", "openai", {
        **dict.fromkeys(("arch", "weights", "tokenizer"), ("openai",)), **dict.fromkeys(_CLIP_TRAINING, ("train",)),
    }),
    "dino": ("source", "released", {
        **dict.fromkeys(("arch", "weights"), ("released",)), **dict.fromkeys(_DINO_TRAINING, ("train",)),
    }),
}
# `momentum` is SGD's; the tables whose optimizer is AdamW unless they say otherwise.
ADAMW_BY_DEFAULT = {("toco", "train"), ("weclip", "train"), ("ssr", "train"), ("weclip", "clip"), ("ssr", "clip"),
                    ("ssr", "dino")}


def _recipe_dir():
    """The folder of the shipped recipes: the top-level `recipes/` of the source tree, which a
    built wheel installs as `wsss_keras/recipes/shipped/` (pyproject.toml's package-dir maps it);
    a source checkout (an editable install, or the repository on PYTHONPATH) reads it in place."""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "shipped")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(os.path.dirname(here)), "recipes")


RECIPE_DIR = _recipe_dir()


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
    """(tables, origins): the recipe merged over its `extends` chain, and the file that set each
    (table, key) ((table, None) for the table itself), so errors name the file to fix."""
    if path in seen:
        raise RecipeError(f"{path}: `extends` loops back to itself ({' -> '.join(seen + [path])}).")
    try:
        with open(path, "rb") as handle:
            recipe = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: not valid TOML ({error}); fix the line it names.") from None
    parent = recipe.get("recipe", {}).pop("extends", None) if isinstance(recipe.get("recipe"), dict) else None
    own = {(name, None): path for name in recipe}
    own.update({(name, key): path for name, table in recipe.items() if isinstance(table, dict) for key in table})
    if parent is None:
        return recipe, own
    candidate = os.path.join(os.path.dirname(path), parent)
    parent_path = resolve(candidate if os.path.isfile(candidate) else parent)
    base, origins = _read(parent_path, seen + [path])
    base_method = base.get("recipe", {}).get("method")
    method = recipe.get("recipe", {}).get("method", base_method)
    if method != base_method and method in METHOD_TABLES:
        # A recipe of another method (SSR extending WeCLIP) takes what its method reads from the
        # parent; the rest belongs to the parent's method and is left behind.
        base, origins = _tables_read_by(method, base, origins)
    return merge(base, recipe), {**origins, **own}


def _tables_read_by(method, recipe, origins):
    tables = METHOD_TABLES[method]
    kept = {}
    for name, table in recipe.items():
        if name not in tables:
            continue
        keys = tables[name]
        kept[name] = table if keys is ANY_KEY or not isinstance(table, dict) else {
            key: value for key, value in table.items() if key in keys or name == "recipe"
        }
    return kept, {(name, key): path for (name, key), path in origins.items() if name in kept and (key is None or key in kept[name])}


def load_recipe(name_or_path):
    """Read and check a recipe; returns a dict of tables, with `recipe.path` set to the file."""
    path = resolve(name_or_path)
    recipe, origins = _read(path, [])
    check_recipe(recipe, path, origins)
    recipe["recipe"]["path"] = path
    return recipe


def _readers(table, key=None):
    """The methods that read `[table]` (or its `key`)."""
    return [
        method for method, tables in METHOD_TABLES.items()
        if table in tables and (key is None or tables[table] is ANY_KEY or key in tables[table])
    ]


def check_recipe(recipe, path="<recipe>", origins=None):
    """Raise `RecipeError` for a missing or unknown method, or a table or key the method would
    not read (`METHOD_TABLES`, `ONLY_WHEN`, SGD's momentum); the message names the file that
    set it (`origins`, from `extends`), the table and key, and the fix."""
    origins = origins or {}

    def where(table, key=None):
        source = origins.get((table, key)) or origins.get((table, None)) or path
        return source if source == path else f"{source} (extended by {path})"

    header = recipe.get("recipe", {})
    method = header.get("method") if isinstance(header, dict) else None
    if method not in METHOD_TABLES:
        raise RecipeError(f"{where('recipe', 'method')}: [recipe] method = {method!r}; choose one of {list(METHOD_TABLES)}.")
    tables = METHOD_TABLES[method]
    for name, table in recipe.items():
        if not isinstance(table, dict):
            raise RecipeError(f"{where(name)}: [{name}] must be a table, got {table!r}.")
        if name not in SECTIONS:
            raise RecipeError(f"{where(name)}: unknown table [{name}]; {method} recipes have {sorted(tables)}.")
        if name not in tables:
            raise RecipeError(
                f"{where(name)}: [{name}] is not read by {method} recipes (only by {', '.join(_readers(name))}); "
                "remove the table or change [recipe] method."
            )
        keys = tables[name]
        for key in sorted(table) if keys is not ANY_KEY else ():
            if key in keys or (name, key) == ("recipe", "path"):
                continue
            readers = _readers(name, key)
            fix = (f"is not read by {method} recipes (only by {', '.join(readers)}); remove it" if readers
                   else f"is not a known key; {method} recipes read {sorted(keys)} there")
            raise RecipeError(f"{where(name, key)}: [{name}] {key} {fix}.")
    for name, (setting, default, conditional) in ONLY_WHEN.items():
        table = recipe.get(name, {})
        value = table.get(setting, default)
        for key in sorted(set(table) & set(conditional)):
            if value not in conditional[key]:
                wanted = " or ".join(repr(choice) for choice in conditional[key])
                raise RecipeError(
                    f"{where(name, key)}: [{name}] {key} is read only when {setting} = {wanted}, and this recipe's "
                    f"{setting} is {value!r}; remove it."
                )
    for name, table in recipe.items():
        if "momentum" in table and tables[name] is not ANY_KEY and "optimizer" in tables[name]:
            optimizer = table.get("optimizer", "adamw" if (method, name) in ADAMW_BY_DEFAULT else "sgd")
            if optimizer != "sgd":
                raise RecipeError(
                    f"{where(name, 'momentum')}: [{name}] momentum is SGD's, and this table's optimizer is "
                    f"{optimizer!r}; remove it or set optimizer = \"sgd\"."
                )
    return recipe


# The tables of networks trained here only with `source = "train"` (else read from a file).
TRAINED_ONLY_FROM_SOURCE = ("clip", "dino")


def with_steps(recipe, steps):
    """The recipe with every training stage set to `steps` steps (`--steps`), and everything it
    counts in steps (`STEP_COUNTS`: warm-up, ToCo's loss start steps and so DOEI's schedule,
    SSC's absolute self-modulation start, SSR's prototype refresh period and CMPA warm-up)
    scaled by `steps` / the stage's own steps, so a shorter run keeps the recipe's shape.
    `steps` None: the recipe unchanged. Defaults count too (ToCo's seg_start 2,001 of 20,000)."""
    if steps is None:
        return recipe
    steps = int(steps)
    method = recipe["recipe"]["method"]
    scaled = {name: dict(table) if isinstance(table, dict) else table for name, table in recipe.items()}
    for stage, counted in STEP_COUNTS[method].items():
        if stage in TRAINED_ONLY_FROM_SOURCE and scaled.get(stage, {}).get("source") != "train":
            continue  # a pretrained network read from a file: nothing to scale
        length = int(section(recipe, stage).get("steps") or counted[stage]["steps"])
        for name, keys in counted.items():
            table = scaled.setdefault(name, {})
            for key, default in keys.items():
                value = table.get(key, default)
                if key != "steps" and value:
                    table[key] = max(int(round(int(value) * steps / length)), 1 if key in PERIODS else 0)
            if "steps" in keys and (table or name in recipe):
                table["steps"] = steps  # also what makes a second call a no-op
            if not table and name not in recipe:
                del scaled[name]  # the stage takes `steps` from its caller
    return scaled


def section(recipe, name):
    """A table of the recipe (empty dict when absent)."""
    return dict(recipe.get(name, {}))


# The stages that read labels an earlier stage wrote, and that stage's table: with no `split` of
# their own they read the images that have those labels. The CAMs' split is the root ("train"
# when the recipe names none).
_LABELS_FROM = {"ir_labels": "cams", "pseudo_labels": "cams", "irn": "ir_labels", "segmentation": "pseudo_labels"}


def labelled_split(recipe, table):
    """The split `[table]` reads: its own `split`, else that of the stage whose labels it reads
    (`_LABELS_FROM`), down to the CAMs'. IRN's train_irn reads its train_list (train_aug on
    VOC) with the IR labels of those images; a fixed "train" fallback once trained IRNet and
    DeepLab on 1,464 of train_aug's 10,582 images without a word, and stopped on COCO.

    Example:
    >>> labelled_split({"cams": {"split": "train_aug"}}, "segmentation")
    'train_aug'
    """
    own = section(recipe, table).get("split")
    if own is not None:
        return own
    return labelled_split(recipe, _LABELS_FROM[table]) if table in _LABELS_FROM else "train"


def recipe_source(recipe):
    """How messages name a loaded recipe: its file, else its name (recipes built in code)."""
    header = recipe.get("recipe", {})
    return header.get("path") or header.get("name") or "<recipe>"


def recipe_error(recipe, message):
    """A `RecipeError` whose message starts with the recipe's file (or name)."""
    return RecipeError(f"{recipe_source(recipe)}: {message}")
