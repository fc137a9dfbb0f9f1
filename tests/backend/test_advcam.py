"""AdvCAM on the current backend: input gradients, the closed-form Grad-CAM against autodiff
Grad-CAM, the climbing loop, and `wsss cams` with climbing on a tiny AMR (spec methods/amr.md §4.1)."""

import keras
import numpy as np
from keras import ops

from helpers import tiny_synthetic
from wsss_keras.backbones.resnet import build
from wsss_keras.data import VocDataset
from wsss_keras.evaluation.cams import load_cams
from wsss_keras.methods.advcam import adversarial_cams, climb_class, gradcam_closed_form
from wsss_keras.methods.amr import AMR, CamNetwork
from wsss_keras.ops.grad import value_and_gradient
from wsss_keras.pipelines.cams import compute_cams

TINY = {"block_counts": (1, 1, 1, 1), "base_width": 8, "output_stride": 8}


def test_value_and_gradient_of_a_known_function():
    x = np.array([[1.0, -2.0], [0.5, 3.0]], "float32")
    (value, aux), gradient = value_and_gradient(lambda t: (ops.sum(ops.sin(t) * t), ops.max(t)), x)
    np.testing.assert_allclose(float(value), (np.sin(x) * x).sum(), rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(gradient), np.cos(x) * x + np.sin(x), rtol=1e-5)
    assert float(aux) == 3.0


def test_closed_form_gradcam_equals_autodiff_gradcam():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 6, 7)).astype("float32")
    kernel = rng.normal(size=(7, 4)).astype("float32")
    c = 2

    def objective(f):
        maps = ops.einsum("bhwk,kc->bhwc", f, ops.convert_to_tensor(kernel))
        return ops.sum(ops.relu(maps[..., c])), maps

    (_, maps), gradient = value_and_gradient(objective, features)
    gradient = ops.convert_to_numpy(gradient)
    # The reference's Grad-CAM: gap2d_pos weights (spatial sum / positive entries of the whole gradient).
    weights = gradient.sum(axis=(1, 2)) / max((gradient > 0).sum(), 1)
    cams = np.maximum((features * weights[:, None, None, :]).sum(-1), 0)
    expected = cams[0] + cams[1][:, ::-1]
    got = ops.convert_to_numpy(gradcam_closed_form(ops.convert_to_numpy(maps)[..., c], kernel[:, c]))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def tiny_cam_network():
    keras.utils.set_random_seed(0)
    return CamNetwork(build("resnet50", name="cam_backbone", **TINY), 3)


def test_climbing_accumulates_the_first_map_then_moves_the_views():
    model = tiny_cam_network()
    image = np.random.default_rng(1).normal(size=(1, 32, 40, 3)).astype("float32")
    views = np.concatenate([image, image[:, :, ::-1]])
    maps_function, kernel, _ = model.cam_branches()[0]
    maps = maps_function(views)
    c = int(np.argmax(ops.convert_to_numpy(ops.sum(ops.relu(maps), axis=(0, 1, 2)))))  # a class with some activation
    first = ops.convert_to_numpy(gradcam_closed_form(maps[..., c], kernel[:, c]))
    assert first.max() > 0
    one = ops.convert_to_numpy(climb_class(maps_function, kernel, views, c, iterations=1))
    np.testing.assert_allclose(one, 2.0 * first, rtol=1e-5, atol=1e-7)
    three = ops.convert_to_numpy(climb_class(maps_function, kernel, views, c, iterations=3))
    assert not np.allclose(three, 3 * one, rtol=1e-3)  # the later views were climbed


def test_adversarial_cams_of_both_amr_branches_and_through_the_cams_stage(tmp_path):
    spotlight = tiny_cam_network()
    model = AMR(spotlight, build("resnet50", name="compensation_backbone", frozen_batchnorm="statistics", **TINY), 3,
                amm_reduction=4)
    image = np.random.default_rng(2).normal(size=(24, 28, 3)).astype("float32")
    cams = ops.convert_to_numpy(adversarial_cams(model, image, [2], scales=(1.0,), iterations=1))
    assert cams.shape == (24, 28, 1) and cams.min() >= 0 and cams.max() <= 1.0

    root = tiny_synthetic(tmp_path / "data", n_train=1, n_val=1, size=32, classes="3")
    dataset = VocDataset(root, "train")
    options = {"iterations": 1}
    assert compute_cams(spotlight, dataset, str(tmp_path / "cams"), scales=(1.0,), adversarial=options) == 1
    for index, name in enumerate(dataset.names):
        maps, classes = load_cams(str(tmp_path / "cams" / f"{name}.npz"))
        assert list(classes) == list(np.flatnonzero(dataset.labels[index]) + 1) and maps.shape[:2] == (32, 32)
