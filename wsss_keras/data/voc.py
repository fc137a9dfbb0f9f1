"""PASCAL VOC 2012 layout (with SBD's SegmentationClassAug), and any folder in that layout.

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png        palette PNGs (VOC), 255 = ignore
    ROOT/SegmentationClassAug/<id>.png     SBD-augmented masks (palette or single-channel)
    ROOT/Annotations/<id>.xml              object names give the image-level labels
    ROOT/ImageSets/Segmentation/<split>.txt
    ROOT/class_names.txt                   optional: custom classes, background first
"""

import os
import xml.etree.ElementTree as ElementTree

import numpy as np

from wsss_keras.data.classes import CLASS_NAMES_FILE, VOC_CLASSES
from wsss_keras.data.dataset import (
    SegmentationDataset,
    labels_from_cls_file,
    labels_from_label_maps,
    read_split_file,
    require_files,
    resolve_class_names,
)
from wsss_keras.errors import DataError

LABEL_SOURCES = ("auto", "xml", "cls_labels", "masks")
LABEL_MAP_FOLDERS = ("SegmentationClassAug", "SegmentationClass")


def object_names_from_xml(path):
    """Names of the objects in a VOC Annotations XML file."""
    try:
        tree = ElementTree.parse(path)
    except (ElementTree.ParseError, OSError) as error:
        raise DataError(f"{path}: cannot parse this annotation XML ({error}); fix or regenerate it.") from None
    names = []
    # Only an object's own <name>: person objects also hold <part><name>head</name></part>.
    for node in tree.getroot().findall("object"):
        name = node.findtext("name")
        if name is None or not name.strip():
            raise DataError(f"{path}: an <object> has no <name>; add the class name or remove the object.")
        names.append(name.strip())
    return names


def labels_from_xml(paths, class_names):
    index = {name: position for position, name in enumerate(class_names)}
    labels = np.zeros((len(paths), len(class_names) - 1), dtype=np.float32)
    for row, path in enumerate(paths):
        for name in object_names_from_xml(path):
            if name not in index or index[name] == 0:
                raise DataError(
                    f"{path}: object name {name!r} is not a class of this dataset; add it to "
                    f"{CLASS_NAMES_FILE} (background first) or fix the annotation."
                )
            labels[row, index[name] - 1] = 1.0
    return labels


class VocDataset(SegmentationDataset):
    """A VOC-layout dataset split.

    Args:
        root: the folder holding JPEGImages/, ImageSets/ and the rest (VOC2012 itself, or a
            synthetic or custom dataset in the same layout).
        split: a file name in ImageSets/Segmentation without ".txt" (train, train_aug, val, ...).
        labels_from: where image-level labels come from: "xml" (Annotations), "cls_labels"
            (a .npy dictionary, see `cls_labels`), "masks" (classes present in the label maps),
            or "auto": cls_labels when a file is given, else xml when Annotations/ exists, else masks.
        cls_labels: path of a cls_labels .npy dictionary.
        label_maps: the label-map folder; default SegmentationClassAug if present, else
            SegmentationClass. Ids without a label map in it have none (fine for training).
        class_names: a sequence of names or the path of a class-names file; default
            ROOT/class_names.txt if present, else the 21 VOC classes.

    Example:
    >>> from wsss_keras.data import VocDataset
    >>> dataset = VocDataset("VOCdevkit/VOC2012", "train_aug")   # doctest: +SKIP
    >>> image, label_map = dataset.load_item(0)                  # doctest: +SKIP
    """

    def __init__(self, root, split="train", labels_from="auto", cls_labels=None, label_maps=None, class_names=None):
        if labels_from not in LABEL_SOURCES:
            raise DataError(f"labels_from={labels_from!r}; choose one of {', '.join(LABEL_SOURCES)}.")
        if not os.path.isdir(root):
            raise DataError(f"{root}: dataset folder not found.")
        class_names = resolve_class_names(root, class_names, VOC_CLASSES)
        split_path = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        names = read_split_file(split_path)
        image_paths = [os.path.join(root, "JPEGImages", f"{name}.jpg") for name in names]
        require_files(image_paths, names, "images", split_path)

        label_map_folder = label_maps or next(
            (folder for folder in LABEL_MAP_FOLDERS if os.path.isdir(os.path.join(root, folder))), None
        )
        label_map_paths = [None] * len(names)
        if label_map_folder is not None:
            folder = label_map_folder if os.path.isabs(label_map_folder) else os.path.join(root, label_map_folder)
            if label_maps and not os.path.isdir(folder):
                raise DataError(f"{folder}: label-map folder not found.")
            candidates = [os.path.join(folder, f"{name}.png") for name in names]
            label_map_paths = [path if os.path.isfile(path) else None for path in candidates]

        description = f"VOC layout {root} split {split!r}"
        if labels_from == "auto":
            if cls_labels:
                labels_from = "cls_labels"
            elif os.path.isdir(os.path.join(root, "Annotations")):
                labels_from = "xml"
            else:
                labels_from = "masks"
        if labels_from == "xml":
            xml_paths = [os.path.join(root, "Annotations", f"{name}.xml") for name in names]
            require_files(xml_paths, names, "annotation XML files", split_path)
            labels = labels_from_xml(xml_paths, class_names)
        elif labels_from == "cls_labels":
            if not cls_labels:
                raise DataError("labels_from='cls_labels' needs the path of the cls_labels .npy file.")
            labels = labels_from_cls_file(cls_labels, names, len(class_names))
        else:
            labels = labels_from_label_maps(label_map_paths, len(class_names), description)
        super().__init__(names, image_paths, label_map_paths, class_names, labels, description)
        self.root, self.split, self.labels_from = root, split, labels_from

