"""`wsss data synth` beyond square VOC images: WxH sizes, size lists, the COCO layout (#24 item 4)."""

import hashlib
import json
import os
from xml.etree import ElementTree

import numpy as np
import pytest
from click.testing import CliRunner

from wsss_keras.cli import cli
from wsss_keras.data import open_dataset
from wsss_keras.data.classes import COCO_CLASSES
from wsss_keras.data.coco import CocoDataset, instances_to_label_maps
from wsss_keras.data.imageio import read_image, read_label_map
from wsss_keras.data.synthetic import (
    CATALOG,
    SIZE_SHORTHANDS,
    generate,
    parse_sizes,
    render_sample,
)
from wsss_keras.errors import DataError


def md5(array):
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


def file_md5(path):
    with open(path, "rb") as handle:
        return hashlib.md5(handle.read()).hexdigest()


# Recorded at commit df4ba90 (before WxH sizes and the COCO layout), from the code of that
# commit: the square output must stay the same bit for bit.
RENDERED_BEFORE = {  # side: (md5 of the image array, md5 of the label map array)
    64: ("9ff5d29b48144c6f4eb6dfee7f35fe50", "a16b4dc5b87dfbecdc7e8b5dd8363cbb"),
    45: ("a7b11dd20262908e897f55f5ede2b345", "286c32711caf15eccb611f44d70015e5"),
    128: ("79f45d470c5a3a519d62927f7978e6af", "fbd69b02db379d4c2160b2bd6f91a099"),
}
# `wsss data synth OUT --n-train 10 --n-val 5` at df4ba90: decoded label maps and files' md5.
CLI_BEFORE = {
    "SegmentationClass/train_00000.png": "72217880b68ac9bee6d42746774387bd",
    "SegmentationClassAug/val_00004.png": "4bd63a07b7e53341becec943dd658763",
    "Annotations/train_00000.xml": "d8f20edee19055784647cbc79f2a09d5",
    "class_names.txt": "1d6ce35d35e0906ce874339832641115",
}


@pytest.mark.parametrize("side", sorted(RENDERED_BEFORE))
def test_square_rendering_is_unchanged(side):
    image, label_map, _, _ = render_sample(np.random.default_rng([0, 0, 3]), side, CATALOG)
    assert (md5(image), md5(label_map)) == RENDERED_BEFORE[side]


def test_default_cli_output_is_unchanged(tmp_path):
    out = str(tmp_path / "d")
    # Each image has its own random stream, so fewer images leave these files as they were.
    result = CliRunner().invoke(cli, ["data", "synth", out, "--n-train", "1", "--n-val", "5"])
    assert result.exit_code == 0, result.output
    for name, expected in CLI_BEFORE.items():
        path = os.path.join(out, name)
        got = md5(read_label_map(path)) if name.endswith(".png") else file_md5(path)
        assert got == expected, name
    with open(os.path.join(out, "synthetic.json")) as handle:
        assert json.load(handle)["size"] == 128


def test_odd_size_and_a_list_give_those_sizes(tmp_path):
    sizes = [(37, 53), (61, 40), (48, 48)]
    root = str(tmp_path / "v")
    generate(root, size="37x53, 61x40,48x48", n_train=4, n_val=2, seed=1)
    for split, count in (("train", 4), ("val", 2)):
        for index in range(count):
            width, height = sizes[index % len(sizes)]  # the images cycle through the list
            name = f"{split}_{index:05d}"
            assert read_image(os.path.join(root, "JPEGImages", f"{name}.jpg")).shape == (height, width, 3)
            for folder in ("SegmentationClass", "SegmentationClassAug"):
                assert read_label_map(os.path.join(root, folder, f"{name}.png")).shape == (height, width)
            size_node = ElementTree.parse(os.path.join(root, "Annotations", f"{name}.xml")).find("size")
            assert (int(size_node.findtext("width")), int(size_node.findtext("height"))) == (width, height)
    dataset = open_dataset(root, "train_aug")
    assert dataset.check() == []
    np.testing.assert_array_equal(dataset.labels, open_dataset(root, "train_aug", labels_from="masks").labels)
    single = str(tmp_path / "one")
    generate(single, size="45x97", n_train=1, n_val=1)
    assert read_label_map(os.path.join(single, "SegmentationClass", "val_00000.png")).shape == (97, 45)


