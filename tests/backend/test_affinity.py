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
    walk_weights,
)


def test_direction_counts_and_order():
    assert len(path_directions(5)) == 34 and len(path_directions(10)) == 152
    assert path_directions(3) == [
        (0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2), (2, -2), (2, -1), (2, 0), (2, 1), (2, 2)
    ]
    for radius in (5, 10):
        directions = path_directions(radius)
        assert len(set(directions)) == len(directions)
        # Half of the disc: no direction's opposite is in the list.
        assert not set(directions) & {(-dy, -dx) for dy, dx in directions}
        assert all(dy * dy + dx * dx < radius * radius for dy, dx in directions)
    path_directions(5).append((9, 9))  # a caller's copy: the cached list is not changed
    assert len(path_directions(5)) == 34


def test_paths_run_from_the_destination_to_the_source():
    assert direction_path((1, 2)) == [(1, 2), (0, 2), (1, 1), (0, 1), (1, 0), (0, 0)]
    assert direction_path([2, 1]) == [(2, 1), (1, 1), (2, 0), (0, 1), (1, 0), (0, 0)]
    assert direction_path((0, 3)) == [(0, 3), (0, 2), (0, 1), (0, 0)]
    assert direction_path((3, -1)) == [(3, -1), (2, -1), (3, 0), (1, -1), (2, 0), (0, -1), (1, 0), (0, 0)]
    assert direction_path((2, 2)) == [(2, 2), (1, 2), (2, 1), (1, 1), (0, 1), (1, 0), (0, 0)]
    for direction in path_directions(10):
        path = direction_path(direction)
        norms = [abs(y) + abs(x) for y, x in path]
        assert path[0] == direction and path[-1] == (0, 0) and norms == sorted(norms, reverse=True)
        dy, dx = direction
        assert all((y * dx - x * dy) ** 2 < dy * dy + dx * dx for y, x in path)


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


@pytest.mark.parametrize("radius", [2, 3, 4])
def test_boundary_to_affinity_matches_a_loop(radius):
    boundary = np.random.default_rng(radius).random((2, 7, 9)).astype("float32")
    got = ops.convert_to_numpy(boundary_to_affinity(boundary, radius))
    assert got.shape == (2, len(path_directions(radius)), 8 - radius, 11 - 2 * radius)
    np.testing.assert_allclose(got, numpy_affinity(boundary, radius), atol=1e-6)


def test_boundary_to_affinity_rejects_a_map_too_small():
    with pytest.raises(ValueError, match="too small"):
        boundary_to_affinity(np.zeros((1, 8, 8), "float32"), 5)


def test_pair_labels_match_a_loop_and_count_pairs():
    rng = np.random.default_rng(1)
    labels = rng.choice([0, 1, 2, 255, -1, 300], size=(2, 6, 8), p=[0.4, 0.25, 0.25, 0.04, 0.03, 0.03]).astype("int32")
    radius = 3
    bg, fg, neg = (ops.convert_to_numpy(m) for m in pair_labels(labels, radius))
    assert bg.dtype == fg.dtype == neg.dtype == np.float32
    for b in range(2):
        for k, (dy, dx) in enumerate(path_directions(radius)):
            for y in range(6 - radius + 1):
                for x in range(8 - 2 * (radius - 1)):
                    a, c = labels[b, y, x + radius - 1], labels[b, y + dy, x + radius - 1 + dx]
                    valid = 0 <= a < 255 and 0 <= c < 255
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
    # No foreground pairs: that term is 0, not NaN; a = 0 and a = 1 stay finite.
    extreme = np.array([[[[0.0, 1.0]], [[1.0, 0.0]]]], "float32")
    loss = float(affinity_loss(extreme, bg, np.zeros_like(fg), neg))
    expected = 0.5 * (0.5 * -np.log(eps) / (1 + eps) + (-np.log(eps) - np.log(1 + eps)) / (2 + eps))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def dense_transition(boundary, radius, beta):
    """IRN's dense T: the boundary padded with 1.0 (left, right, bottom), symmetric A with ones
    on the diagonal over the original pixels, A^beta, columns normalised."""
    height, width = boundary.shape
    padded = np.pad(boundary, ((0, radius), (radius, radius)), constant_values=1.0)
    n = height * width
    affinity = np.eye(n)
    for dy, dx in path_directions(radius):
        for y in range(height):
            for x in range(width):
                ty, tx = y + dy, x + dx
                if 0 <= ty < height and 0 <= tx < width:
                    value = 1 - max(padded[y + py, x + radius + px] for py, px in direction_path((dy, dx)))
                    affinity[y * width + x, ty * width + tx] = affinity[ty * width + tx, y * width + x] = value
    powered = affinity**beta
    return powered / powered.sum(axis=0, keepdims=True)


def dense_walk(cams, boundary, radius, beta, exp_times):
    transition = dense_transition(boundary.astype("float64"), radius, beta)
    np.testing.assert_allclose(transition.sum(axis=0), 1.0, atol=1e-12)  # column-stochastic
    for _ in range(exp_times):  # IRN squares T exp_times times
        transition = transition @ transition
    height, width, channels = cams.shape
    seeds = (cams * (1 - boundary)[..., None]).reshape(-1, channels).T.astype("float64")
    return (seeds @ transition).T.reshape(height, width, channels)


