"""The plain CNN CAM network: loss, one training step, CAM shapes, .keras round trip."""

import keras
import numpy as np
import pytest

from wsss_keras.methods.cam_baseline import CamBaseline
from wsss_keras.ops.losses import multilabel_soft_margin_loss


def test_multilabel_soft_margin_loss_hand_computed():
    labels = np.array([[1.0, 0.0]], "float32")
    logits = np.array([[2.0, -1.0]], "float32")
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert float(keras.ops.convert_to_numpy(multilabel_soft_margin_loss(labels, logits))) == pytest.approx(expected, rel=1e-5)


def test_train_step_cams_and_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = CamBaseline(num_classes=3, widths=(8, 16))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    targets = {"labels": np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], "float32")}
    losses = [model.train_on_batch(images, targets) for _ in range(5)]
    assert losses[-1] < losses[0]
    cams = keras.ops.convert_to_numpy(model.cam_maps(images))
    assert cams.shape == (4, 16, 16, 3)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.cam_maps(images)), cams, atol=1e-5)
