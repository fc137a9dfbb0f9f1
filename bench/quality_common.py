"""What the method-vs-baseline quality benches share: the synthetic data, seeds, the table.

bench_amr.py and bench_ssc.py run their arms per seed through `run_recipe` and hand `compare` a
function seed -> {arm: {"cam": mIoU, "pseudo": mIoU, "seconds": s}}; the single-stage benches
(bench_toco_doei.py, bench_ssr.py) print their own per-seed lines and share `print_table`.
"""

import argparse
import os
import sys
import tempfile

# The single-stage methods' figures: CAM and online pseudo-labels on train, the decoder on val.
SINGLE_STAGE_COLUMNS = (("cam", "CAM (train)"), ("pseudo", "pseudo-labels (train)"), ("seg", "segmentation (val)"))


def scores(metrics):
    """CAM (best threshold of the sweep) and pseudo-label mIoU, in percent, of a run's metrics."""
    return {"cam": 100 * metrics["cams"]["miou"], "pseudo": 100 * metrics["pseudo_labels"]["miou"]}


def argument_parser(description):
    """--seeds, --data and --keep, the options every quality bench takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: generate the quickstart's)")
    parser.add_argument("--keep", default=None, help="keep the run folders here")
    parser.add_argument("--json", default=None, help="also write the figures here (bench_all.py reads them)")
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

    title = f"{recipe_name}, synthetic data, backend {keras.backend.backend()}, seeds {seeds}"
    report(args.json, os.path.splitext(os.path.basename(sys.argv[0]))[0], title,
           (("cam", "CAM (train)"), ("pseudo", "pseudo-labels after IRN (train)")), labels, rows, first="network")
    return 0


def report(json_path, bench, title, columns, labels, rows, first="method"):
    """`print_table`, and the same figures as JSON at `json_path` (when given)."""
    from results_io import write_results

    print_table(title, columns, labels, rows, first)
    write_results(json_path, bench, title, first=first, columns=[list(c) for c in columns], labels=labels,
                  rows={arm: [{key: float(value) for key, value in row.items()} for row in values]
                        for arm, values in rows.items()})


def mean_std_cell(values):
    """"mean ± std (seed 0 / seed 1 / ...)" of one arm's figure over seeds; "-" when it has none."""
    import numpy as np

    values = np.asarray(values, float)
    if len(values) < 2:
        return f"{values[0]:.1f}" if len(values) else "-"
    return f"{values.mean():.1f} ± {values.std():.1f} ({' / '.join(f'{value:.1f}' for value in values)})"


def print_table(title, columns, labels, rows, first="method"):
    """Print `title` and a Markdown table of mean ± std (per-seed values) per arm.

    Args:
        columns: ((key, header), ...) of the figures each row of `rows[arm]` may hold.
        labels: {arm: row label}, in table order.
        rows: {arm: [per-seed dicts]}; a figure an arm lacks shows as "-".
    """
    print(f"\n{title}; mIoU mean ± std (per seed)")
    print("| " + " | ".join([first] + [header for _, header in columns]) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for arm, label in labels.items():
        cells = [mean_std_cell([row[key] for row in rows[arm] if key in row]) for key, _ in columns]
        print(f"| {label} | " + " | ".join(cells) + " |")
