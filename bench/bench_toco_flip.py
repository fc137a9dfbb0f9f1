"""ToCo's local crops from an independently flipped image (the reference) vs following the main view's flip.

    python bench/bench_toco_flip.py [--seeds 0,1,2] [--data DIR] [--keep DIR] [--json FILE]

`toco_synthetic_cpu` with CTC on (`ctc_weight = 0.5`, 32-pixel local crops; the recipe ships with
CTC off, where the knob changes nothing), blur off as shipped, `[train] augment.
local_crops_follow_flip` false vs true, interleaved seed by seed. Each run is about twice a
quickstart (10-15 min on 2 cores). Figures: CAM and pseudo-labels on train, segmentation on val.
"""

import os
import sys
import tempfile

from bench_toco_doei import run_method
from quality_common import SINGLE_STAGE_COLUMNS, argument_parser, data_style, report, synthetic_data

ARMS = {"independent": "local crops from an independently flipped image (reference)",
        "follow": "local crops follow the main view's flip"}
CTC_ON = {"ctc_weight": 0.5, "local_crop_size": 32}
NO_BLUR = {"main_blur_probability": 0.0, "global_blur_probability": 0.0, "local_blur_probability": 0.0}


def main():
    args = argument_parser(__doc__.splitlines()[0]).parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        data = synthetic_data(root, args.data, args.style)
        style = data_style(data)  # read while the folder exists
        for seed in seeds:
            for arm in ARMS:
                overrides = {"losses": CTC_ON,
                             "train": {"augment": {**NO_BLUR, "local_crops_follow_flip": arm == "follow"}}}
                result = run_method("toco_synthetic_cpu", data, os.path.join(root, f"{arm}_seed{seed}"), seed, None,
                                    overrides)
                rows[arm].append({key: result[key] for key, _ in SINGLE_STAGE_COLUMNS})
                print(f"seed {seed} {arm}: " + " / ".join(f"{result[key]:.1f}" for key, _ in SINGLE_STAGE_COLUMNS),
                      flush=True)
    report(args.json, "bench_toco_flip", f"ToCo local crops and the flip: synthetic data ({style}), seeds {seeds}", SINGLE_STAGE_COLUMNS,
           ARMS, rows, style=style)
    return 0


if __name__ == "__main__":
    sys.exit(main())
