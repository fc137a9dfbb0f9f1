"""Attention-affinity refinement (spec ssr.md §2.6.1) against NumPy loops and OpenCV's
`scoremap2bbox` procedure."""

import cv2
import keras
import numpy as np
import pytest
from keras import ops

from wsss_keras.ops.token_affinity import (
    box_token_mask,
    fuse_attention,
    propagate_cams,
    sinkhorn_transition,
)


def numpy_sinkhorn(attention, iterations=3, symmetrize=True, square=True):
    out = []
    for matrix in attention.astype(np.float64):
        t = matrix.copy()
        for _ in range(iterations):
            for j in range(t.shape[1]):
                column = t[:, j].sum()
                t[:, j] = t[:, j] / column if column > 0 else 0.0
            for i in range(t.shape[0]):
                row = t[i].sum()
                t[i] = t[i] / row if row > 0 else 0.0
        if symmetrize:
            t = (t + t.T) / 2
        if square:
            t = t @ t
        out.append(t)
    return np.stack(out)


def reference_box_mask(scoremap, threshold):
    """CLIP-ES `scoremap2bbox(multi_contour_eval=True)` + WeCLIP's box filling, one map."""
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((x, y, min(x + w, width - 1), min(y + h, height - 1)))
    if not boxes:
        boxes = [(0, 0, 0, 0)]
    mask = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


def blobby_cams(rng, batch, height, width, channels):
    cams = np.zeros((batch, height, width, channels), np.float32)
    for b in range(batch):
        for c in range(channels):
            noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 1.2)
            noise = noise - noise.min()
            cams[b, :, :, c] = noise / noise.max()
    return cams


