"""ToCo vs ToCo + DOEI on the synthetic data, same recipe budget and seeds; and the plain CNN
CAM network trained for the same wall-clock time as the ToCo runs took.

    python bench/bench_toco_doei.py [--seeds 0,1,2] [--steps N] [--data DIR] [--keep DIR]

Each run goes through `wsss_keras.pipelines.run.run_recipe` with the CPU recipes
(`toco_synthetic_cpu`, `toco_doei_synthetic_cpu`), with the recipe's seed replaced. CAM mIoU
is on the train split at each run's best background threshold (as the quickstart reports it);
segmentation mIoU on val. The CNN baseline (`bench_cam_baseline.train_and_score`) is scored the
same way on train. DOEI's settings are reconstructed defaults (methods/doei.md 2.6), not the
paper's.
"""

import json
import os
import sys
import tempfile
import time

from quality_common import (
    SINGLE_STAGE_COLUMNS,
    argument_parser,
    class_ious,
    data_style,
    report,
    synthetic_data,
)


def run_method(recipe_name, data, out, seed, steps, overrides=None):
    """Run the recipe from nothing into `out` with its seed replaced (and `overrides`:
    {section: {key: value}}); returns the mIoUs in percent and the times."""
    from wsss_keras.pipelines.run import run_recipe
    from wsss_keras.recipes import load_recipe

    recipe = load_recipe(recipe_name)
    recipe["train"]["seed"] = seed
    for section, values in (overrides or {}).items():
        recipe.setdefault(section, {}).update(values)
    start = time.perf_counter()
    metrics = run_recipe(recipe, data, out, steps=steps, echo=lambda line: None)
    with open(os.path.join(out, "train_summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    return {
        "cam": 100 * metrics["cams"]["miou"], "seg": 100 * metrics["segmentation"]["miou"],
        "pseudo": 100 * metrics["pseudo_labels"]["miou"], "train_s": summary["train_seconds"],
        "total_s": time.perf_counter() - start, "classes": class_ious(metrics),
    }


def main():
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override the recipes' steps")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_cam_baseline import train_and_score

    seeds = [int(seed) for seed in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        data = synthetic_data(root, args.data, args.style)
        style = data_style(data)  # read while the folder exists
        results = {"toco": [], "toco_doei": [], "cnn": []}
        for seed in seeds:
            for method in ("toco", "toco_doei"):
                out = os.path.join(root, f"{method}_seed{seed}")
                result = run_method(f"{method}_synthetic_cpu", data, out, seed, args.steps)
                results[method].append(result)
                print(f"{method:<10} seed {seed}: CAM {result['cam']:.1f}  pseudo {result['pseudo']:.1f}  "
                      f"seg {result['seg']:.1f}  (train {result['train_s']:.0f} s, all stages {result['total_s']:.0f} s)", flush=True)
            budget = results["toco_doei"][-1]["train_s"] / 60
            cnn = train_and_score(data, seed, budget, crop_size=112, batch_size=16, split="train")
            results["cnn"].append({"cam": 100 * cnn["scores"].miou})
            print(f"{'cnn':<10} seed {seed}: CAM {100 * cnn['scores'].miou:.1f}  (train {60 * budget:.0f} s, {cnn['epochs']} epochs)", flush=True)

    import keras

    labels = {"toco": "ToCo", "toco_doei": "ToCo + DOEI (reconstructed)", "cnn": "plain CNN CAM, same time"}
    report(args.json, "bench_toco_doei", f"ToCo vs ToCo + DOEI: synthetic data ({style}), backend {keras.backend.backend()}, seeds {seeds}",
           SINGLE_STAGE_COLUMNS, labels, results, style=style)
    return 0


if __name__ == "__main__":
    sys.exit(main())
