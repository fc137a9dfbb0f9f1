"""IRN's affinities and random walk against plain NumPy loops and the dense-matrix reference."""

import numpy as np
import pytest
from keras import ops

from wsss_keras.ops.affinity import (
    affinity_loss,
    boundary_to_affinity,
    direction_path,
    pair_labels,
    path_directions,
    random_walk,
    random_walk_labels,
    walk_to_labels,
)


def test_direction_counts_and_order():
    assert len(path_directions(5)) == 34 and len(path_directions(10)) == 152
    assert path_directions(3) == (
        (0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2), (2, -2), (2, -1), (2, 0), (2, 1), (2, 2)
    )
    assert all(dy >= 0 and (dy > 0 or dx > 0) for dy, dx in path_directions(10))


def test_paths_run_from_the_destination_to_the_source():
    assert direction_path((1, 2)) == ((1, 2), (0, 2), (1, 1), (0, 1), (1, 0), (0, 0))
    assert direction_path((0, 3)) == ((0, 3), (0, 2), (0, 1), (0, 0))
    assert direction_path((3, -1)) == ((3, -1), (2, -1), (3, 0), (1, -1), (2, 0), (0, -1), (1, 0), (0, 0))
    for direction in path_directions(10):
        path = direction_path(direction)
        norms = [abs(y) + abs(x) for y, x in path]
        assert path[0] == direction and path[-1] == (0, 0) and norms == sorted(norms, reverse=True)


def numpy_affinity(boundary, radius):
    batch, height, width = boundary.shape
    directions = path_directions(radius)
    rows, cols = height - radius + 1, width - 2 * (radius - 1)
    out = np.zeros((batch, len(directions), rows, cols), np.float32)
    for b in range(batch):
        for k, direction in enumerate(directions):
            for y in range(rows):
                for x in range(cols):
                    sy, sx = y, x + radius - 1
                    out[b, k, y, x] = 1 - max(boundary[b, sy + py, sx + px] for py, px in direction_path(direction))
    return out


def test_boundary_to_affinity_matches_a_loop():
    boundary = np.random.default_rng(0).random((2, 7, 9)).astype("float32")
    got = ops.convert_to_numpy(boundary_to_affinity(boundary, 3))
    np.testing.assert_allclose(got, numpy_affinity(boundary, 3), atol=1e-6)


def test_pair_labels_match_a_loop_and_count_pairs():
    rng = np.random.default_rng(1)
    labels = rng.choice([0, 1, 2, 255], size=(2, 6, 8), p=[0.4, 0.25, 0.25, 0.1]).astype("int32")
    radius = 3
    bg, fg, neg = (ops.convert_to_numpy(m) for m in pair_labels(labels, radius))
    for b in range(2):
        for k, (dy, dx) in enumerate(path_directions(radius)):
            for y in range(6 - radius + 1):
                for x in range(8 - 2 * (radius - 1)):
                    a, c = labels[b, y, x + radius - 1], labels[b, y + dy, x + radius - 1 + dx]
                    valid = a != 255 and c != 255
                    assert bg[b, k, y, x] == (valid and a == c == 0)
                    assert fg[b, k, y, x] == (valid and a == c and a > 0)
                    assert neg[b, k, y, x] == (valid and a != c)
    # IRN's training grid: 128 x 128 labels at radius 10 give 152 pairs for each of 119 x 110 sources.
    bg, fg, neg = pair_labels(np.zeros((1, 128, 128), "int32"), 10)
    assert tuple(bg.shape) == (1, 152, 119, 110) and float(ops.sum(bg)) == 152 * 119 * 110


def test_affinity_loss_by_hand():
    affinity = np.array([[[[0.5, 0.9]], [[0.2, 0.99]]]], "float32")  # (1, 2, 1, 2)
    bg = np.array([[[[1, 0]], [[0, 0]]]], "float32")
    fg = np.array([[[[0, 1]], [[0, 0]]]], "float32")
    neg = np.array([[[[0, 0]], [[1, 1]]]], "float32")
    eps = 1e-5
    pos = 0.5 * (-np.log(0.5 + eps) / (1 + eps)) + 0.5 * (-np.log(0.9 + eps) / (1 + eps))
    negative = (-np.log(1 + eps - 0.2) - np.log(1 + eps - 0.99)) / (2 + eps)
    np.testing.assert_allclose(float(affinity_loss(affinity, bg, fg, neg)), 0.5 * (pos + negative), rtol=1e-5)


