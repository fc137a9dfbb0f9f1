"""SSR's masked pooling and prototype contrastive loss (spec ssr.md §2.5) against NumPy."""

import numpy as np
import pytest
from keras import ops

from wsss_keras.ops.grad import value_and_gradient
from wsss_keras.ops.prototypes import masked_average_pool, prototype_contrastive_loss


def test_masked_average_pool_matches_loop():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 6, 5)).astype(np.float32)
    cams = rng.random((2, 6, 3)).astype(np.float32)
    cams[1, :, 2] = 0.0
    result = ops.convert_to_numpy(masked_average_pool(features, cams))
    for b in range(2):
        for c in range(3):
            expected = sum(cams[b, p, c] * features[b, p] for p in range(6)) / (cams[b, :, c].sum() + 1e-5)
            np.testing.assert_allclose(result[b, c], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result[1, 2], 0.0)


def numpy_loss(features, labels, text, inverse_temperature, image=None, mode="label"):
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)

    scale = min(inverse_temperature, 100.0)
    total, count = 0.0, 0
    for b in range(features.shape[0]):
        for c in range(features.shape[1]):
            if not labels[b, c]:
                continue
            f = unit(features[b, c].astype(np.float64))
            z = np.array([f @ unit(text[k].astype(np.float64)) * scale for k in range(len(text))])
            positive = c if mode == "label" else int(np.argmax([f @ unit(p.astype(np.float64)) for p in image]))
            total += -(z[positive] - np.log(np.exp(z - z.max()).sum()) - z.max())
            count += 1
    return total / count if count else 0.0


def random_case(seed=1, batch=3, classes=4, dim=6):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, classes, dim)).astype(np.float32)
    labels = (rng.random((batch, classes)) > 0.5).astype(np.float32)
    labels[0, 0] = 1.0
    text = rng.normal(size=(classes, dim)).astype(np.float32)
    image = rng.normal(size=(classes, dim)).astype(np.float32)
    return features, labels, text, image


def test_loss_matches_numpy_in_both_modes():
    features, labels, text, image = random_case()
    label_loss = float(ops.convert_to_numpy(prototype_contrastive_loss(features, labels, text, 20.0)))
    np.testing.assert_allclose(label_loss, numpy_loss(features, labels, text, 20.0), rtol=1e-4)
    cluster_loss = float(
        ops.convert_to_numpy(prototype_contrastive_loss(features, labels, text, 20.0, image_prototypes=image, pos_idx_mode="cluster"))
    )
    np.testing.assert_allclose(cluster_loss, numpy_loss(features, labels, text, 20.0, image, "cluster"), rtol=1e-4)
    # The two modes differ here (some nearest image prototypes are not the sample's class).
    assert abs(label_loss - cluster_loss) > 1e-3
    # With P_I = P_T-aligned class directions, "cluster" picks c whenever the feature is nearest to its class.
    aligned = np.eye(4, 6, dtype=np.float32)
    near = aligned[None].repeat(3, axis=0) + 0.01
    same = prototype_contrastive_loss(near, labels, text, 5.0, image_prototypes=aligned, pos_idx_mode="cluster")
    np.testing.assert_allclose(ops.convert_to_numpy(same), ops.convert_to_numpy(prototype_contrastive_loss(near, labels, text, 5.0)), rtol=1e-6)
    with pytest.raises(ValueError):
        prototype_contrastive_loss(features, labels, text, 20.0, pos_idx_mode="cluster")
    with pytest.raises(ValueError):
        prototype_contrastive_loss(features, labels, text, 20.0, pos_idx_mode="nearest")
    with pytest.raises(ValueError):
        prototype_contrastive_loss(features, labels, text, 20.0, image_prototypes=image[:3], pos_idx_mode="cluster")


def test_inverse_temperature_is_clamped_at_100():
    features, labels, text, _ = random_case(seed=2)

    def at(value):
        return float(ops.convert_to_numpy(prototype_contrastive_loss(features, labels, text, np.float32(value))))

    assert at(150.0) == pytest.approx(at(100.0), rel=1e-6)
    assert at(150.0) == pytest.approx(numpy_loss(features, labels, text, 100.0), rel=1e-4)
    assert abs(at(50.0) - at(100.0)) > 1e-3


