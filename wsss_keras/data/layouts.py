"""Opening a dataset folder in whichever standard layout it has (VOC or COCO).

Above `voc` and `coco` (which sit on `dataset`), so that the layouts never import each other
or the code that chooses between them.
"""

import os

from wsss_keras.data.coco import CocoDataset
from wsss_keras.data.dataset import SegmentationDataset
from wsss_keras.data.voc import VocDataset
from wsss_keras.errors import DataError


def open_dataset(root, split, **options):
    """Open `root` as COCO when it has `JPEGImages/<split>/`, else as a VOC-layout folder."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: dataset folder not found.")
    if os.path.isdir(os.path.join(root, "JPEGImages", split)):
        return CocoDataset(root, split, **options)
    return VocDataset(root, split, **options)


class DatasetFolder:
    """A dataset folder whose splits are opened once each and then shared.

    `wsss run` hands one to every stage in place of the folder, so a run reads each split's
    index (the split file, every image's labels, COCO's instances JSON) once rather than once
    per stage. The datasets are only read by the stages (`with_label_maps_from` makes a new
    view), so sharing one is the same as opening it again.

    Args:
        root: the dataset folder.
        limit: keep only each split's first `limit` images (a smoke run's handful); None keeps all.
    """

    def __init__(self, root, limit=None):
        self.root = root
        self.limit = limit
        self._splits = {}

    def open(self, split):
        """The dataset of `split`, opened on first use (`open_dataset`)."""
        if split not in self._splits:
            dataset = open_dataset(self.root, split)
            if self.limit is not None and len(dataset) > self.limit:
                dataset = first_images(dataset, self.limit)
            self._splits[split] = dataset
        return self._splits[split]


def first_images(dataset, count):
    """The first `count` images of `dataset`, with their labels and label maps."""
    return SegmentationDataset(
        dataset.names[:count], dataset.image_paths[:count], dataset.label_map_paths[:count], dataset.class_names,
        dataset.labels[:count], f"{dataset.description}, its first {count} images",
    )


def open_split(data, split):
    """Split `split` of `data`: a dataset folder (opened here) or a `DatasetFolder` (opened once per folder)."""
    return data.open(split) if isinstance(data, DatasetFolder) else open_dataset(data, split)


def dataset_root(data):
    """The folder of `data`, a dataset folder or a `DatasetFolder`."""
    return data.root if isinstance(data, DatasetFolder) else data
