"""The synthetic dataset: layout, determinism, labels that agree, and the two traps."""

import hashlib
import json
import os

import numpy as np
import pytest
from helpers import tiny_synthetic

from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map
from wsss_keras.data.synthetic import CATALOG, generate, render_sample, resolve_classes
from wsss_keras.errors import DataError


def digest(folder):
    sha = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            sha.update(name.encode())
            with open(os.path.join(dirpath, name), "rb") as handle:
                sha.update(handle.read())
    return sha.hexdigest()


def test_voc_layout_is_complete(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=5, n_val=3)
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations"):
        assert len(os.listdir(os.path.join(root, folder))) == 8, folder
    for split, count in (("train", 5), ("train_aug", 5), ("val", 3)):
        with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")) as handle:
            assert len(handle.read().split()) == count
    with open(os.path.join(root, "class_names.txt")) as handle:
        assert handle.read().split() == ["background", "aeroplane", "boat", "car", "person", "train", "bus"]
    from PIL import Image

    with Image.open(os.path.join(root, "SegmentationClass", "val_00000.png")) as png:
        assert png.mode == "P"  # a palette PNG, as VOC's


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = tiny_synthetic(tmp_path / "a", seed=3)
    b = tiny_synthetic(tmp_path / "b", seed=3)
    c = tiny_synthetic(tmp_path / "c", seed=4)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_xml_cls_labels_and_masks_agree(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=20, n_val=5)
    from_xml = VocDataset(root, "train", labels_from="xml").labels
    from_masks = VocDataset(root, "train", labels_from="masks").labels
    from_file = VocDataset(root, "train", labels_from="cls_labels", cls_labels=os.path.join(root, "cls_labels.npy")).labels
    np.testing.assert_array_equal(from_xml, from_masks)
    np.testing.assert_array_equal(from_xml, from_file)
    assert from_xml.sum(1).min() >= 1  # every image has an object


def test_masks_hold_only_classes_and_ignore(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=10, n_val=2)
    values = set()
    for name in os.listdir(os.path.join(root, "SegmentationClass")):
        values |= set(np.unique(read_label_map(os.path.join(root, "SegmentationClass", name), 7)).tolist())
    assert 255 in values and 0 in values and values <= set(range(7)) | {255}


def test_traps_are_built_in():
    """Water comes with boats and rails with trains far more often than without; plain bodies
    of the under-activation classes appear as background; their distinctive part is small."""
    names = resolve_classes(6)
    stats = {"water|boat": [], "water|no boat": [], "rails|train": [], "rails|no train": [], "distractor": []}
    fin_share = []
    for index in range(300):
        rng = np.random.default_rng([11, 0, index])
        image, label_map, objects, context = render_sample(rng, 96, names)
        present = {name for name, _ in objects}
        stats["water|boat" if "boat" in present else "water|no boat"].append(bool(context.get("water")))
        stats["rails|train" if "train" in present else "rails|no train"].append(bool(context.get("rails")))
        stats["distractor"].append(bool(context.get("aeroplane_distractor") or context.get("bus_distractor")))
        if present == {"aeroplane"}:
            plane = label_map == 1
            red = (image[..., 0] > 170) & (image[..., 1] < 90) & plane
            fin_share.append(red.sum() / max(plane.sum(), 1))
    rates = {key: float(np.mean(value)) for key, value in stats.items()}
    assert rates["water|boat"] > 0.85 and rates["water|no boat"] < 0.15, rates
    assert rates["rails|train"] > 0.85 and rates["rails|no train"] < 0.15, rates
    assert rates["distractor"] > 0.3, rates
    assert fin_share and 0.0 < np.mean(fin_share) < 0.15, fin_share


def test_synthetic_json_records_the_trap_counts(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=40, n_val=4)
    with open(os.path.join(root, "synthetic.json")) as handle:
        info = json.load(handle)
    assert info["traps"] == {"boat": "co-occurrence", "train": "co-occurrence", "aeroplane": "under-activation", "bus": "under-activation"}
    with_boat = info["context_counts"]["train/water|with_boat"]
    assert with_boat[1] > 0 and with_boat[0] / with_boat[1] > 0.8


def test_class_choice():
    assert resolve_classes(3) == CATALOG[:3]
    assert resolve_classes("cat,dog") == ("cat", "dog")
    with pytest.raises(DataError, match="unknown: unicorn"):
        resolve_classes("cat,unicorn")
    with pytest.raises(DataError, match="choose 1..12"):
        resolve_classes(13)


def test_existing_folder_is_not_overwritten_silently(tmp_path):
    root = tiny_synthetic(tmp_path / "s")
    with pytest.raises(DataError, match="not empty; choose another folder or pass --overwrite"):
        generate(root, n_train=2, n_val=1)


def test_twelve_classes_render(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=30, n_val=2, classes="12")
    dataset = VocDataset(root, "train")
    assert dataset.num_classes == 13
    assert dataset.labels.sum(0).min() >= 1  # every class appears in 30 images
