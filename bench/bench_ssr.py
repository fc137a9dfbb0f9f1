"""WeCLIP (the host) vs SSR on the synthetic data, same tiny CLIP, budget and seeds; and the
plain CNN CAM network trained for as long as the CLIP and SSR's decoder together.

    python bench/bench_ssr.py [--seeds 0,1,2] [--steps N] [--data DIR] [--keep DIR]

Per seed, the tiny CLIP of the CPU recipes is trained once (`train_clip`, seed = the seed) and
both arms run on a copy of it through `run_recipe` (`weclip_synthetic_cpu`,
`ssr_synthetic_cpu`, their training seed replaced). CAM mIoU is the raw Grad-CAM on train at
each run's best background threshold; pseudo-labels are the online ones on train (affinity,
PAR); segmentation is the decoder on val. The CNN baseline (`bench_cam_baseline`) is scored the
same way on train. SSR's reconstructed parts run at the spec's defaults (methods/ssr.md), not
the paper's unpublished values.
"""

import json
import os
import shutil
import sys
import tempfile

from quality_common import argument_parser, synthetic_data

ARMS = (("weclip", "WeCLIP host"), ("ssr", "SSR (CMPA + SGC, no DINO)"), ("cnn", "plain CNN CAM, same time"))


def clip_seconds(clip_dir):
    with open(os.path.join(clip_dir, "clip_summary.json"), encoding="utf-8") as handle:
        return json.load(handle)["train_seconds"]


def run_arm(method, data, root, seed, steps, clip_dir):
    """`bench_toco_doei.run_method` on a copy of the seed's tiny CLIP (so `train_clip` skips)."""
    from bench_toco_doei import run_method

    from wsss_keras.pipelines.weclip import CLIP_FILE, CLIP_WORDS_FILE

    out = os.path.join(root, f"{method}_seed{seed}")
    os.makedirs(out, exist_ok=True)
    for name in (CLIP_FILE, CLIP_WORDS_FILE):
        shutil.copy(os.path.join(clip_dir, name), out)
    return run_method(f"{method}_synthetic_cpu", data, out, seed, steps)


def main():
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override the recipes' steps")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_cam_baseline import train_and_score

    from wsss_keras.pipelines.weclip import train_clip
    from wsss_keras.recipes import load_recipe

    seeds = [int(seed) for seed in args.seeds.split(",")]
    results = {arm: [] for arm, _ in ARMS}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        data = synthetic_data(root, args.data)
        for seed in seeds:
            clip_dir = os.path.join(root, f"clip_seed{seed}")
            recipe = load_recipe("weclip_synthetic_cpu")
            recipe["clip"]["seed"] = seed
            if not os.path.isfile(os.path.join(clip_dir, "clip.keras")):
                train_clip(recipe, data, clip_dir, steps=args.steps, echo=lambda line: None)
            clip_s = clip_seconds(clip_dir)
            for arm in ("weclip", "ssr"):
                result = run_arm(arm, data, root, seed, args.steps, clip_dir)
                results[arm].append(result)
                print(f"{arm:<7} seed {seed}: CAM {result['cam']:.1f}  pseudo {result['pseudo']:.1f}  seg {result['seg']:.1f}  "
                      f"(CLIP {clip_s:.0f} s + train {result['train_s']:.0f} s; all stages {result['total_s']:.0f} s)", flush=True)
            budget = (clip_s + results["ssr"][-1]["train_s"]) / 60
            cnn = train_and_score(data, seed, budget, crop_size=112, batch_size=16, split="train")
            results["cnn"].append({"cam": 100 * cnn["scores"].miou})
            print(f"{'cnn':<7} seed {seed}: CAM {100 * cnn['scores'].miou:.1f}  (train {60 * budget:.0f} s, {cnn['epochs']} epochs)", flush=True)

    import keras

    print(f"\nsynthetic data, backend {keras.backend.backend()}, seeds {seeds}; mIoU mean ± std (per seed)")
    print("| method | CAM (train) | pseudo-labels (train) | segmentation (val) |")
    print("|---|---|---|---|")
    for arm, label in ARMS:

        def cell(key):
            values = np.array([row[key] for row in results[arm] if key in row])
            if not len(values):
                return "-"
            return f"{values.mean():.1f} ± {values.std():.1f} ({' / '.join(f'{v:.1f}' for v in values)})"

        print(f"| {label} | {cell('cam')} | {cell('pseudo')} | {cell('seg')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
