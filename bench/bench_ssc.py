"""DRS-only vs SSC through the IRN pipeline on the synthetic data, same budget and seeds.

    python bench/bench_ssc.py [--seeds 0,1,2] [--data DIR] [--keep DIR]

Both arms run the CPU recipe `ssc_synthetic_cpu` with the recipe's seeds replaced, up to the
pseudo-labels (superpixels, CAM network, CAMs, IR labels, IRNet, random walk):

- DRS-only: the same classifier with DRS, `reconstruction_weight = 0` and
  `self_modulation_weight = 0` (no decoder, no self-modulation);
- SSC: DRS + CAM-driven reconstruction + activation self-modulation, as the recipe has them.

Same steps, batch, crops and seeds. CAM mIoU is on train at each run's best background
threshold; pseudo-label mIoU on train after the random walk. The superpixels are computed once
and shared by all runs.
"""

import copy
import os
import sys
import time

from quality_common import compare, scores

RECIPE = "ssc_synthetic_cpu"
STAGES = ("train", "cams", "ir_labels", "train_irn", "pseudo_labels", "evaluate")


def run_arms(data, root, seed):
    from wsss_keras.pipelines.run import run_recipe
    from wsss_keras.recipes import load_recipe

    quiet = lambda line: None  # noqa: E731
    recipe = load_recipe(RECIPE)
    recipe["superpixels"]["folder"] = os.path.join(root, "superpixels")
    for table in ("train", "irn"):
        recipe.setdefault(table, {})["seed"] = seed
    run_recipe(recipe, data, root, stages=("superpixels",), echo=quiet)
    drs_only = copy.deepcopy(recipe)
    drs_only["ssc"].update(reconstruction_weight=0.0, self_modulation_weight=0.0)
    results = {}
    for arm, arm_recipe in (("drs", drs_only), ("ssc", recipe)):
        start = time.perf_counter()
        results[arm] = scores(run_recipe(arm_recipe, data, os.path.join(root, f"{arm}_seed{seed}"), stages=STAGES, echo=quiet))
        results[arm]["seconds"] = time.perf_counter() - start
    return results


def main():
    labels = {"drs": "DRS only (no reconstruction, no self-modulation)", "ssc": "SSC (DRS + reconstruction + self-modulation)"}
    return compare(__doc__.splitlines()[0], RECIPE, labels, run_arms)


if __name__ == "__main__":
    sys.exit(main())