def test_no_present_sample_gives_zero_and_finite_gradients():
    features, _, text, _ = random_case(seed=3)
    labels = np.zeros((3, 4), np.float32)
    (value, _), gradient = value_and_gradient(lambda f: (prototype_contrastive_loss(f, labels, text, 20.0), f), features)
    assert float(ops.convert_to_numpy(value)) == 0.0
    gradient = ops.convert_to_numpy(gradient)
    assert np.isfinite(gradient).all() and not gradient.any()


def test_all_zero_cam_image_is_finite():
    rng = np.random.default_rng(4)
    tokens = rng.normal(size=(2, 5, 6)).astype(np.float32)
    cams = rng.random((2, 5, 4)).astype(np.float32)
    cams[1] = 0.0  # image 1's CAMs are all zero: its pooled features are zero vectors
    labels = np.ones((2, 4), np.float32)
    text = rng.normal(size=(4, 6)).astype(np.float32)

    def loss(t):
        return prototype_contrastive_loss(masked_average_pool(t, cams), labels, text, 20.0), t

    (value, _), gradient = value_and_gradient(loss, tokens)
    value, gradient = float(ops.convert_to_numpy(value)), ops.convert_to_numpy(gradient)
    assert np.isfinite(value) and np.isfinite(gradient).all()
    # A zero feature has z = 0 for every prototype: -log(1 / C) each.
    pooled = ops.convert_to_numpy(masked_average_pool(tokens, cams))
    np.testing.assert_allclose(value, numpy_loss(pooled, labels, text, 20.0), rtol=1e-4)
    assert numpy_loss(pooled[1:], labels[1:], text, 20.0) == pytest.approx(np.log(4))
    np.testing.assert_array_equal(gradient[1], 0.0)
    assert np.abs(gradient[0]).sum() > 0


def test_background_negatives_enter_only_the_denominator():
    features, labels, text, image = random_case(seed=4)
    negatives = np.random.default_rng(5).normal(size=(2, 6)).astype(np.float32)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    rows = unit(np.concatenate([text, negatives]).astype(np.float64))
    expected = []
    for b, c in zip(*np.nonzero(labels)):
        z = 20.0 * rows @ unit(features[b, c].astype(np.float64))
        expected.append(np.log(np.exp(z).sum()) - z[c])
    got = prototype_contrastive_loss(features, labels, text, 20.0, negatives=negatives)
    np.testing.assert_allclose(float(ops.convert_to_numpy(got)), np.mean(expected), rtol=1e-4)
    # The cluster positive is still one of the C class prototypes.
    cluster = prototype_contrastive_loss(features, labels, text, 20.0, image_prototypes=image, pos_idx_mode="cluster",
                                         negatives=negatives)
    assert np.isfinite(float(ops.convert_to_numpy(cluster)))
    with pytest.raises(ValueError, match="negatives"):
        prototype_contrastive_loss(features, labels, text, 20.0, negatives=negatives[:, :3])


def test_text_to_image_loss_matches_numpy_and_only_reaches_the_text():
    from wsss_keras.ops.prototypes import text_to_image_loss

    rng = np.random.default_rng(6)
    text, image = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    z = 20.0 * unit(text.astype(np.float64)) @ unit(image.astype(np.float64)).T
    expected = np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z))
    np.testing.assert_allclose(float(ops.convert_to_numpy(text_to_image_loss(text, image, 20.0))), expected, rtol=1e-4)
    np.testing.assert_allclose(float(ops.convert_to_numpy(text_to_image_loss(text, image, 500.0))),
                               float(ops.convert_to_numpy(text_to_image_loss(text, image, 100.0))), rtol=1e-6)
    image_tensor = ops.convert_to_tensor(image)
    # `+ sum(p)` keeps p in the graph (torch refuses a gradient of a function that ignores p):
    # its gradient, ones, is all that reaches p.
    _, gradient = value_and_gradient(lambda p: (text_to_image_loss(text, p, 20.0) + ops.sum(p), ()), image_tensor)
    np.testing.assert_array_equal(ops.convert_to_numpy(gradient), 1.0)
