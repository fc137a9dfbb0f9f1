"""What the method-vs-baseline quality benches share: the synthetic data, seeds, the table.

bench_amr.py and bench_ssc.py run their arms per seed through `run_recipe` and hand `compare` a
function seed -> {arm: {"cam": mIoU, "pseudo": mIoU, "seconds": s}}; the single-stage benches
(bench_toco_doei.py, bench_ssr.py) print their own per-seed lines and share `print_table`.
"""

import argparse
import json
import os
import sys
import tempfile

# The single-stage methods' figures: CAM and online pseudo-labels on train, the decoder on val.
SINGLE_STAGE_COLUMNS = (("cam", "CAM (train)"), ("pseudo", "pseudo-labels (train)"), ("seg", "segmentation (val)"))


# Each scored stage of a run's metrics.json and the figure's key in the benches' rows.
STAGE_FIGURES = (("cams", "cam"), ("pseudo_labels", "pseudo"), ("segmentation", "seg"))
# Issue #22's bar for a host that keeps what its CAMs find: a class found at a CAM IoU of at least
# FOUND_AT is lost when the run's last stage scores it under KEPT_AT.
FOUND_AT, KEPT_AT = 30.0, 20.0


def scores(metrics):
    """CAM (best threshold of the sweep) and pseudo-label mIoU, in percent, of a run's metrics,
    and every class's IoU per stage (`class_ious`)."""
    return {"cam": 100 * metrics["cams"]["miou"], "pseudo": 100 * metrics["pseudo_labels"]["miou"],
            "classes": class_ious(metrics)}


def class_ious(metrics):
    """{figure: {class: IoU in percent}} of each scored stage of a run's metrics (classes with no
    IoU, absent from both the labels and the truth, left out)."""
    return {key: {name: round(100 * value, 1) for name, value in metrics[stage]["iou"].items() if value is not None}
            for stage, key in STAGE_FIGURES if stage in metrics}


def lost_classes(classes, found_at=FOUND_AT, kept_at=KEPT_AT):
    """[(class, CAM IoU, last stage's key, its IoU)] for the classes the CAMs found (IoU >= found_at)
    that the run's last scored stage scores under kept_at (a class it never predicts counts as 0)."""
    last = next((key for _, key in reversed(STAGE_FIGURES) if key in classes and key != "cam"), None)
    if last is None or "cam" not in classes:
        return []
    return [(name, cam, last, classes[last].get(name, 0.0)) for name, cam in classes["cam"].items()
            if cam >= found_at and classes[last].get(name, 0.0) < kept_at]


def argument_parser(description):
    """--seeds, --style, --data and --keep, the options every quality bench takes."""
    from wsss_keras.data.synthetic import STYLES

    parser = argparse.ArgumentParser(description=description)
    # Five seeds: the paired interval of a gain of a few points needs them (issue #22).
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--style", default="flat", choices=STYLES,
                        help="the synthetic style to generate (`wsss data synth --style`); ignored with --data")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: generate the quickstart's)")
    parser.add_argument("--keep", default=None, help="keep the run folders here")
    parser.add_argument("--json", default=None, help="also write the figures here (bench_all.py reads them)")
    return parser


def chosen_arms(parser, value, known):
    """The arms of a comma-separated `--arms` value, in order; a parser error names unknown ones."""
    arms = [arm for arm in value.split(",") if arm]
    unknown = sorted(set(arms) - set(known))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from {list(known)}")
    return arms


def synthetic_data(root, data=None, style="flat"):
    """`data`, or the quickstart's synthetic dataset in `style` generated under `root`."""
    if data is not None:
        return data
    from wsss_keras.pipelines.quickstart import QUICKSTART_DATA, ensure_synthetic_data

    data = os.path.join(root, "data" if style == "flat" else f"data_{style}")
    ensure_synthetic_data(data, {**QUICKSTART_DATA, "style": style}, echo=print)
    return data


def data_style(data):
    """The synthetic style of the dataset folder `data` (its synthetic.json), or "external"."""
    marker = os.path.join(data, "synthetic.json")
    if not os.path.isfile(marker):
        return "external"
    with open(marker, encoding="utf-8") as handle:
        return json.load(handle).get("style", "flat")  # written only for the non-default styles


def paired_interval(differences, level=0.95):
    """(mean, low, high) of the paired differences' mean: Student's t interval at `level`
    (seeds are few, so not the normal one); None with fewer than two."""
    import numpy as np
    from scipy import stats

    values = np.asarray(differences, float)
    if len(values) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def verdict(interval):
    """What a paired interval supports: "gain", "worse" or "no measurable difference"."""
    if interval is None:
        return "one seed: no interval"
    _, low, high = interval
    return "gain" if low > 0 else "worse" if high < 0 else "no measurable difference"


def compare(description, recipe_name, labels, run_arms, args=None):
    """Run `run_arms(data, root, seed)` for every seed and print per-seed lines and a Markdown
    table of mean ± std per arm (`labels`: {arm: row label}, in table order). `args`: parsed
    options of a bench that adds its own to `argument_parser`'s."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = args or argument_parser(description).parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = {arm: [] for arm in labels}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        data = synthetic_data(root, args.data, args.style)
        style = data_style(data)
        for seed in seeds:
            for arm, result in run_arms(data, root, seed).items():
                rows[arm].append(result)
                took = f"  ({result['seconds']:.0f} s)" if "seconds" in result else ""
                print(f"{arm:<8} seed {seed}: CAM {result['cam']:.1f}  pseudo {result['pseudo']:.1f}{took}", flush=True)

    import keras

    title = f"{recipe_name}, synthetic data ({style}), backend {keras.backend.backend()}, seeds {seeds}"
    report(args.json, os.path.splitext(os.path.basename(sys.argv[0]))[0], title,
           (("cam", "CAM (train)"), ("pseudo", "pseudo-labels after IRN (train)")), labels, rows, first="network",
           style=style)
    return 0


def report(json_path, bench, title, columns, labels, rows, first="method", style="flat"):
    """`print_table`, and the same figures as JSON at `json_path` (when given), with the data's
    `style` and every seed's figures."""
    from results_io import write_results

    print_table(title, columns, labels, rows, first)
    write_results(json_path, bench, title, style=style, first=first, columns=[list(c) for c in columns], labels=labels,
                  rows={arm: [{key: value if isinstance(value, dict) else float(value) for key, value in row.items()}
                              for row in values] for arm, values in rows.items()})


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
