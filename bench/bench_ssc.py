"""DRS-only vs SSC through the IRN pipeline on the synthetic data, same budget and seeds.

    python bench/bench_ssc.py [--seeds 0,1,2] [--data DIR] [--keep DIR] [--arms drs,ssc,ssc_balanced]

Both arms run the CPU recipe `ssc_synthetic_cpu` with the recipe's seeds replaced, up to the
pseudo-labels (superpixels, CAM network, CAMs, IR labels, IRNet, random walk):

- DRS-only: the same classifier with DRS, `reconstruction_weight = 0` and
  `self_modulation_weight = 0` (no decoder, no self-modulation);
- SSC: DRS + CAM-driven reconstruction + activation self-modulation, as the recipe has them;
- SSC at the present classes' balance (`--arms drs,ssc,ssc_balanced`): SSC with both its
  reconstruction and self-modulation weights times (classes some training image has) / (classes
  of the layout). SSC's classification loss is a mean over every class of the layout, the other
  two are not, so on VOC's 21-class layout with only some classes present (`wsss data synth
  --present-classes N`) each present class's classification term weighs less against them than
  on the same images in their own layout; this arm restores that balance (on a layout whose
  classes all occur it is SSC).

Same steps, batch, crops and seeds. CAM mIoU is on train at each run's best background
threshold; pseudo-label mIoU on train after the random walk. The superpixels are computed once
and shared by all runs.
"""

import copy
import os
import sys
import time

from quality_common import argument_parser, chosen_arms, compare, scores

RECIPE = "ssc_synthetic_cpu"
STAGES = ("train", "cams", "ir_labels", "train_irn", "pseudo_labels", "evaluate")


ARMS = {
    "drs": ("DRS only (no reconstruction, no self-modulation)", {"reconstruction_weight": 0.0, "self_modulation_weight": 0.0}),
    "ssc": ("SSC (DRS + reconstruction + self-modulation)", {}),
    "ssc_balanced": ("SSC, auxiliary losses at the present classes' share", "balanced"),
}


def present_share(data):
    """(classes some training image has) / (classes of the layout) of the dataset at `data`."""
    from wsss_keras.data.layouts import open_split

    labels = open_split(data, "train").labels
    return float(labels.any(axis=0).sum()) / labels.shape[1]


def run_arms(data, root, seed, arms=("drs", "ssc")):
    from wsss_keras.pipelines.run import run_recipe
    from wsss_keras.recipes import load_recipe

    quiet = lambda line: None  # noqa: E731
    recipe = load_recipe(RECIPE)
    recipe["superpixels"]["folder"] = os.path.join(root, "superpixels")
    for table in ("train", "irn"):
        recipe.setdefault(table, {})["seed"] = seed
    run_recipe(recipe, data, root, stages=("superpixels",), echo=quiet)
    results = {}
    for arm in arms:
        arm_recipe = copy.deepcopy(recipe)
        knobs = ARMS[arm][1]
        if knobs == "balanced":
            share = present_share(data)
            knobs = {key: share * float(recipe["ssc"].get(key, 1.0)) for key in ("reconstruction_weight", "self_modulation_weight")}
        arm_recipe["ssc"].update(knobs)
        start = time.perf_counter()
        results[arm] = scores(run_recipe(arm_recipe, data, os.path.join(root, f"{arm}_seed{seed}"), stages=STAGES, echo=quiet))
        results[arm]["seconds"] = time.perf_counter() - start
    return results


def main():
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--arms", default="drs,ssc", help=f"comma-separated, of {','.join(ARMS)}; the first is the baseline")
    args = parser.parse_args()
    arms = chosen_arms(parser, args.arms, ARMS)
    labels = {arm: ARMS[arm][0] for arm in arms}
    return compare(__doc__.splitlines()[0], RECIPE, labels, lambda data, root, seed: run_arms(data, root, seed, arms), args)


if __name__ == "__main__":
    sys.exit(main())
