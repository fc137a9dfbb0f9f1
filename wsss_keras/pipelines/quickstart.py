"""The quickstart: the synthetic dataset end to end on this machine.

For now it generates the data (reusing it when already there with the same settings), prints
its statistics, loads one training batch through the Keras loader on each installed backend
(each in its own process, since Keras fixes its backend at import), and scores a trivial
predictor (all background) on the validation split, as the floor every method must beat.
"""

import json
import os
import subprocess
import sys

import numpy as np

from wsss_keras.backend import BACKENDS, is_available
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import write_label_map
from wsss_keras.data.synthetic import generate
from wsss_keras.evaluation import score_folders

QUICKSTART_DATA = {"classes": "6", "size": 128, "n_train": 600, "n_val": 150, "seed": 0}


def ensure_synthetic_data(folder, settings, echo, progress=None):
    """Generate the synthetic data into `folder` unless it is already there with `settings`."""
    marker = os.path.join(folder, "synthetic.json")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as handle:
            info = json.load(handle)
        same = (info.get("seed"), info.get("size"), info["splits"].get("train"), info["splits"].get("val"), len(info["classes"]) - 1) == (
            settings["seed"], settings["size"], settings["n_train"], settings["n_val"], int(settings["classes"])
        )
        if same:
            echo(f"[data] reusing {folder}")
            return info
        echo(f"[data] {folder} was made with other settings; regenerating")
    echo(f"[data] writing the synthetic dataset to {folder}")
    return generate(folder, overwrite=True, progress=progress, **settings)


def peek_backend(backend, data_dir):
    """Load one batch in a subprocess on `backend`; returns the parsed report or an error text."""
    if not is_available(backend):
        return None, f"not installed (pip install 'wsss-keras[{'torch' if backend == 'torch' else backend}]')"
    command = [sys.executable, "-m", "wsss_keras.cli", "--backend", backend, "data", "peek", data_dir, "--split", "train", "--json"]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(result.stdout.strip().splitlines()[-1]), None


def run_quickstart(out, echo=print, progress=None):
    """Run the quickstart into the folder `out`; returns the metrics dict (also written to metrics.json)."""
    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(out, "data")
    ensure_synthetic_data(data_dir, QUICKSTART_DATA, echo, progress)

    from wsss_keras.commands.data import format_statistics

    metrics = {"data": data_dir, "backends": {}}
    for split in ("train", "val"):
        dataset = VocDataset(data_dir, split)
        statistics = dataset.statistics()
        metrics[f"{split}_statistics"] = statistics
        echo(format_statistics(dataset, statistics))

    echo("[loader] one training batch per backend")
    for backend in BACKENDS:
        report, error = peek_backend(backend, data_dir)
        metrics["backends"][backend] = report or {"error": error}
        if report:
            echo(f"  {backend:<10} {report['tensor_type']} images {report['images']} {report['dtype']}, labels {report['labels']}")
        else:
            echo(f"  {backend:<10} {error}")

    val = VocDataset(data_dir, "val")
    prediction_dir = os.path.join(out, "trivial_all_background")
    for index, name in enumerate(val.names):
        height, width = val.load_image(index).shape[:2]
        write_label_map(os.path.join(prediction_dir, f"{name}.png"), np.zeros((height, width), np.uint8))
    scores, count = score_folders(prediction_dir, os.path.join(data_dir, "SegmentationClass"), val.class_names, val.names)
    metrics["trivial_all_background"] = {"images": count, **scores.as_dict()}
    echo("[evaluate] trivial predictor (all background) on val:")
    echo(scores.table())
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    echo(f"[done] run folder: {os.path.abspath(out)} (metrics.json); trivial mIoU {100 * scores.miou:.2f}")
    failed = [backend for backend, report in metrics["backends"].items() if "error" in report and is_available(backend)]
    return metrics, failed
