"""`wsss train`: build a method's model from a recipe and train it on a dataset folder.

The trained model is saved as one `.keras` file (weights, architecture, class names, the
recipe) that loads on every backend; `train_log.csv` holds the per-epoch losses.

Each method's trainer lives in its own pipeline module (`TRAINERS`), loaded only when its
method runs; they all share the training loop of `wsss_keras.pipelines.fitting`, below them,
so no trainer imports this module back.
"""

import importlib

from wsss_keras.recipes import with_steps

# method -> "module:function" of its `train` stage (the stages of each method: `run.METHOD_STAGES`).
TRAINERS = {
    "toco": "wsss_keras.pipelines.toco:train_toco",
    "amr": "wsss_keras.pipelines.amr:train_amr",
    "ssc": "wsss_keras.pipelines.ssc:train_ssc",
    "weclip": "wsss_keras.pipelines.weclip:train_weclip",
    "ssr": "wsss_keras.pipelines.ssr:train_ssr",
}


def trainer(method):
    """The `train` function of `method` (a key of `TRAINERS`), imported on first use."""
    module, _, function = TRAINERS[method].partition(":")
    return getattr(importlib.import_module(module), function)


def train(recipe, data_dir, out_dir, weights=None, steps=None, echo=print):
    """Train the recipe's model on `data_dir` and save it to `out_dir/model.keras`.

    Args:
        recipe: a loaded recipe (`wsss_keras.recipes.load_recipe`).
        data_dir: a dataset folder (VOC or COCO layout, or the synthetic data), or `wsss run`'s
            `DatasetFolder` of it (`wsss_keras.data.layouts.open_split`).
        out_dir: the run folder.
        weights: local pretrained backbone weights (overrides the recipe's).
        steps: override the recipe's number of steps (`with_steps`: what the recipe counts in
            steps, warm-up and ToCo's loss phases, and so DOEI's schedule, scale with it).

    Returns:
        the path of the saved model.
    """
    recipe = with_steps(recipe, steps)
    return trainer(recipe["recipe"]["method"])(recipe, data_dir, out_dir, weights=weights, steps=steps, echo=echo)
