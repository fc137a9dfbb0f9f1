"""Keras loaders: a `keras.utils.PyDataset` over a `SegmentationDataset` and a transform.

Each batch is `(images, targets)`: images float32 (B, H, W, 3), normalised; targets a dict of
`labels` (B, C-1) multi-hot float32, `crop_boxes` (B, 4) int32 (y0, y1, x0, x1 of real pixels),
`indices` (B,) int32 into the dataset, and `label_maps` (B, H, W) int32 with 255 = ignore when
asked for. Augmentation for an item depends only on (seed, epoch, position in the epoch), so
results do not depend on the number of workers.
"""

import math

import keras
import numpy as np

from wsss_keras.data.transforms import EvalTransform, TrainTransform
from wsss_keras.errors import DataError


class SegmentationLoader(keras.utils.PyDataset):
    """Batches of a WSSS dataset for `fit`, `predict` or a custom loop.

    Args:
        dataset: a `SegmentationDataset` (VOC, COCO, synthetic or custom).
        batch_size: images per batch.
        transform: a `TrainTransform`, an `EvalTransform`, or any callable
            (rng, image, label_map) -> (image, label_map, box) or (image, label_map, box,
            extras) where extras is a dict of extra per-item arrays (e.g. ToCo's views),
            stacked into the targets under their keys.
        shuffle: reshuffle the order every epoch.
        seed: seed of the order and the augmentation.
        with_label_maps: also return the pixel labels (needs them on disk).
        drop_remainder: drop the last incomplete batch (training on several devices wants it).
        item_maps: optional callable(index) -> {name: (H, W) int array} of per-pixel maps
            aligned with the image (SSC's superpixels); they are passed to the transform as
            `maps=` and it must return them, transformed, in its extras.
        item_extras: optional callable(index, rng) -> {name: array} of per-item targets that
            no transform touches (the tiny CLIP's captions); `rng` is the item's own stream,
            apart from the transform's.
        workers, use_multiprocessing, max_queue_size: as in `keras.utils.PyDataset`.

    Example:
    >>> from wsss_keras.data import VocDataset
    >>> from wsss_keras.data.loader import SegmentationLoader
    >>> from wsss_keras.data.transforms import TrainTransform
    >>> loader = SegmentationLoader(VocDataset("synth", "train"), 8, TrainTransform(crop_size=96))  # doctest: +SKIP
    >>> images, targets = loader[0]                                                                   # doctest: +SKIP
    """

    def __init__(
        self,
        dataset,
        batch_size,
        transform=None,
        shuffle=False,
        seed=0,
        with_label_maps=False,
        drop_remainder=False,
        item_maps=None,
        item_extras=None,
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
    ):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size}: must be at least 1.")
        if drop_remainder and len(dataset) < batch_size:
            raise DataError(f"{dataset.description}: {len(dataset)} images cannot fill one batch of {batch_size}.")
        if with_label_maps and not dataset.has_label_maps:
            missing = sum(path is None for path in dataset.label_map_paths)
            raise DataError(f"{dataset.description}: {missing} images have no label map; with_label_maps needs them all.")
        self.dataset = dataset
        self.batch_size = batch_size
        self.transform = transform or EvalTransform()
        self.shuffle, self.seed = shuffle, seed
        self.with_label_maps, self.drop_remainder = with_label_maps, drop_remainder
        self.item_maps = item_maps
        self.item_extras = item_extras
        self.epoch = 0
        self._order = self._make_order()

    def _make_order(self, epoch=None):
        order = np.arange(len(self.dataset))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).shuffle(order)
        return order

    def __len__(self):
        rounding = math.floor if self.drop_remainder else math.ceil
        return rounding(len(self.dataset) / self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._make_order()

    def __getitem__(self, batch_index):
        return self.batch_at(self.epoch, batch_index, self._order)

    def batch_at(self, epoch, batch_index, order=None, shard=None):
        """Batch `batch_index` of epoch `epoch`, whatever epoch the loader is at: the same
        images and augmentation `__getitem__` gives in that epoch (training resumes with it).

        shard: (index, count, parts) for one process of a multi-process run: only its rows of
        the batch, read and augmented exactly as in the whole batch (`shard_positions`)."""
        if not 0 <= batch_index < len(self):
            raise IndexError(f"batch {batch_index} out of range for {len(self)} batches")
        order = self._make_order(epoch) if order is None else order
        positions = range(batch_index * self.batch_size, min((batch_index + 1) * self.batch_size, len(self.dataset)))
        if shard is not None:
            positions = shard_positions(positions, *shard)
        images, label_maps, boxes, indices, extras = [], [], [], [], []
        for position in positions:
            index = int(order[position])
            image, label_map = self.dataset.load_item(index, with_label_map=self.with_label_maps)
            rng = np.random.default_rng([self.seed, epoch, position])
            if self.item_maps is None:
                image, label_map, box, *extra = self.transform(rng, image, label_map)
            else:
                image, label_map, box, *extra = self.transform(rng, image, label_map, maps=self.item_maps(index))
            extras.append(dict(extra[0]) if extra else {})
            if self.item_extras is not None:
                extras[-1].update(self.item_extras(index, np.random.default_rng([self.seed, epoch, position, 1])))
            images.append(image)
            label_maps.append(label_map)
            boxes.append(box)
            indices.append(index)
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise DataError(
                f"{self.dataset.description}: images of different sizes {sorted(shapes)[:3]} cannot share a "
                "batch; use batch_size=1 or a transform that crops or resizes to one size."
            )
        targets = {
            "labels": self.dataset.labels[indices],
            "crop_boxes": np.asarray(boxes, np.int32),
            "indices": np.asarray(indices, np.int32),
        }
        for key in extras[0]:
            stacked = np.stack([extra[key] for extra in extras])
            targets[key] = stacked.astype(np.int32 if np.issubdtype(stacked.dtype, np.integer) else np.float32)
        if self.with_label_maps:
            targets["label_maps"] = np.stack(label_maps).astype(np.int32)
        return np.stack(images).astype(np.float32), targets


__all__ = ["EvalTransform", "SegmentationLoader", "TrainTransform"]


def shard_positions(positions, index, count, parts=1):
    """Process `index` of `count`'s rows of a batch: the batch is cut into `parts` equal
    micro-batches (gradient accumulation; 1: none), each of those into `count` equal pieces,
    and the process takes piece `index` of each, in order. So micro-batch j of every process
    together is micro-batch j of the whole batch, as a single process cuts it."""
    positions = list(positions)
    if len(positions) % (count * parts):
        raise DataError(f"a batch of {len(positions)} images does not split into {parts} micro-batch(es) over "
                        f"{count} processes; set batch_size to a multiple of {count * parts}.")
    micro = len(positions) // parts
    piece = micro // count
    return [position for part in range(parts)
            for position in positions[part * micro + index * piece:part * micro + (index + 1) * piece]]


class StepStream(keras.utils.PyDataset):
    """Optimiser steps `start` .. `stop - 1` of training on `loader`, as one sequence: step s is
    batch `s % len(loader)` of epoch `s // len(loader)`, exactly what an uninterrupted run
    reads at that step, so a run resumed at any step sees the same data in the same order.

    Args:
        loader: a `SegmentationLoader` (its `batch_at`); its workers settings carry over.
        start: the first step (0, or the step a checkpoint was taken at).
        stop: the step training ends at (exclusive).
        shard: (index, count, parts): only this process's rows of each batch (`shard_positions`).
    """

    def __init__(self, loader, start, stop, shard=None):
        super().__init__(workers=loader.workers, use_multiprocessing=loader.use_multiprocessing,
                         max_queue_size=loader.max_queue_size)
        if not 0 <= start < stop:
            raise ValueError(f"steps {start}..{stop}: need 0 <= start < stop")
        self.loader, self.start, self.stop = loader, int(start), int(stop)
        self.batches_per_epoch = len(loader)
        self.shard = shard

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        step = self.start + index
        if self.shard is None:
            return self.loader.batch_at(step // self.batches_per_epoch, step % self.batches_per_epoch)
        return self.loader.batch_at(step // self.batches_per_epoch, step % self.batches_per_epoch, shard=self.shard)
