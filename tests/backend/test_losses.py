"""Shared losses against hand computations and plain NumPy."""

import keras
import numpy as np
import pytest
from keras import ops

from wsss_keras.ops.losses import balanced_segmentation_loss, label_affinity, patch_token_contrast_loss


def numpy_ce(logits, label):
    shifted = logits - logits.max()
    return -(shifted[label] - np.log(np.exp(shifted).sum()))


def test_balanced_segmentation_loss_hand_computed():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 2, 3, 4)).astype("float32")
    label_map = np.array([[[0, 0, 0], [2, 255, 3]]])
    background = np.mean([numpy_ce(logits[0, 0, x], 0) for x in range(3)])
    foreground = np.mean([numpy_ce(logits[0, 1, 0], 2), numpy_ce(logits[0, 1, 2], 3)])
    out = float(ops.convert_to_numpy(balanced_segmentation_loss(logits, label_map)))
    assert out == pytest.approx(0.5 * (background + foreground), rel=1e-5)


def test_balanced_segmentation_loss_without_foreground():
    logits = np.zeros((1, 2, 2, 3), "float32")
    label_map = np.zeros((1, 2, 2), "int32")
    guarded = float(ops.convert_to_numpy(balanced_segmentation_loss(logits, label_map)))
    assert guarded == pytest.approx(0.5 * np.log(3), rel=1e-5)
    assert np.isnan(float(ops.convert_to_numpy(balanced_segmentation_loss(logits, label_map, guard_empty=False))))


def test_label_affinity_targets():
    label_map = np.array([[[1, 1], [0, 255]]])
    affinity = ops.convert_to_numpy(label_affinity(label_map))[0]
    expected = np.array([[255, 1, 0, 255], [1, 255, 0, 255], [0, 0, 255, 255], [255, 255, 255, 255]])
    np.testing.assert_array_equal(affinity, expected)


def test_patch_token_contrast_loss_hand_computed():
    tokens = np.array([[[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]], "float32")
    affinity = np.array([[[255, 1, 0], [1, 255, 255], [0, 255, 255]]])
    # |cos|: (0,1) = 1/sqrt(2) twice as a positive pair, (0,2) = 0 twice as a negative pair.
    expected = 0.5 * (1 - 2 / np.sqrt(2) / 3) + 0.5 * 0.0 / 3
    out = float(ops.convert_to_numpy(patch_token_contrast_loss(tokens, affinity)))
    assert out == pytest.approx(expected, rel=1e-5)


def test_segmentation_loss_trains_a_layer_with_fit():
    """The loss is differentiable on every backend: a 1x1 conv fitted with it learns the labels."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    images = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    label_map = np.where(images[..., 0] > 0.5, 2, np.where(images[..., 1] > 0, 1, 0))
    label_map[:, 0, 0] = 255
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(3, 1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=lambda y, p: balanced_segmentation_loss(p, y))
    history = model.fit(images, label_map, epochs=30, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
