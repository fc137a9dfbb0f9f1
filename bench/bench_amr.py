"""Plain CAM network vs AMR through the IRN pipeline on the synthetic data, same budget and seeds.

    python bench/bench_amr.py [--seeds 0,1,2] [--data DIR] [--keep DIR]

Both arms use the CPU recipe `amr_synthetic_cpu` with the recipe's seeds replaced:

- AMR: the recipe's stages up to the pseudo-labels: the CAM network (stage A, `[cam_network]`
  steps), AMR (stage B, `[train]` steps), fused CAMs, IR labels, IRNet, random walk.
- plain CAM: the same CAM network trained for stage A + stage B steps (the same number of
  optimiser steps on the same batches' size as AMR's two stages together), then the same CAM,
  IR-label, IRNet and random-walk stages from its own CAMs.

CAM mIoU is on train at each run's best background threshold; pseudo-label mIoU on train after
the random walk.
"""

import copy
import os
import shutil
import sys
import time

from quality_common import compare, scores

RECIPE = "amr_synthetic_cpu"
REFINE = ("cams", "ir_labels", "train_irn", "pseudo_labels", "evaluate")


def run_arms(data, root, seed):
    from wsss_keras.pipelines.amr import CAM_NETWORK_FILE
    from wsss_keras.pipelines.run import run_recipe
    from wsss_keras.recipes import load_recipe

    quiet = lambda line: None  # noqa: E731
    recipe = load_recipe(RECIPE)
    for table in ("cam_network", "train", "irn"):
        recipe.setdefault(table, {})["seed"] = seed
    results = {}

    start = time.perf_counter()
    amr_dir = os.path.join(root, f"amr_seed{seed}")
    results["amr"] = scores(run_recipe(recipe, data, amr_dir, stages=("train_cam", "train") + REFINE, echo=quiet))
    results["amr"]["seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    plain = copy.deepcopy(recipe)
    plain["cam_network"]["steps"] = recipe["cam_network"]["steps"] + recipe["train"]["steps"]
    plain_dir = os.path.join(root, f"plain_seed{seed}")
    run_recipe(plain, data, plain_dir, stages=("train_cam",), echo=quiet)
    shutil.copy(os.path.join(plain_dir, CAM_NETWORK_FILE), os.path.join(plain_dir, "model.keras"))
    results["plain"] = scores(run_recipe(plain, data, plain_dir, stages=REFINE, echo=quiet))
    results["plain"]["seconds"] = time.perf_counter() - start
    return results


def main():
    labels = {"plain": "plain CAM network, stage A + B steps", "amr": "AMR (spotlight + compensation)"}
    return compare(__doc__.splitlines()[0], RECIPE, labels, run_arms)


if __name__ == "__main__":
    sys.exit(main())
