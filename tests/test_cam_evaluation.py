"""CAM files and the background-threshold sweep, in the API and through `wsss evaluate`."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import tiny_synthetic
from wsss_keras.cli import cli
from wsss_keras.data import VocDataset
from wsss_keras.errors import DataError
from wsss_keras.evaluation import ConfusionMatrix
from wsss_keras.evaluation.cams import ThresholdSweep, load_cams, save_cams, sweep_cam_folder


def noisy_cams(rng, truth, classes, noise=0.25):
    """CAMs that are high on each class's pixels, plus noise."""
    cams = np.stack([(truth == c).astype(np.float32) * 0.8 for c in classes], -1)
    return np.clip(cams + rng.uniform(0, noise, cams.shape), 0, 1).astype(np.float32)


def test_save_and_load_round_trip(tmp_path):
    cams = np.random.default_rng(0).random((5, 7, 2)).astype(np.float32)
    save_cams(str(tmp_path / "a.npz"), cams, [3, 5])
    loaded, classes = load_cams(str(tmp_path / "a.npz"))
    np.testing.assert_allclose(loaded, cams, atol=1e-3)  # stored as float16
    assert classes.tolist() == [3, 5]
    with pytest.raises(ValueError, match="must be"):
        save_cams(str(tmp_path / "b.npz"), cams, [1])


def test_sweep_equals_scoring_each_threshold_alone():
    rng = np.random.default_rng(1)
    truths = [rng.choice([0, 2, 4, 255], size=(12, 10), p=[0.5, 0.2, 0.2, 0.1]) for _ in range(3)]
    sweep = ThresholdSweep(5, thresholds=(0.2, 0.5, 0.9))
    singles = {t: ConfusionMatrix(5) for t in sweep.thresholds}
    for truth in truths:
        cams = noisy_cams(rng, truth, [2, 4])
        sweep.update(cams, np.array([2, 4]), truth)
        for threshold, matrix in singles.items():
            prediction = np.where(cams.max(-1) > threshold, np.array([2, 4])[cams.argmax(-1)], 0)
            matrix.update(prediction, truth)
    for threshold, scores in zip(sweep.thresholds, sweep.scores()):
        assert scores.miou == pytest.approx(singles[threshold].scores().miou)
    best_threshold, best = sweep.best()
    assert best_threshold == 0.5 and best.miou == max(s.miou for s in sweep.scores())


def test_evaluate_cli_sweeps_cam_files(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=2, n_val=5)
    dataset = VocDataset(root, "val")
    rng = np.random.default_rng(2)
    for index, name in enumerate(dataset.names):
        truth = dataset.load_label_map(index)
        classes = np.flatnonzero(dataset.labels[index]) + 1
        save_cams(str(tmp_path / "cams" / f"{name}.npz"), noisy_cams(rng, truth, classes), classes)
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "cams"), os.path.join(root, "SegmentationClass"), "--thresholds", "0.1,0.5,0.95", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads(open(tmp_path / "r.json").read())
    assert report["best_threshold"] == 0.5 and report["images"] == 5
    assert report["sweep"]["0.50"] > 0.9 > report["sweep"]["0.95"]
    assert "best background threshold 0.50" in result.output
    bad = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "cams"), os.path.join(root, "SegmentationClass"), "--thresholds", "2"])
    assert bad.exit_code == 2 and "--thresholds" in bad.output


def test_cam_size_must_match_the_label_map(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=2, n_val=1)
    save_cams(str(tmp_path / "cams" / "val_00000.npz"), np.zeros((8, 8, 1), np.float32), [1])
    with pytest.raises(DataError, match=r"val_00000\.npz: CAMs are 8x8, the label map 64x64"):
        sweep_cam_folder(str(tmp_path / "cams"), os.path.join(root, "SegmentationClass"), VocDataset(root, "val").class_names)
