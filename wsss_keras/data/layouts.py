"""Opening a dataset folder in whichever standard layout it has (VOC or COCO).

Above `voc` and `coco` (which sit on `dataset`), so that the layouts never import each other
or the code that chooses between them.
"""

import os

from wsss_keras.data.coco import CocoDataset
from wsss_keras.data.voc import VocDataset
from wsss_keras.errors import DataError


def open_dataset(root, split, **options):
    """Open `root` as COCO when it has `JPEGImages/<split>/`, else as a VOC-layout folder."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found.")
    if os.path.isdir(os.path.join(root, "JPEGImages", split)):
        return CocoDataset(root, split, **options)
    return VocDataset(root, split, **options)
