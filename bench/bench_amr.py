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

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time

RECIPE = "amr_synthetic_cpu"
REFINE = ("cams", "ir_labels", "train_irn", "pseudo_labels", "evaluate")


def scores(metrics):
    return {"cam": 100 * metrics["cams"]["miou"], "pseudo": 100 * metrics["pseudo_labels"]["miou"]}


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: generate the quickstart's)")
    parser.add_argument("--keep", default=None, help="keep the run folders here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = {"plain": [], "amr": []}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        data = args.data
        if data is None:
            from wsss_keras.pipelines.quickstart import QUICKSTART_DATA, ensure_synthetic_data

            data = os.path.join(root, "data")
            ensure_synthetic_data(data, QUICKSTART_DATA, echo=print)
        for seed in seeds:
            results = run_arms(data, root, seed)
            for arm, result in results.items():
                rows[arm].append(result)
                took = f"  ({result['seconds']:.0f} s)" if "seconds" in result else ""
                print(f"{arm:<8} seed {seed}: CAM {result['cam']:.1f}  pseudo {result['pseudo']:.1f}{took}", flush=True)

    import keras

    print(f"\n{RECIPE}, synthetic data, backend {keras.backend.backend()}, seeds {seeds}; mIoU mean ± std (per seed)")
    print("| network | CAM (train) | pseudo-labels after IRN (train) |")
    print("|---|---|---|")
    labels = {"plain": "plain CAM network, stage A + B steps", "amr": "AMR (spotlight + compensation)"}
    for arm, label in labels.items():

        def cell(key):
            values = np.array([row[key] for row in rows[arm]])
            return f"{values.mean():.1f} ± {values.std():.1f} ({'/'.join(f'{v:.1f}' for v in values)})"

        print(f"| {label} | {cell('cam')} | {cell('pseudo')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
