"""Confident IR labels from CAMs (IRN's cam_to_ir_label) and the classification-stage transform."""

import os
import sys

import numpy as np
import pytest

from helpers import tiny_synthetic
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map
from wsss_keras.data.transforms import CamTrainTransform, cutout, random_resize_long
from wsss_keras.errors import DataError, WSSSError
from wsss_keras.evaluation.cams import save_cams
from wsss_keras.pipelines.ir_labels import confident_labels, make_ir_labels


def test_confident_labels_three_bands_without_crf():
    # Class 4 at 0.9 (> fg 0.6), 0.5 (between), 0.2 (< bg 0.33); class 9 wins where it is stronger.
    cams = np.array([[[0.9, 0.1], [0.5, 0.2], [0.2, 0.1], [0.3, 0.7]]], np.float32)
    labels = confident_labels(np.zeros((1, 4, 3), np.uint8), cams, [4, 9], 0.60, 0.33, crf=False)
    assert labels.tolist() == [[4, 255, 0, 9]]


def test_confident_labels_without_classes_are_all_background():
    labels = confident_labels(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 0), np.float32), [], crf=False)
    assert labels.tolist() == [[0, 0, 0], [0, 0, 0]]


def test_confident_labels_crf_snaps_to_the_image():
    # A red square on black; the CAM overshoots it by 3 pixels. The CRF pulls the label back
    # to the square's colour edge, which the plain argmax cannot.
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = (220, 30, 30)
    cams = np.zeros((32, 32, 1), np.float32)
    cams[5:27, 5:27] = 0.9
    plain = confident_labels(image, cams, [1], crf=False)
    refined = confident_labels(image, cams, [1], crf=True)
    square = np.zeros((32, 32), bool)
    square[8:24, 8:24] = True
    assert (plain[~square] == 1).sum() > 100
    assert (refined[square] == 1).mean() > 0.95
    assert (refined[~square] == 1).sum() < (plain[~square] == 1).sum() / 4


def test_confident_labels_crf_without_pydensecrf_says_how_to_install_it(monkeypatch):
    # pydensecrf is in the dev extra, so its absence is simulated: None in sys.modules makes
    # the import fail as on an install without the `crf` extra.
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    cams = np.full((8, 8, 1), 0.9, np.float32)
    with pytest.raises(WSSSError, match=r"wsss-keras\[crf\]"):
        confident_labels(np.zeros((8, 8, 3), np.uint8), cams, [1], crf=True)


def test_make_ir_labels_writes_and_resumes(tmp_path):
    root = tiny_synthetic(tmp_path / "data", n_train=3, n_val=1, size=32)
    dataset = VocDataset(root, "train")
    for index, name in enumerate(dataset.names):
        classes = np.flatnonzero(dataset.labels[index]) + 1
        cams = np.full((32, 32, len(classes)), 0.2, np.float32)
        cams[:16] = 0.8
        save_cams(tmp_path / "cams" / f"{name}.npz", cams, classes)
    assert make_ir_labels(dataset, str(tmp_path / "cams"), str(tmp_path / "ir"), crf=False) == 3
    label = read_label_map(os.path.join(tmp_path / "ir", f"{dataset.names[0]}.png"))
    assert set(np.unique(label[16:])) == {0} and 0 not in np.unique(label[:16])
    assert make_ir_labels(dataset, str(tmp_path / "cams"), str(tmp_path / "ir"), crf=False) == 0


def test_make_ir_labels_names_what_is_wrong(tmp_path):
    root = tiny_synthetic(tmp_path / "data", n_train=2, n_val=1, size=32)
    dataset = VocDataset(root, "train")
    with pytest.raises(WSSSError, match="fg=0.3, bg=0.5"):
        make_ir_labels(dataset, str(tmp_path), str(tmp_path / "ir"), fg_threshold=0.3, bg_threshold=0.5, crf=False)
    os.makedirs(tmp_path / "cams")
    with pytest.raises(DataError, match=f"{dataset.names[0]}.npz.*wsss cams"):
        make_ir_labels(dataset, str(tmp_path / "cams"), str(tmp_path / "ir"), crf=False)


def test_cutout_blanks_squares_clipped_at_the_border():
    image = np.ones((20, 20, 3), np.float32)
    out = cutout(np.random.default_rng(0), image, count=3, size=8)
    blank = (out == 0).all(-1)
    assert 0 < blank.sum() <= 3 * 64 and image.min() == 1.0  # the input is left alone
    rows, cols = np.nonzero(blank)
    assert rows.max() - rows.min() < 20 and (out[~blank] == 1).all()


def test_resize_long_side_is_drawn_from_the_range():
    rng = np.random.default_rng(0)
    sides = {max(random_resize_long(rng, np.zeros((30, 60, 3), np.uint8), None, (40, 44))[0].shape[:2]) for _ in range(50)}
    assert sides == {40, 41, 42, 43, 44}


def test_cam_train_transform_crops_and_cuts_out():
    transform = CamTrainTransform(crop_size=24, long_side=(16, 20), cutout_count=2, cutout_size=6)
    image, label_map, box = transform(np.random.default_rng(1), np.full((40, 30, 3), 200, np.uint8))
    assert image.shape == (24, 24, 3) and label_map is None
    y0, y1, x0, x1 = box
    assert max(y1 - y0, x1 - x0) in range(16, 21)  # the whole resized image fits in the crop
    inside = image[y0:y1, x0:x1]
    assert (inside == 0).all(-1).any() and (inside != 0).any()
