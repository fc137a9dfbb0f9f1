"""VOC and COCO layouts: label sources, key styles, part names, instances JSON conversion."""

import json
import os

import numpy as np
import pytest

from helpers import tiny_synthetic
from wsss_keras.data import CocoDataset, VocDataset, open_dataset
from wsss_keras.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES, VOC_CLASSES
from wsss_keras.data.coco import instances_to_label_maps
from wsss_keras.data.imageio import read_label_map, voc_palette, write_image, write_label_map


def test_voc_palette_matches_known_entries():
    palette = voc_palette()
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]


def test_class_lists():
    assert len(VOC_CLASSES) == 21 and len(COCO_CLASSES) == 81 and len(COCO_CATEGORY_IDS) == 80


def test_person_parts_are_not_labels(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=2, n_val=1)
    path = os.path.join(root, "Annotations", "train_00000.xml")
    text = open(path).read()
    # A VOC person object carries <part><name>head</name></part>; only the object's own name counts.
    text = text.replace("</annotation>", "<object><name>person</name><part><name>head</name></part></object></annotation>")
    with open(path, "w") as handle:
        handle.write(text)
    dataset = VocDataset(root, "train")
    assert dataset.labels[0, dataset.class_names.index("person") - 1] == 1


def test_irn_style_integer_keys(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=3, n_val=1)
    names = ["2007_000032", "2007_000039"]
    for name in names:
        write_image(os.path.join(root, "JPEGImages", f"{name}.jpg"), np.zeros((8, 8, 3), np.uint8))
    with open(os.path.join(root, "ImageSets", "Segmentation", "ids.txt"), "w") as handle:
        handle.write("\n".join(names))
    vectors = {2007000032: np.eye(6)[1], 2007000039: np.concatenate([[0], np.eye(6)[4]])}  # 6 fg, or 7 with bg
    np.save(tmp_path / "cls.npy", vectors)
    dataset = VocDataset(root, "ids", labels_from="cls_labels", cls_labels=str(tmp_path / "cls.npy"))
    np.testing.assert_array_equal(dataset.labels, [np.eye(6)[1], np.eye(6)[4]])


def test_custom_class_names_and_statistics(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=8, n_val=2, classes="car,dog")
    dataset = open_dataset(root, "train")
    assert isinstance(dataset, VocDataset)
    assert dataset.class_names == ("background", "car", "dog")
    stats = dataset.statistics()
    assert sum(stats["images_per_class"].values()) == int(dataset.labels.sum())
    assert sum(stats["pixel_fraction"].values()) + stats["ignore_fraction"] == pytest.approx(1.0)


def polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture()
def coco_root(tmp_path):
    root = tmp_path / "coco"
    images = [
        {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": 20, "width": 30},
        {"id": 25, "file_name": "COCO_val2014_000000000025.jpg", "height": 16, "width": 16},
    ]
    crowd_mask = np.zeros((16, 16), np.uint8, order="F")
    crowd_mask[10:16, 0:6] = 1
    from pycocotools import mask as mask_utils

    crowd_rle = mask_utils.encode(crowd_mask)
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    annotations = [
        {"id": 1, "image_id": 9, "category_id": 1, "segmentation": polygon(2, 2, 20, 15), "area": 234, "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 90, "segmentation": polygon(5, 5, 10, 10), "area": 25, "iscrowd": 0},
        {"id": 3, "image_id": 25, "category_id": 18, "segmentation": polygon(0, 0, 8, 8), "area": 64, "iscrowd": 0},
        {"id": 4, "image_id": 25, "category_id": 1, "segmentation": crowd_rle, "area": 36, "iscrowd": 1},
    ]
    categories = [{"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:])]
    os.makedirs(root / "annotations")
    with open(root / "annotations" / "instances_val2014.json", "w") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)
    for image in images:
        write_image(str(root / "JPEGImages" / "val2014" / image["file_name"]), np.full((image["height"], image["width"], 3), 90, np.uint8))
    return root


def test_coco_instances_to_label_maps(coco_root):
    count = instances_to_label_maps(str(coco_root / "annotations" / "instances_val2014.json"), str(coco_root / "SegmentationClass" / "val2014"))
    assert count == 2
    first = read_label_map(str(coco_root / "SegmentationClass" / "val2014" / "COCO_val2014_000000000009.png"))
    assert first.shape == (20, 30)
    assert first[3, 3] == 1  # person (category 1 -> index 1)
    assert first[7, 7] == 80  # toothbrush (category 90 -> index 80), the smaller object on top
    assert first[18, 28] == 0
    second = read_label_map(str(coco_root / "SegmentationClass" / "val2014" / "COCO_val2014_000000000025.png"))
    assert second[3, 3] == COCO_CLASSES.index("dog")  # category 18
    assert second[13, 3] == 255  # crowd
    # Labels from the instances JSON equal those read off the converted masks (crowd counts too).
    from_json = CocoDataset(str(coco_root), "val2014", "instances", instances=str(coco_root / "annotations" / "instances_val2014.json"))
    from_masks = CocoDataset(str(coco_root), "val2014", "masks")
    assert from_json.names == ["COCO_val2014_000000000009", "COCO_val2014_000000000025"]
    np.testing.assert_array_equal(from_json.labels[0], from_masks.labels[0])
    assert from_json.labels[1, 0] == 1 and from_masks.labels[1, 0] == 0  # person only as crowd
    assert isinstance(open_dataset(str(coco_root), "val2014"), CocoDataset)


def test_write_and_read_label_map_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 21, (11, 13)).astype(np.uint8)
    labels[0] = 255
    write_label_map(str(tmp_path / "x.png"), labels)
    np.testing.assert_array_equal(read_label_map(str(tmp_path / "x.png"), 21), labels)


def test_label_maps_from_another_folder(tmp_path):
    root = tiny_synthetic(tmp_path / "s", n_train=4, n_val=2, classes="car,dog")
    dataset = open_dataset(root, "train")
    folder = tmp_path / "pseudo"
    for index, name in enumerate(dataset.names[:3]):
        height, width = dataset.load_image(index).shape[:2]
        write_label_map(str(folder / f"{name}.png"), np.full((height, width), index % 3, np.uint8))
    from wsss_keras.errors import DataError

    with pytest.raises(DataError, match=r"1 of 4 pseudo-labels .* missing \(first: " + dataset.names[3] + r"\.png\); run wsss irn walk"):
        dataset.with_label_maps_from(str(folder), "pseudo-labels", made_by="wsss irn walk")
    height, width = dataset.load_image(3).shape[:2]
    write_label_map(str(folder / f"{dataset.names[3]}.png"), np.zeros((height, width), np.uint8))
    view = dataset.with_label_maps_from(str(folder), "pseudo-labels")
    assert view.names == dataset.names and np.array_equal(view.labels, dataset.labels)
    _, label_map = view.load_item(1)
    assert (label_map == 1).all()