def compiled(function):
    """`function` compiled as the training step would be (torch runs eagerly)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    return function


def test_sinkhorn_matches_loop_and_is_symmetric():
    rng = np.random.default_rng(0)
    attention = rng.random((2, 9, 9)).astype(np.float32) ** 3
    result = ops.convert_to_numpy(sinkhorn_transition(attention))
    np.testing.assert_allclose(result, numpy_sinkhorn(attention), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result, np.transpose(result, (0, 2, 1)), atol=1e-6)
    plain = ops.convert_to_numpy(sinkhorn_transition(attention, symmetrize=False, square=False))
    np.testing.assert_allclose(plain.sum(axis=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(plain, numpy_sinkhorn(attention, symmetrize=False, square=False), rtol=1e-4, atol=1e-6)
    # One round leaves the column sums at most one step away; more rounds keep rows exact.
    single = ops.convert_to_numpy(sinkhorn_transition(attention, iterations=1, symmetrize=True, square=False))
    np.testing.assert_allclose(single, numpy_sinkhorn(attention, 1, True, False), rtol=1e-4, atol=1e-6)


def test_sinkhorn_zero_column_gives_no_nan():
    rng = np.random.default_rng(1)
    attention = rng.random((1, 6, 6)).astype(np.float32)
    attention[0, :, 2] = 0.0
    attention[0, 4, :] = 0.0
    result = ops.convert_to_numpy(sinkhorn_transition(attention))
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, numpy_sinkhorn(attention), rtol=1e-4, atol=1e-6)


def test_fuse_attention_weights_and_errors():
    rng = np.random.default_rng(2)
    maps = [rng.random((2, 4, 4)).astype(np.float32) for _ in range(3)]
    fused = ops.convert_to_numpy(fuse_attention(maps, [2.0, 0.0, 6.0]))
    np.testing.assert_allclose(fused, 0.25 * maps[0] + 0.75 * maps[2], rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(fuse_attention(maps)), np.mean(maps, axis=0), rtol=1e-6)
    for weights in ([1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0]):
        with pytest.raises(ValueError):
            fuse_attention(maps, weights)


def test_box_mask_matches_opencv_on_blobby_cams():
    rng = np.random.default_rng(3)
    cams = blobby_cams(rng, 3, 11, 13, 4)
    for threshold in (0.4, 0.7):
        result = ops.convert_to_numpy(compiled(lambda x, threshold=threshold: box_token_mask(x, threshold))(cams))
        assert result.shape == cams.shape and result.dtype == np.float32
        for b in range(3):
            for c in range(4):
                np.testing.assert_array_equal(result[b, :, :, c], reference_box_mask(cams[b, :, :, c], threshold), err_msg=f"{threshold} {b} {c}")


def test_box_mask_hand_made_cases():
    height, width = 10, 9
    cams = np.zeros((1, height, width, 6), np.float32)
    # A ring with a hole holding an island (RETR_TREE nests three contours).
    cams[0, 1:7, 1:7, 0] = 1.0
    cams[0, 2:6, 2:6, 0] = 0.0
    cams[0, 3:5, 3, 0] = 0.9
    # A component on the last row and column, and one touching only diagonally.
    cams[0, 7:, 6:, 1] = 0.8
    cams[0, 5, 5, 1] = 0.8
    cams[0, 0, 0, 1] = 0.2  # below 0.4 · max: off
    # Empty: all zero; and a single peak (max level 1 -> the cutoff is 0).
    cams[0, 4, 4, 3] = 1.5 / 255
    # A snake: one component whose geodesic diameter is most of the grid.
    cams[0, ::2, :-1, 4] = 1.0
    cams[0, 1::4, -2, 4] = 1.0
    cams[0, 3::4, 0, 4] = 1.0
    # Levels 90 and 63 at threshold 0.7: int(0.7 * 90) = 62 in float64 (so level 63 is on),
    # where float32 arithmetic gives 63 (and would switch it off).
    cams[0, 1, 1, 5] = 90.5 / 255
    cams[0, 5:7, 4:6, 5] = 63.5 / 255
    for threshold, channels in ((0.7, [5]), (0.4, range(6))):
        result = ops.convert_to_numpy(box_token_mask(cams, threshold))
        for c in channels:
            np.testing.assert_array_equal(result[0, :, :, c], reference_box_mask(cams[0, :, :, c], threshold), err_msg=str(c))
        assert result[0, :, :, 5].sum() == 5  # the peak's box and the 2 x 2 blob's
    assert result[0, :, :, 2].sum() == 0
    assert result[0, -1].sum() == 0 and result[0, :, -1].sum() == 0
    assert result[0, 4, 4, 3] == 1 and result[0, :, :, 3].sum() == 1
    # Below the default number of steps, the snake is cut into pieces whose boxes are smaller.
    partial = ops.convert_to_numpy(box_token_mask(cams, 0.4, iterations=3))
    assert partial[0, :, :, 4].sum() < result[0, :, :, 4].sum()


def test_box_mask_rejects_bad_threshold():
    cams = np.zeros((1, 3, 3, 1), np.float32)
    for threshold in (1.5, -0.1, np.zeros(1)):
        with pytest.raises(ValueError):
            box_token_mask(cams, threshold)


def numpy_propagate(transition, cams, mask):
    batch, tokens, channels = cams.shape
    out = np.zeros_like(cams, dtype=np.float64)
    for b in range(batch):
        for i in range(tokens):
            for c in range(channels):
                out[b, i, c] = sum(transition[b, i, j] * mask[b, j, c] * cams[b, j, c] for j in range(tokens))
    return out


def test_propagation_matches_loop_and_column_masking():
    rng = np.random.default_rng(4)
    transition = rng.random((2, 12, 12)).astype(np.float32)
    cams = rng.random((2, 12, 3)).astype(np.float32)
    mask = (rng.random((2, 12, 3)) > 0.5).astype(np.float32)
    result = ops.convert_to_numpy(propagate_cams(transition, cams, mask))
    np.testing.assert_allclose(result, numpy_propagate(transition, cams, mask), rtol=1e-5)
    for b in range(2):
        for c in range(3):
            column_masked = (transition[b] * mask[b, :, c][None, :]) @ cams[b, :, c]
            np.testing.assert_allclose(result[b, :, c], column_masked, rtol=1e-5)
    # A masked-out token contributes nothing: changing its CAM changes no output.
    b, j, c = np.argwhere(mask == 0)[0]
    changed = cams.copy()
    changed[b, j, c] += 5.0
    np.testing.assert_array_equal(ops.convert_to_numpy(propagate_cams(transition, changed, mask)), result)
    # (B, h, w, C) in, the same layout out.
    grid = ops.convert_to_numpy(propagate_cams(transition, cams.reshape(2, 3, 4, 3), mask.reshape(2, 3, 4, 3)))
    np.testing.assert_allclose(grid, result.reshape(2, 3, 4, 3), rtol=1e-6)
    with pytest.raises(ValueError):
        propagate_cams(transition, cams, mask[:, :6])
