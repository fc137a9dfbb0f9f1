"""`wsss report` on a run folder written in the pipeline's real formats, rendered by headless
Chromium: a screenshot is taken, every picture loads, and every link points to a file.

Chromium comes from the system (Debian's `chromium` package; the README's test command
installs it). Without it this test fails and says how to install it.
"""

import csv
import json
import os
import re
import shutil
import subprocess

import numpy as np
from click.testing import CliRunner
from helpers import tiny_synthetic
from PIL import Image

from wsss_keras.cli import cli
from wsss_keras.data.imageio import read_label_map, voc_palette, write_label_map
from wsss_keras.data.layouts import open_dataset
from wsss_keras.evaluation.cams import save_cams
from wsss_keras.pipelines.run import evaluate_run

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium():
    found = os.environ.get("WSSS_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    assert found, ("no Chromium found: install Debian's `chromium` package (apt-get install chromium; the README's "
                   "test command does) or set WSSS_CHROMIUM to a Chrome/Chromium binary")
    return found


def headless(*arguments):
    result = subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             *arguments], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def write_run(root):
    """A run folder as `wsss run` leaves it: CAMs, pseudo-labels, predictions, a training log
    and metrics.json from the real evaluation."""
    data = tiny_synthetic(root / "data", n_train=6, n_val=4, size=64)
    run = root / "run"
    rng = np.random.default_rng(0)
    train, val = open_dataset(data, "train"), open_dataset(data, "val")
    for index, name in enumerate(train.names):
        truth = read_label_map(train.label_map_paths[index])
        classes = np.flatnonzero(train.labels[index]) + 1
        cams = np.stack([(truth == c).astype(np.float32) * rng.uniform(0.6, 1.0) for c in classes], -1)
        save_cams(str(run / "cams" / f"{name}.npz"), cams, classes)
        noisy = np.where(rng.random(truth.shape) < 0.1, 0, truth).astype(np.uint8)
        write_label_map(str(run / "pseudo_labels" / f"{name}.png"), noisy)
    for index, name in enumerate(val.names):
        truth = read_label_map(val.label_map_paths[index])
        write_label_map(str(run / "predictions" / f"{name}.png"), np.roll(truth, 3, axis=1).astype(np.uint8))
    with open(run / "train_log.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "seconds", "learning_rate", "cls_loss", "loss"])
        for step in range(10, 110, 10):
            writer.writerow([step, step / 10, 1e-3, 1 / step, 2 / step])
    metrics = evaluate_run(str(run), data, {"recipe": {"name": "report-test"}}, echo=lambda line: None)
    return run, data, metrics


def test_report_renders_in_headless_chromium(tmp_path):
    run, data, metrics = write_run(tmp_path)
    assert metrics["data"] == os.path.abspath(data) and {"cams", "pseudo_labels", "segmentation"} <= set(metrics)
    result = CliRunner().invoke(cli, ["report", str(run), "--samples", "3"])
    assert result.exit_code == 0, result.output
    page = run / "report" / "index.html"
    text = page.read_text()

    links = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert len(links) >= 3 * 4 + 3 * 3 + 2  # samples (image, CAMs, pseudo-label, truth; prediction), IoU, losses
    for link in links:
        assert not re.match(r"^[a-z]+:|^/", link), f"{link}: not a relative link"
        assert (page.parent / link).is_file(), f"broken link {link}"
    assert "report-test" in text and f"{100 * metrics['segmentation']['miou']:.1f}" in text

    dom = headless("--dump-dom", page.as_uri())
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) == str(len(re.findall(r"<img ", text))), dom[:500]
    shot = tmp_path / "page.png"
    headless(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert pixels.shape[:2] == (1600, 1200) and pixels.std() > 20  # pictures drawn, not a blank page
    palette = voc_palette(7)
    assert any((np.abs(pixels - colour).sum(-1) < 3).mean() > 0.001 for colour in palette[1:7])  # label colours show


def test_report_says_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["report", str(empty)])
    assert result.exit_code == 1 and "no metrics.json" in result.output
    run, data, _ = write_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("data")
    (run / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 1 and "--data DIR" in result.output
    assert CliRunner().invoke(cli, ["report", str(run), "--data", data]).exit_code == 0


def test_report_shows_a_legend_and_marks_iou_drops(tmp_path):
    """The legend holds each label value of the shown maps in its palette colour; a class whose
    IoU in a later stage is below half of its CAM IoU is marked on the page and the console."""
    run, data, _ = write_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    # Force one drop, and one class that stays just above half of its CAM IoU.
    metrics["cams"]["iou"]["car"], metrics["segmentation"]["iou"]["car"] = 0.8, 0.3
    metrics["cams"]["iou"]["person"], metrics["pseudo_labels"]["iou"]["person"] = 0.8, 0.41
    metrics["segmentation"]["iou"]["person"] = 0.41
    (run / "metrics.json").write_text(json.dumps(metrics))
    expected = set()
    for key, label in (("pseudo_labels", "pseudo-labels"), ("segmentation", "segmentation")):
        for name, cam in metrics["cams"]["iou"].items():
            value = metrics[key]["iou"].get(name)
            if cam is not None and value is not None and value < cam / 2:
                expected.add((name, label))
    assert ("car", "segmentation") in expected and not any(name == "person" for name, _ in expected)

    result = CliRunner().invoke(cli, ["report", str(run), "--samples", "2"])
    assert result.exit_code == 0, result.output
    warned = set(re.findall(r"\[report\] warning: (\S+): (\S+) IoU [\d.]+ % < half of its CAM IoU", result.output))
    assert warned == expected
    assert "car: segmentation IoU 30.0 % < half of its CAM IoU 80.0 %" in result.output
    text = (run / "report" / "index.html").read_text()
    assert set(re.findall(r'class="warning drop" data-class="([^"]+)"', text)) == {name for name, _ in expected}

    # Legend: the values of the label maps the page shows (pseudo-labels, predictions, truth).
    shown_train = re.findall(r'src="img/train_(\w+)_pseudo_labels\.png"', text)
    shown_val = re.findall(r'src="img/val_(\w+)_predictions\.png"', text)
    assert len(shown_train) == len(shown_val) == 2
    values = set()
    for name in shown_train:
        values |= set(np.unique(read_label_map(str(run / "pseudo_labels" / f"{name}.png"))).tolist())
        values |= set(np.unique(read_label_map(os.path.join(data, "SegmentationClass", f"{name}.png"))).tolist())
    legends = re.findall(r'<aside class="legend">(.*?)</aside>', text)
    assert len(legends) == 2
    entries = dict(re.findall(r'data-label="(\d+)"><span class="swatch" style="background: (rgb\([^)]*\))"', legends[0]))
    assert {int(v) for v in entries} == values and 255 in values
    palette = voc_palette(256)
    names = open_dataset(data, "train").class_names
    for value in values:
        assert entries[str(value)] == "rgb({}, {}, {})".format(*palette[value])
        assert f"{value} {'ignore' if value == 255 else names[value]}</li>" in legends[0]
