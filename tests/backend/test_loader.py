"""The Keras loader on the current backend: batches, determinism, and `fit` consuming it."""

import keras
import numpy as np
import pytest

from helpers import tiny_synthetic
from wsss_keras.data import VocDataset
from wsss_keras.data.loader import SegmentationLoader
from wsss_keras.data.transforms import EvalTransform, TrainTransform
from wsss_keras.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return VocDataset(tiny_synthetic(tmp_path_factory.mktemp("synth"), n_train=10, n_val=3, size=48), "train")


def test_batches_have_the_documented_shapes(dataset):
    loader = SegmentationLoader(dataset, 4, TrainTransform(crop_size=32, scale_range=(0.8, 1.2)), shuffle=True, with_label_maps=True)
    assert len(loader) == 3
    images, targets = loader[0]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32
    assert targets["labels"].shape == (4, 6) and targets["label_maps"].shape == (4, 32, 32)
    np.testing.assert_array_equal(targets["labels"], dataset.labels[targets["indices"]])
    last_images, _ = loader[2]
    assert last_images.shape[0] == 2  # 10 images, batches of 4
    tensor = keras.ops.convert_to_tensor(images)
    assert keras.backend.standardize_dtype(tensor.dtype) == "float32"
    assert keras.ops.convert_to_numpy(tensor).shape == images.shape


def test_same_seed_same_batches_new_epoch_new_order(dataset):
    make = lambda: SegmentationLoader(dataset, 5, TrainTransform(crop_size=24), shuffle=True, seed=3)
    a, b = make(), make()
    np.testing.assert_array_equal(a[1][0], b[1][0])
    first = a[0][1]["indices"].copy()
    a.on_epoch_end()
    orders = [first]
    for _ in range(3):
        orders.append(a[0][1]["indices"].copy())
        a.on_epoch_end()
    assert any(not np.array_equal(first, order) for order in orders[1:])


def test_different_sizes_need_a_crop_or_batch_one(dataset, tmp_path):
    loader = SegmentationLoader(dataset, 2, EvalTransform())
    images, _ = loader[0]  # all synthetic images have one size
    assert images.shape == (2, 48, 48, 3)
    with pytest.raises(DataError, match="drop_remainder|cannot fill one batch"):
        SegmentationLoader(dataset, 11, drop_remainder=True)


class TinyClassifier(keras.Model):
    """A two-layer multi-label classifier whose loss reads the loader's target dict."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(num_classes)

    def call(self, images):
        return self.head(self.pool(self.conv(images)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(keras.losses.binary_crossentropy(y["labels"], y_pred, from_logits=True))


@pytest.mark.parametrize("workers", [1, 2])
def test_fit_consumes_the_loader(dataset, workers):
    keras.utils.set_random_seed(0)
    loader = SegmentationLoader(dataset, 4, TrainTransform(crop_size=24), shuffle=True, workers=workers)
    model = TinyClassifier(dataset.num_classes - 1)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = model.fit(loader, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
