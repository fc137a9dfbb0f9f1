"""MS COCO 2014 in the VOC-style layout used by WSSS papers, and conversion from instances JSON.

    ROOT/JPEGImages/<split>/COCO_<split>_<12-digit id>.jpg
    ROOT/SegmentationClass/<split>/<same stem>.png   class indices 0..80, 255 = ignore
    ROOT/ImageSets/<split>.txt                       optional id list (else every image)

Label maps index the 80 categories contiguously (1..80 in category-id order, 0 background).
`instances_to_label_maps` writes them from the official instances JSON with pycocotools.
"""

import json
import os

import numpy as np

from wsss_keras.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES
from wsss_keras.data.dataset import (
    SegmentationDataset,
    labels_from_cls_file,
    labels_from_label_maps,
    read_split_file,
    require_files,
    resolve_class_names,
)
from wsss_keras.data.imageio import IGNORE_INDEX, write_label_map
from wsss_keras.errors import DataError

CATEGORY_TO_INDEX = {category: index + 1 for index, category in enumerate(COCO_CATEGORY_IDS)}


class CocoDataset(SegmentationDataset):
    """A COCO 2014 split in the WSSS layout.

    Args:
        root: the folder holding JPEGImages/<split>/ and SegmentationClass/<split>/.
        split: "train2014", "val2014", or another subfolder name.
        labels_from: "masks" (classes present in the label maps), "cls_labels" (a .npy
            dictionary), "instances" (an instances JSON), or "auto" (cls_labels, then
            instances, then masks, by which is given).
        cls_labels: path of a cls_labels .npy dictionary.
        instances: path of instances_<split>.json.
        class_names: names or a class-names file; default the 81 COCO classes.
    """

    def __init__(self, root, split="train2014", labels_from="auto", cls_labels=None, instances=None, class_names=None):
        class_names = resolve_class_names(root, class_names, COCO_CLASSES)
        image_folder = os.path.join(root, "JPEGImages", split)
        if not os.path.isdir(image_folder):
            raise DataError(f"{image_folder}: COCO image folder not found; expected ROOT/JPEGImages/{split}/.")
        split_path = os.path.join(root, "ImageSets", f"{split}.txt")
        if os.path.isfile(split_path):
            names = read_split_file(split_path)
        else:
            split_path = image_folder
            names = sorted(os.path.splitext(f)[0] for f in os.listdir(image_folder) if f.lower().endswith(".jpg"))
            if not names:
                raise DataError(f"{image_folder}: no .jpg images; the split is empty.")
        image_paths = [os.path.join(image_folder, f"{name}.jpg") for name in names]
        require_files(image_paths, names, "images", split_path)
        label_folder = os.path.join(root, "SegmentationClass", split)
        label_map_paths = [os.path.join(label_folder, f"{name}.png") for name in names]
        label_map_paths = [path if os.path.isfile(path) else None for path in label_map_paths]

        description = f"COCO layout {root} split {split!r}"
        if labels_from == "auto":
            labels_from = "cls_labels" if cls_labels else "instances" if instances else "masks"
        if labels_from == "cls_labels":
            labels = labels_from_cls_file(cls_labels, names, len(class_names))
        elif labels_from == "instances":
            labels = labels_from_instances(instances, names, len(class_names))
        elif labels_from == "masks":
            labels = labels_from_label_maps(label_map_paths, len(class_names), description)
        else:
            raise DataError(f"labels_from={labels_from!r}; choose auto, masks, cls_labels or instances.")
        super().__init__(names, image_paths, label_map_paths, class_names, labels, description)
        self.root, self.split, self.labels_from = root, split, labels_from


def _load_instances(path):
    if not path or not os.path.isfile(path):
        raise DataError(f"{path}: instances JSON not found; pass annotations/instances_<split>.json.")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data, {image["id"]: image for image in data["images"]}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a COCO instances file ({error}); pass annotations/instances_<split>.json.") from None


def labels_from_instances(path, names, num_classes):
    """Image-level labels from an instances JSON: every annotated category, crowd regions included."""
    data, images = _load_instances(path)
    stem_to_row = {name: row for row, name in enumerate(names)}
    labels = np.zeros((len(names), num_classes - 1), dtype=np.float32)
    for annotation in data.get("annotations", []):
        image = images.get(annotation["image_id"])
        row = stem_to_row.get(os.path.splitext(image["file_name"])[0]) if image else None
        if row is not None:
            index = _category_index(annotation["category_id"], path)
            labels[row, index - 1] = 1.0
    return labels


def _category_index(category_id, path):
    if category_id not in CATEGORY_TO_INDEX:
        raise DataError(f"{path}: category id {category_id} is not one of COCO's 80 categories.")
    return CATEGORY_TO_INDEX[category_id]


def instances_to_label_maps(instances_path, out_folder, progress=None):
    """Write one label PNG per image of an instances JSON (needs pycocotools, the `coco` extra).

    Objects are painted largest first so that small objects stay visible where they overlap;
    crowd regions not covered by another object become 255 (ignore), since their pixels are
    not reliably one class.

    Returns:
        the number of label maps written.
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise DataError("Converting COCO instances needs pycocotools: pip install 'wsss-keras[coco]'") from None
    data, images = _load_instances(instances_path)
    by_image = {}
    for annotation in data.get("annotations", []):
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    os.makedirs(out_folder, exist_ok=True)
    for done, (image_id, image) in enumerate(sorted(images.items()), start=1):
        height, width = image["height"], image["width"]
        label_map = np.zeros((height, width), dtype=np.uint8)
        crowd = np.zeros((height, width), dtype=bool)
        annotations = sorted(by_image.get(image_id, []), key=lambda a: a.get("area", 0), reverse=True)
        for annotation in annotations:
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            region = mask_utils.decode(rle).astype(bool)
            if annotation.get("iscrowd", 0):
                crowd |= region
            else:
                label_map[region] = _category_index(annotation["category_id"], instances_path)
        label_map[crowd & (label_map == 0)] = IGNORE_INDEX
        stem = os.path.splitext(image["file_name"])[0]
        write_label_map(os.path.join(out_folder, f"{stem}.png"), label_map)
        if progress is not None:
            progress(done, len(images))
    return len(images)
