"""`wsss data synth --style` and `--present-classes` (#22): the styles are deterministic, the
default stays the data it was, photo's objects are small, and a VOC subset keeps VOC's classes."""

import hashlib
import json
import os
from xml.etree import ElementTree

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from wsss_keras.cli import cli
from wsss_keras.data import VocDataset
from wsss_keras.data.classes import VOC_CLASSES
from wsss_keras.data.imageio import read_label_map
from wsss_keras.data.synthetic import RENDERERS, STYLES, generate, resolve_classes
from wsss_keras.errors import DataError

# md5 over (relative path, bytes) of every file of generate(n_train=3, n_val=2, size=48, seed=7),
# recorded from the code before styles existed (commit 3fdede5): the default must not move.
DEFAULT_BEFORE_STYLES = "7b0c83f80e2956906a65e4edac9afc67"


def tree_md5(root):
    sha = hashlib.md5()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            sha.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as handle:
                sha.update(handle.read())
    return sha.hexdigest()


def masks(root):
    folder = os.path.join(root, "SegmentationClass")
    return {name[:-4]: read_label_map(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def xml_names(root, stem):
    return [node.findtext("name") for node in ElementTree.parse(os.path.join(root, "Annotations", f"{stem}.xml")).iter("object")]


def test_default_is_flat_and_unchanged(tmp_path):
    default = generate(str(tmp_path / "d"), n_train=3, n_val=2, size=48, seed=7)
    generate(str(tmp_path / "f"), n_train=3, n_val=2, size=48, seed=7, style="flat")
    assert tree_md5(tmp_path / "d") == DEFAULT_BEFORE_STYLES
    assert tree_md5(tmp_path / "f") == DEFAULT_BEFORE_STYLES
    assert "style" not in default and "present_classes" not in default


@pytest.mark.parametrize("style", ["photo", "clutter"])
def test_styles_are_deterministic_and_follow_the_seed(tmp_path, style):
    kwargs = {"n_train": 3, "n_val": 2, "size": "64x64,61x40", "style": style}
    generate(str(tmp_path / "a"), seed=1, **kwargs)
    generate(str(tmp_path / "b"), seed=1, **kwargs)
    generate(str(tmp_path / "c"), seed=2, **kwargs)
    assert tree_md5(tmp_path / "a") == tree_md5(tmp_path / "b")
    assert tree_md5(tmp_path / "a") != tree_md5(tmp_path / "c")
    assert tree_md5(tmp_path / "a") != tree_md5(generate_flat(tmp_path / "flat", seed=1, **kwargs))
    # Each image differs from the other seed's (not only one file).
    a, c = masks(tmp_path / "a"), masks(tmp_path / "c")
    assert sum(not np.array_equal(a[name], c[name]) for name in a) >= 4
    dataset = VocDataset(str(tmp_path / "a"), "train_aug")
    assert dataset.check() == []
    np.testing.assert_array_equal(dataset.labels, VocDataset(str(tmp_path / "a"), "train_aug", labels_from="masks").labels)
    with open(tmp_path / "a" / "synthetic.json") as handle:
        assert json.load(handle)["style"] == style


def generate_flat(folder, **kwargs):
    generate(str(folder), **{**kwargs, "style": "flat"})
    return folder


def test_photo_objects_cover_half_to_two_percent_each():
    """Measured on the label maps alone: every 8-connected piece of a class is one object
    (photo keeps objects apart) and covers 0.5-2 % of the image, at several sizes."""
    names = resolve_classes(12)
    pieces = 0
    for size in (64, (97, 61), 128):
        for index in range(12):
            _, label_map, objects, _ = RENDERERS["photo"](np.random.default_rng([5, 0, index]), size, names, void_border=0)
            for value in set(np.unique(label_map).tolist()) - {0}:
                count, _, stats, _ = cv2.connectedComponentsWithStats((label_map == value).astype(np.uint8), connectivity=8)
                assert count - 1 == sum(name == names[value - 1] for name, _ in objects)
                for area in stats[1:, cv2.CC_STAT_AREA]:
                    assert 0.005 <= area / label_map.size <= 0.02, (size, index, value, area / label_map.size)
                    pieces += 1
    assert pieces >= 40


def test_photo_objects_in_the_written_masks(tmp_path):
    """In the files (with VOC's void band): an object's own pixels stay under 2 % of the image
    and, with its band, reach 0.5 %; each piece holds one class."""
    generate(str(tmp_path / "p"), n_train=10, n_val=2, size=96, style="photo", seed=3, classes=12)
    for label_map in masks(tmp_path / "p").values():
        count, pieces = cv2.connectedComponents((label_map != 0).astype(np.uint8), connectivity=8)
        assert count >= 2
        for piece in range(1, count):
            values = set(np.unique(label_map[pieces == piece]).tolist()) - {255}
            assert len(values) == 1
            own = int(np.isin(label_map[pieces == piece], list(values)).sum())
            assert own / label_map.size <= 0.02 and (pieces == piece).sum() / label_map.size >= 0.005


def test_clutter_has_many_thin_objects(tmp_path):
    generate(str(tmp_path / "c"), n_train=12, n_val=2, size=96, style="clutter", seed=0)
    per_image, fill = [], []
    for stem, label_map in masks(tmp_path / "c").items():
        per_image.append(len(xml_names(tmp_path / "c", stem)))
        for value in set(np.unique(label_map).tolist()) - {0, 255}:
            ys, xs = np.nonzero(label_map == value)
            fill.append(len(ys) / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    assert np.mean(per_image) >= 3  # VOC averages about 1.5 classes' objects per image
    assert np.median(fill) < 0.35  # thin strokes fill little of their box


@pytest.mark.parametrize("present", ["8", "cat,chair,person"])
def test_present_classes_keep_vocs_21_classes(tmp_path, present):
    root = str(tmp_path / "s")
    style = "photo" if "," in present else "flat"
    generate(root, n_train=24, n_val=4, size=64, present_classes=present, style=style)
    chosen = present.split(",") if "," in present else ["aeroplane", "boat", "car", "person", "train", "bus", "dog", "bird"]
    allowed = {VOC_CLASSES.index(name) for name in chosen}
    with open(os.path.join(root, "class_names.txt")) as handle:
        assert tuple(handle.read().split()) == VOC_CLASSES
    seen = set()
    for stem, label_map in masks(root).items():
        values = set(np.unique(label_map).tolist()) - {0, 255}
        listed = {VOC_CLASSES.index(name) for name in xml_names(root, stem)}
        assert values <= listed <= allowed
        if style != "flat":  # flat may list a sliver that its void band covers whole (as before styles)
            assert listed == values
        seen |= values
    assert len(seen) >= min(len(allowed), 3)
    dataset = VocDataset(root, "train")
    assert dataset.num_classes == 21
    never = [index - 1 for index in range(1, 21) if index not in allowed]
    assert dataset.labels[:, never].sum() == 0
    labels = np.load(os.path.join(root, "cls_labels.npy"), allow_pickle=True).item()
    assert all(vector.shape == (20,) and vector[never].sum() == 0 for vector in labels.values())
    if style != "flat":
        np.testing.assert_array_equal(dataset.labels, VocDataset(root, "train", labels_from="masks").labels)


def test_bad_style_and_subset_arguments(tmp_path):
    result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--style", "glossy"])
    assert result.exit_code == 2
    assert "Invalid value for '--style'" in result.output and all(style in result.output for style in STYLES)
    with pytest.raises(DataError, match="flat, photo, clutter"):
        generate(str(tmp_path / "y"), style="glossy", n_train=1, n_val=1)
    with pytest.raises(DataError, match="unknown: unicorn"):
        generate(str(tmp_path / "y"), present_classes="cat,unicorn", n_train=1, n_val=1)
    with pytest.raises(DataError, match="give one"):
        generate(str(tmp_path / "y"), classes="3", present_classes="3", n_train=1, n_val=1)
    with pytest.raises(DataError, match="80 classes"):
        generate(str(tmp_path / "y"), layout="coco", present_classes="3", n_train=1, n_val=1)
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_cli_writes_a_styled_subset(tmp_path):
    out = str(tmp_path / "o")
    result = CliRunner().invoke(cli, ["data", "synth", out, "--style", "clutter", "--present-classes", "dog,horse", "--n-train", "3", "--n-val", "1"])
    assert result.exit_code == 0, result.output
    assert "classes: dog, horse (of VOC's 20)" in result.output
    with open(os.path.join(out, "synthetic.json")) as handle:
        info = json.load(handle)
    assert info["style"] == "clutter" and info["present_classes"] == ["dog", "horse"] and len(info["classes"]) == 21


@pytest.mark.parametrize("style", ["photo", "clutter"])
def test_styles_write_the_coco_layout(tmp_path, style):
    from wsss_keras.data.coco import CocoDataset

    root = str(tmp_path / "coco")
    generate(root, layout="coco", style=style, n_train=3, n_val=1, size=64)
    dataset = CocoDataset(root, "train2014")
    assert dataset.check() == [] and dataset.labels.sum(1).min() >= 1


def test_photo_keeps_the_traps():
    """As in flat: water comes with boats and rails with trains far more often than without, and
    plain bodies of the under-activation classes appear as background."""
    names = resolve_classes(6)
    seen = {"water|boat": [], "water|no boat": [], "rails|train": [], "rails|no train": [], "distractor": []}
    for index in range(90):
        _, label_map, objects, context = RENDERERS["photo"](np.random.default_rng([9, 0, index]), 48, names, void_border=0)
        present = {names[value - 1] for value in np.unique(label_map) if value}
        assert present == {name for name, _ in objects}
        seen["water|boat" if "boat" in present else "water|no boat"].append(bool(context.get("water")))
        seen["rails|train" if "train" in present else "rails|no train"].append(bool(context.get("rails")))
        seen["distractor"].append(bool(context.get("aeroplane_distractor") or context.get("bus_distractor")))
    rates = {key: float(np.mean(value)) for key, value in seen.items()}
    assert rates["water|boat"] > 0.8 and rates["water|no boat"] < 0.2, rates
    assert rates["rails|train"] > 0.8 and rates["rails|no train"] < 0.2, rates
    assert rates["distractor"] > 0.3, rates