def dense_transition(boundary, radius, beta):
    """IRN's dense T: symmetric A with ones on the diagonal, A^beta, columns normalised."""
    height, width = boundary.shape
    n = height * width
    affinity = np.eye(n)
    for dy, dx in path_directions(radius):
        for y in range(height):
            for x in range(width):
                ty, tx = y + dy, x + dx
                if 0 <= ty < height and 0 <= tx < width:
                    value = 1 - max(boundary[y + py, x + px] for py, px in direction_path((dy, dx)))
                    affinity[y * width + x, ty * width + tx] = affinity[ty * width + tx, y * width + x] = value
    powered = affinity ** beta
    return powered / powered.sum(axis=0, keepdims=True)


@pytest.mark.parametrize("exp_times", [2, 8])
def test_random_walk_equals_the_dense_matrix_power(exp_times):
    rng = np.random.default_rng(2)
    boundary = (rng.random((7, 9)) ** 3).astype("float32")
    cams = rng.random((7, 9, 2)).astype("float32")
    transition = dense_transition(boundary.astype("float64"), 3, 10.0)
    np.testing.assert_allclose(transition.sum(axis=0), 1.0, atol=1e-12)
    walk = np.linalg.matrix_power(transition, 2**exp_times)
    seeds = (cams * (1 - boundary)[..., None]).reshape(-1, 2).T.astype("float64")
    expected = (seeds @ walk).T.reshape(7, 9, 2)
    got = ops.convert_to_numpy(random_walk(cams, boundary, radius=3, beta=10.0, exp_times=exp_times))
    # float32 steps against a float64 matrix power: 256 steps accumulate a few 1e-4 of rounding.
    np.testing.assert_allclose(got, expected, rtol=1e-4 * 2**exp_times / 64, atol=1e-6)


def test_random_walk_runs_on_a_512_image_grid():
    rng = np.random.default_rng(3)
    got = ops.convert_to_numpy(random_walk(rng.random((128, 128, 3)).astype("float32"), rng.random((128, 128)).astype("float32") * 0.5))
    assert got.shape == (128, 128, 3) and np.isfinite(got).all() and got.min() >= 0


def test_walk_stays_behind_a_boundary_wall():
    boundary = np.zeros((12, 12), "float32")
    boundary[:, 6] = 1.0  # a wall between the left and right halves
    cams = np.zeros((12, 12, 2), "float32")
    cams[5, 2, 0] = 1.0   # a seed of class 3 on the left
    cams[5, 9, 1] = 1.0   # a seed of class 7 on the right
    cams[0, 0, 0] = 0.02  # a weak spot far away
    labels = random_walk_labels(cams, boundary, [3, 7], (46, 48), power=1.0, bg_threshold=0.05, radius=3, exp_times=6)
    assert labels.shape == (46, 48)
    assert set(np.unique(labels[:, :22])) <= {0, 3} and (labels[:, :22] == 3).mean() > 0.5
    assert set(np.unique(labels[:, 28:])) <= {0, 7} and (labels[:, 28:] == 7).mean() > 0.5


def test_walk_to_labels_background_plane_and_keys():
    propagated = np.zeros((2, 2, 2), "float32")
    propagated[0, 0, 0], propagated[1, 1, 1], propagated[0, 1, 1] = 1.0, 0.5, 0.1
    labels = walk_to_labels(propagated, [4, 9], (8, 8), bg_threshold=0.25)
    assert labels[0, 0] == 4 and labels[7, 7] == 9 and labels[0, 7] == 0 and labels.dtype == np.uint8
    assert walk_to_labels(np.zeros((2, 2, 0), "float32"), [], (5, 6)).tolist() == [[0] * 6] * 5
