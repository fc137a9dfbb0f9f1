"""Class-name lists: PASCAL VOC, MS COCO, and custom class-names files.

Index 0 is always the background class; the image-level labels of a dataset are the
remaining classes, in this order.
"""

import os

from wsss_keras.errors import DataError

CLASS_NAMES_FILE = "class_names.txt"

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The 80 COCO object categories in category-id order, as WSSS papers index them (1..80).
COCO_CLASSES = ("background",) + (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# COCO's category ids are not contiguous (1..90 with gaps); this maps them to 1..80.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


def read_class_names(path):
    """Read a class-names file: one name per line, background first, blank lines ignored."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: class-names file not found; write one name per line, background first.")
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle if line.strip()]
    if len(names) < 2:
        raise DataError(f"{path}: needs the background and at least one class, one per line; found {len(names)}.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: class names appear twice: {', '.join(duplicates)}; each name must be unique.")
    if len(names) > 255:
        raise DataError(f"{path}: {len(names)} classes; at most 255 fit in a PNG label map beside ignore (255).")
    return tuple(names)


def write_class_names(path, names):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(names) + "\n")
