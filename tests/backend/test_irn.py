"""IRNet's boundary branch on the current backend: shapes at stride 4, the loss on a label map,
the frozen backbone, the mirrored boundary map, and a .keras round trip."""

import keras
import numpy as np
from keras import ops

from wsss_keras.backbones.resnet import build
from wsss_keras.methods.irn import IRNet
from wsss_keras.methods.segmenter import resize_labels_nearest
from wsss_keras.ops.affinity import affinity_loss, boundary_to_affinity, pair_labels
from wsss_keras.training.optimizers import GroupedSGD


def tiny_irn(output_stride=16):
    keras.utils.set_random_seed(0)
    return IRNet(build("resnet50", block_counts=(1, 1, 1, 1), base_width=8, output_stride=output_stride), radius=4)


def test_boundary_logits_at_stride_4_for_any_size():
    for output_stride in (16, 8):
        model = tiny_irn(output_stride)
        assert tuple(model(np.zeros((1, 75, 50, 3), "float32")).shape) == (1, 19, 13, 1)


def test_loss_is_the_affinity_loss_of_the_shrunk_labels():
    model = tiny_irn()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    labels = rng.choice([0, 3, 255], size=(2, 64, 64)).astype("int32")
    logits = model(images)
    small = resize_labels_nearest(labels, (16, 16))
    expected = affinity_loss(boundary_to_affinity(ops.sigmoid(logits[..., 0]), 4), *pair_labels(small, 4))
    got = model.compute_loss(images, {"label_maps": labels}, logits)
    np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(expected), rtol=1e-6)


def test_training_moves_the_head_only_and_round_trips(tmp_path):
    model = tiny_irn()
    backbone_before = [ops.convert_to_numpy(w).copy() for w in model.backbone.weights]
    head_before = ops.convert_to_numpy(model.edge_out.kernel).copy()
    model.compile(optimizer=GroupedSGD(0.1, momentum=0.0))
    rng = np.random.default_rng(1)
    labels = np.zeros((2, 64, 64), "int32")
    labels[:, :, 32:] = 2
    model.fit(rng.normal(size=(2, 64, 64, 3)).astype("float32"), {"label_maps": labels}, batch_size=2, verbose=0)
    assert all(np.array_equal(b, ops.convert_to_numpy(a)) for b, a in zip(backbone_before, model.backbone.weights))
    assert not np.allclose(head_before, ops.convert_to_numpy(model.edge_out.kernel))

    images = rng.normal(size=(1, 48, 40, 3)).astype("float32")
    boundary = ops.convert_to_numpy(model.boundary_map(images))
    mirrored = ops.convert_to_numpy(model.boundary_map(images[:, :, ::-1].copy()))
    assert boundary.shape == (1, 12, 10) and 0 < boundary.min() and boundary.max() < 1
    np.testing.assert_allclose(boundary, mirrored[:, :, ::-1], atol=1e-5)  # image + mirror: symmetric by design
    model.save(tmp_path / "irn.keras")
    loaded = keras.saving.load_model(tmp_path / "irn.keras")
    assert loaded.radius == 4 and not loaded.backbone.trainable
    np.testing.assert_allclose(ops.convert_to_numpy(loaded.boundary_map(images)), boundary, atol=1e-5)
