"""What the method-vs-baseline quality benches share: the synthetic data, seeds, the table.

Each bench (bench_amr.py, bench_ssc.py) runs its arms per seed through `run_recipe` and hands
`compare` a function seed -> {arm: {"cam": mIoU, "pseudo": mIoU, "seconds": s}}.
"""

import argparse
import os
import tempfile


def scores(metrics):
    """CAM (best threshold of the sweep) and pseudo-label mIoU, in percent, of a run's metrics."""
    return {"cam": 100 * metrics["cams"]["miou"], "pseudo": 100 * metrics["pseudo_labels"]["miou"]}


def argument_parser(description):
    """--seeds, --data and --keep, the options every quality bench takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: generate the quickstart's)")
    parser.add_argument("--keep", default=None, help="keep the run folders here")
    return parser


def synthetic_data(root, data=None):
    """`data`, or the quickstart's synthetic dataset generated under `root`."""
    if data is not None:
        return data
    from wsss_keras.pipelines.quickstart import QUICKSTART_DATA, ensure_synthetic_data

    data = os.path.join(root, "data")
    ensure_synthetic_data(data, QUICKSTART_DATA, echo=print)
    return data


def compare(description, recipe_name, labels, run_arms):
    """Run `run_arms(data, root, seed)` for every seed and print per-seed lines and a Markdown
    table of mean ± std per arm (`labels`: {arm: row label}, in table order)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    args = argument_parser(description).parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = {arm: [] for arm in labels}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        data = synthetic_data(root, args.data)
        for seed in seeds:
            for arm, result in run_arms(data, root, seed).items():
                rows[arm].append(result)
                took = f"  ({result['seconds']:.0f} s)" if "seconds" in result else ""
                print(f"{arm:<8} seed {seed}: CAM {result['cam']:.1f}  pseudo {result['pseudo']:.1f}{took}", flush=True)

    import keras

    print(f"\n{recipe_name}, synthetic data, backend {keras.backend.backend()}, seeds {seeds}; mIoU mean ± std (per seed)")
    print("| network | CAM (train) | pseudo-labels after IRN (train) |")
    print("|---|---|---|")
    for arm, label in labels.items():

        def cell(key):
            values = np.array([row[key] for row in rows[arm]])
            return f"{values.mean():.1f} ± {values.std():.1f} ({'/'.join(f'{v:.1f}' for v in values)})"

        print(f"| {label} | {cell('cam')} | {cell('pseudo')} |")
    return 0
