"""DRS-only vs SSC through the IRN pipeline on the synthetic data, same budget and seeds.

    python bench/bench_ssc.py [--seeds 0,1,2] [--data DIR] [--keep DIR] [--arms drs,ssc,ssc_seen]

Both arms run the CPU recipe `ssc_synthetic_cpu` with the recipe's seeds replaced, up to the
pseudo-labels (superpixels, CAM network, CAMs, IR labels, IRNet, random walk):

- DRS-only: the same classifier with DRS, `reconstruction_weight = 0` and
  `self_modulation_weight = 0` (no decoder, no self-modulation);
- SSC: DRS + CAM-driven reconstruction + activation self-modulation, as the recipe has them;
- SSC, decoder on the seen classes (`--arms drs,ssc,ssc_seen`): SSC with `[ssc] decoder_classes
  = "seen"`, which differs from SSC only on data where some classes never occur (VOC's layout
  with a subset of its classes: `wsss data synth --present-classes N`).

Same steps, batch, crops and seeds. CAM mIoU is on train at each run's best background
threshold; pseudo-label mIoU on train after the random walk. The superpixels are computed once
and shared by all runs.
"""

import copy
import os
import sys
import time

from quality_common import argument_parser, compare, scores

RECIPE = "ssc_synthetic_cpu"
STAGES = ("train", "cams", "ir_labels", "train_irn", "pseudo_labels", "evaluate")


ARMS = {
    "drs": ("DRS only (no reconstruction, no self-modulation)", {"reconstruction_weight": 0.0, "self_modulation_weight": 0.0}),
    "ssc": ("SSC (DRS + reconstruction + self-modulation)", {}),
    "ssc_seen": ("SSC, decoder reading the seen classes' maps only", {"decoder_classes": "seen"}),
}


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
        arm_recipe["ssc"].update(ARMS[arm][1])
        start = time.perf_counter()
        results[arm] = scores(run_recipe(arm_recipe, data, os.path.join(root, f"{arm}_seed{seed}"), stages=STAGES, echo=quiet))
        results[arm]["seconds"] = time.perf_counter() - start
    return results


def main():
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--arms", default="drs,ssc", help=f"comma-separated, of {','.join(ARMS)}; the first is the baseline")
    args = parser.parse_args()
    arms = [arm for arm in args.arms.split(",") if arm]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    labels = {arm: ARMS[arm][0] for arm in arms}
    return compare(__doc__.splitlines()[0], RECIPE, labels, lambda data, root, seed: run_arms(data, root, seed, arms), args)


if __name__ == "__main__":
    sys.exit(main())
