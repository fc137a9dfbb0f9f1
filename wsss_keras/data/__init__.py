"""Datasets in their standard on-disk layouts, transforms and Keras loaders.

Everything here but `loader` uses NumPy, OpenCV and Pillow only, so datasets can be indexed,
checked and generated without importing Keras.
"""

from wsss_keras.data.classes import COCO_CLASSES, VOC_CLASSES, read_class_names
from wsss_keras.data.coco import CocoDataset
from wsss_keras.data.dataset import SegmentationDataset
from wsss_keras.data.layouts import open_dataset
from wsss_keras.data.voc import VocDataset

__all__ = [
    "COCO_CLASSES",
    "VOC_CLASSES",
    "CocoDataset",
    "SegmentationDataset",
    "VocDataset",
    "open_dataset",
    "read_class_names",
]