def test_parse_sizes():
    assert parse_sizes(128) == 128 and parse_sizes("96") == 96
    assert parse_sizes("500x375") == ((500, 375),)
    assert parse_sizes("voc") == SIZE_SHORTHANDS["voc"]
    assert parse_sizes("voc,64x32")[-1] == (64, 32)
    for bad in ("500x", "0x10", "abc", "31", "64x64x3", ""):
        with pytest.raises(DataError):
            parse_sizes(bad)


@pytest.mark.parametrize("bad", ["500x", "0x10", "abc"])
def test_bad_sizes_give_one_clear_error_line(tmp_path, bad):
    result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--size", bad])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith("Error: Invalid value for '--size':"), result.output
    assert "WxH" in errors[0] or "32..4096" in errors[0]
    assert not os.path.exists(tmp_path / "x")


def test_coco_layout_opens_with_81_classes_and_labels_from_its_maps(tmp_path):
    root = str(tmp_path / "coco")
    result = CliRunner().invoke(cli, ["data", "synth", root, "--layout", "coco", "--size", "97x61,61x97,75x75", "--n-train", "9", "--n-val", "3"])
    assert result.exit_code == 0, result.output
    seen = set()
    for split, count in (("train2014", 9), ("val2014", 3)):
        dataset = open_dataset(root, split)
        assert isinstance(dataset, CocoDataset) and len(dataset) == count
        assert tuple(dataset.class_names) == COCO_CLASSES and len(dataset.class_names) == 81
        assert dataset.check() == []
        # The image-level labels equal the classes read off the label maps written.
        expected = np.zeros((count, 80), np.float32)
        for row, name in enumerate(dataset.names):
            label_map = read_label_map(os.path.join(root, "SegmentationClass", split, f"{name}.png"))
            assert label_map.shape == read_image(os.path.join(root, "JPEGImages", split, f"{name}.jpg")).shape[:2]
            values = set(np.unique(label_map).tolist()) - {0}
            assert values <= set(range(1, 81))
            expected[row, [v - 1 for v in values]] = 1.0
            seen |= values
        np.testing.assert_array_equal(dataset.labels, expected)
        assert expected.sum(1).min() >= 1 and expected.sum(1).max() >= 2  # every image labelled, some several
        # The instances JSON says the same, and its RLE masks rebuild the label maps exactly.
        instances = os.path.join(root, "annotations", f"instances_{split}.json")
        np.testing.assert_array_equal(CocoDataset(root, split, instances=instances).labels, expected)
        np.testing.assert_array_equal(CocoDataset(root, split, cls_labels=os.path.join(root, "cls_labels.npy")).labels, expected)
        rebuilt = str(tmp_path / f"rebuilt_{split}")
        assert instances_to_label_maps(instances, rebuilt) == count
        for name in dataset.names:
            np.testing.assert_array_equal(
                read_label_map(os.path.join(rebuilt, f"{name}.png")),
                read_label_map(os.path.join(root, "SegmentationClass", split, f"{name}.png")),
            )
    assert len(seen) >= 12  # many classes, not only the catalog's drawers
    assert not set(seen) <= {COCO_CLASSES.index(name) for name in ("person", "car", "bus", "train", "boat", "bird", "cat", "dog", "sheep", "bottle")}


def test_coco_layout_rejects_classes(tmp_path):
    with pytest.raises(DataError, match="80 classes"):
        generate(str(tmp_path / "c"), classes="3", layout="coco", n_train=1, n_val=1)