def walk_case(height, width, seed):
    rng = np.random.default_rng(seed)
    boundary = (rng.random((height, width)) ** 3).astype("float32")
    return rng.random((height, width, 2)).astype("float32"), boundary


@pytest.mark.parametrize(("radius", "exp_times"), [(3, 2), (3, 8), (5, 8)])
def test_random_walk_equals_the_dense_matrix_power(radius, exp_times):
    cams, boundary = walk_case(7, 9, radius + exp_times)
    expected = dense_walk(cams, boundary, radius, 10.0, exp_times)
    got = ops.convert_to_numpy(random_walk(cams, boundary, radius=radius, beta=10.0, exp_times=exp_times))
    assert got.shape == (7, 9, 2) and got.dtype == np.float32
    # 256 float32 steps: even with T exact, stepping in float32 drifts up to 2e-4 from the
    # float64 matrix power on these slowly mixing random boundaries.
    np.testing.assert_allclose(got, expected, rtol=1e-4 if exp_times < 8 else 5e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["slices", "gather"])
def test_both_walk_methods_equal_the_dense_reference(method):
    cams, boundary = walk_case(6, 10, 4)
    expected = dense_walk(cams, boundary, 4, 3.0, 3)
    got = ops.convert_to_numpy(random_walk(cams, boundary, radius=4, beta=3.0, exp_times=3, method=method))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_walk_weights_are_the_columns_of_t():
    _, boundary = walk_case(5, 6, 5)
    offsets, weights = walk_weights(boundary, radius=3, beta=10.0)
    weights = ops.convert_to_numpy(weights)
    transition = dense_transition(boundary.astype("float64"), 3, 10.0)
    for y in range(5):
        for x in range(6):
            for (dy, dx), weight in zip(offsets, weights[y, x]):
                inside = 0 <= y + dy < 5 and 0 <= x + dx < 6
                expected = transition[(y + dy) * 6 + x + dx, y * 6 + x] if inside else 0.0
                np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-7)


def test_random_walk_runs_on_a_512_image_grid():
    rng = np.random.default_rng(3)
    cams = rng.random((128, 128, 3)).astype("float32")
    got = ops.convert_to_numpy(random_walk(cams, rng.random((128, 128)).astype("float32") * 0.5))
    assert got.shape == (128, 128, 3) and np.isfinite(got).all() and got.min() >= 0 and got.max() > 0


def test_walk_stays_behind_a_boundary_wall():
    boundary = np.zeros((12, 12), "float32")
    boundary[:, 6] = 1.0  # a wall between the left and right halves
    cams = np.zeros((12, 12, 2), "float32")
    cams[5, 2, 0] = 1.0  # a seed of class 3 on the left
    cams[5, 9, 1] = 1.0  # a seed of class 7 on the right
    labels = random_walk_labels(cams, boundary, [3, 7], (46, 48), power=1.0, bg_threshold=0.05, radius=3, exp_times=6)
    assert labels.shape == (46, 48) and labels.dtype == np.uint8
    # Columns 0..23 are the left grid cells 0..5 upsampled; the wall is grid column 6.
    assert set(np.unique(labels[:, :22])) <= {0, 3} and (labels[:, :22] == 3).mean() > 0.5
    assert set(np.unique(labels[:, 28:])) <= {0, 7} and (labels[:, 28:] == 7).mean() > 0.5


def test_a_weak_class_turns_to_background():
    # The wall test's sizes, so that JAX reuses its compiled ops.
    boundary = np.zeros((12, 12), "float32")
    boundary[:, 6] = 1.0
    cams = np.zeros((12, 12, 2), "float32")
    cams[:, :6, 0] = 1.0  # class 15 fills the left half
    cams[:, 7:, 1] = 0.1  # class 3 is weak on the right: below 0.25 of the global max
    options = {"radius": 3, "exp_times": 6}
    labels = random_walk_labels(cams, boundary, [15, 3], (46, 48), power=1.0, **options)
    # Grid column 6 (the wall, zero after the 1 - boundary mask) blends into image columns 22..29.
    assert (labels[:, :20] == 15).all() and (labels[:, 30:] == 0).all()
    # With power 0.5 the weak class (0.1 ** 0.5 = 0.32) beats the background.
    labels = random_walk_labels(cams, boundary, [15, 3], (46, 48), power=0.5, **options)
    assert (labels[:, :20] == 15).all() and (labels[:, 30:] == 3).all()


def test_no_present_class_gives_background():
    labels = random_walk_labels(np.zeros((4, 5, 0), "float32"), np.zeros((4, 5), "float32"), [], (13, 18))
    assert labels.shape == (13, 18) and labels.dtype == np.uint8 and not labels.any()


def test_walk_to_labels_background_plane_and_keys():
    propagated = np.zeros((2, 2, 2), "float32")
    propagated[0, 0, 0], propagated[1, 1, 1], propagated[0, 1, 1] = 1.0, 0.5, 0.1
    labels = walk_to_labels(propagated, [4, 9], (8, 7), bg_threshold=0.25)
    assert labels.shape == (8, 7) and labels.dtype == np.uint8
    assert labels[0, 0] == 4 and labels[7, 6] == 9 and labels[0, 6] == 0
    assert walk_to_labels(np.zeros((2, 2, 0), "float32"), [], (5, 6)).tolist() == [[0] * 6] * 5
    with pytest.raises(ValueError, match="keys"):
        walk_to_labels(propagated, [4], (8, 8))
