"""Inter-pixel affinities from a boundary map, and the random walk on them (IRN, Ahn et al. 2019).

Spec methods/amr.md §4.4-4.5 (IRN's `misc/indexing.py`, which AMR copies unchanged):

- A direction d = (dy, dx) of radius r links a source pixel s to s + d; `path_directions(r)`
  lists the directions with dy >= 0 (half the neighbourhood: each pair counted once).
  |D(5)| = 34, |D(10)| = 152.
- The affinity of a pair is 1 - the largest boundary probability on the straight path between
  them, endpoints included (`direction_path`): two pixels are related unless a boundary
  separates them.
- Training (`boundary_to_affinity`, `pair_labels`, `affinity_loss`) uses every source whose
  whole neighbourhood lies inside the map: rows [0, h - r + 1), columns [r - 1, w - r + 1),
  the crop IRN's `PathIndex` takes.
- The random walk (`random_walk`) spreads CAMs with the transition matrix T = A^beta (element
  power) with columns normalised, applied 2^exp_times times. IRN builds the dense N x N matrix
  and squares it (0.55 GB for a 500 x 375 image); here the sparse T (each pixel has
  2 |D(r)| + 1 neighbours) is applied step by step, which gives the same product and walks a
  512 x 512 image's 128 x 128 grid with K = 3 in about 15 MB.

Shapes: maps are (B, h, w); affinities and pair masks (B, D, h', w') with D the directions in
`path_directions` order; CAMs for the walk are (h, w, K), channels last.
"""

import functools

import keras
import numpy as np
from keras import ops

from wsss_keras.ops.cam import IGNORE_INDEX, resize_bilinear


@functools.cache
def _directions(radius):
    directions = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        directions += [(y, x) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius]
    return tuple(directions)


def path_directions(radius):
    """The directions of a neighbourhood of radius `radius`, one of each pair {d, -d}.

    D(r) = {(0, x): 1 <= x < r} then {(y, x): 1 <= y < r, |x| < r, x² + y² < r²}, by rows
    y = 1 .. r - 1 and x ascending: the order of IRN's `PathIndex`, which fixes the order of
    the affinity channels.

    Args:
        radius: the neighbourhood radius r (IRN: 10 for training, 5 for the random walk).

    Returns:
        list of (dy, dx) int tuples.

    Example:
    >>> path_directions(2)
    [(0, 1), (1, -1), (1, 0), (1, 1)]
    >>> len(path_directions(5)), len(path_directions(10))
    (34, 152)
    """
    return list(_directions(int(radius)))


@functools.cache
def _path(dy, dx):
    length2 = dy * dy + dx * dx
    # (y dx - x dy)² / |d|² is the squared distance of (y, x) to the line through 0 and d;
    # compared in integers to avoid rounding at the cut-off.
    points = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (y * dx - x * dy) ** 2 < length2
    ]
    # Ties in L1 norm keep the box's row-major order, as IRN's stable sort does.
    return tuple(sorted(points, key=lambda p: (-(abs(p[0]) + abs(p[1])), p)))


def direction_path(direction):
    """The pixels a pair's affinity looks at: its straight path, destination first.

    Every integer point of the box spanned by (0, 0) and `direction` whose squared distance to
    the line through both is below 1, both endpoints included, by decreasing L1 norm.

    Args:
        direction: (dy, dx) integers.

    Returns:
        list of (dy, dx) int tuples from `direction` down to (0, 0).

    Example:
    >>> direction_path((1, 2))
    [(1, 2), (0, 2), (1, 1), (0, 1), (1, 0), (0, 0)]
    """
    dy, dx = (int(v) for v in direction)
    return list(_path(dy, dx))


def _source_size(height, width, radius):
    rows, cols = height - radius + 1, width - 2 * (radius - 1)
    if rows < 1 or cols < 1:
        raise ValueError(f"a {height}x{width} map is too small for affinities of radius {radius}.")
    return rows, cols


def _shifted(maps, offset, origin, size):
    """maps[:, origin_y + dy : ... + h', origin_x + dx : ... + w'] for offset (dy, dx)."""
    y, x = origin[0] + offset[0], origin[1] + offset[1]
    return maps[:, y : y + size[0], x : x + size[1]]


def _path_affinities(boundary, directions, origin, size):
    """(B, D, *size): 1 - max of `boundary` over each direction's path from the sources at
    `origin` (top-left source in `boundary`'s coordinates)."""
    # Paths of different directions share most of their points: slice each point once.
    cache, affinities = {}, []
    for dy, dx in directions:
        largest = None
        for point in _path(dy, dx):
            if point not in cache:
                cache[point] = _shifted(boundary, point, origin, size)
            largest = cache[point] if largest is None else ops.maximum(largest, cache[point])
        affinities.append(1.0 - largest)
    return ops.stack(affinities, axis=1)


def boundary_to_affinity(boundary, radius):
    """Affinities of every training source and direction from boundary probabilities.

    a(s, d) = 1 - max over p in direction_path(d) of boundary[s + p], for the sources s in rows
    [0, h - r + 1) and columns [r - 1, w - r + 1) (those whose every destination is inside).

    Args:
        boundary: (B, h, w) boundary probabilities in [0, 1].
        radius: neighbourhood radius (IRN trains with 10).

    Returns:
        (B, D, h - radius + 1, w - 2 (radius - 1)) affinities, D = len(path_directions(radius)).

    Example:
    >>> import numpy as np
    >>> tuple(boundary_to_affinity(np.zeros((1, 8, 8), "float32"), 3).shape)
    (1, 12, 6, 4)
    """
    boundary, radius = ops.convert_to_tensor(boundary, "float32"), int(radius)
    size = _source_size(boundary.shape[1], boundary.shape[2], radius)
    return _path_affinities(boundary, _directions(radius), (0, radius - 1), size)


def pair_labels(label_maps, radius):
    """Which source-destination pairs are positive (same background / same class) or negative.

    Args:
        label_maps: (B, h, w) int labels, 0 background, c > 0 a class, 255 (or anything outside
            0..254) unsure.
        radius: neighbourhood radius, as for `boundary_to_affinity`.

    Returns:
        (bg_pos, fg_pos, neg) float32 masks, each (B, D, h', w') like the affinities: both
        background; both the same class > 0; both labelled but different.

    Example:
    >>> import numpy as np
    >>> from keras import ops
    >>> # One source, (0, 1); its destinations (0, 2), (1, 0), (1, 1) (ignored), (1, 2).
    >>> bg, fg, neg = pair_labels(np.array([[[0, 0, 3], [0, 255, 3]]]), 2)
    >>> tuple(bg.shape), [ops.convert_to_numpy(m)[0, :, 0, 0].tolist() for m in (bg, fg, neg)]
    ((1, 4, 1, 1), [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    """
    labels, radius = ops.cast(ops.convert_to_tensor(label_maps), "int32"), int(radius)
    size = _source_size(labels.shape[1], labels.shape[2], radius)
    origin = (0, radius - 1)
    valid = (labels >= 0) & (labels < IGNORE_INDEX)
    source, source_valid = _shifted(labels, (0, 0), origin, size), _shifted(valid, (0, 0), origin, size)
    bg_pos, fg_pos, neg = [], [], []
    for direction in _directions(radius):
        target = _shifted(labels, direction, origin, size)
        both = source_valid & _shifted(valid, direction, origin, size)
        same = both & (source == target)
        bg_pos.append(same & (source == 0))
        fg_pos.append(same & (source > 0))
        neg.append(both & (source != target))
    return tuple(ops.cast(ops.stack(masks, axis=1), "float32") for masks in (bg_pos, fg_pos, neg))


def _masked_mean(values, mask):
    return ops.sum(values * mask) / (ops.sum(mask) + 1e-5)


def affinity_loss(affinity, bg_pos, fg_pos, neg, eps=1e-5):
    """IRN's affinity loss: (L_pos + L_neg) / 2.

    L_pos = ½ mean_bg_pos[-log(a + eps)] + ½ mean_fg_pos[-log(a + eps)] and
    L_neg = mean_neg[-log(1 + eps - a)], each mean sum(mask · loss) / (sum(mask) + 1e-5) over
    the whole batch (so an empty mask contributes 0).

    Args:
        affinity: (B, D, h', w') affinities from `boundary_to_affinity`.
        bg_pos, fg_pos, neg: masks of the same shape from `pair_labels`.
        eps: keeps the logs finite at a = 0 and a = 1.

    Returns:
        scalar loss.

    Example:
    >>> import numpy as np
    >>> half, one, zero = (np.full((1, 1, 1, 1), v, "float32") for v in (0.5, 1.0, 0.0))
    >>> round(float(affinity_loss(half, one, zero, one)), 3)  # (½ log 2 + log 2) / 2
    0.52
    """
    affinity = ops.cast(affinity, "float32")
    positive = -ops.log(affinity + eps)
    bg_pos, fg_pos, neg = (ops.cast(mask, "float32") for mask in (bg_pos, fg_pos, neg))
    pos = 0.5 * _masked_mean(positive, bg_pos) + 0.5 * _masked_mean(positive, fg_pos)
    negative = _masked_mean(-ops.log(1.0 + eps - affinity), neg)
    return 0.5 * (pos + negative)


def _walk_offsets(radius):
    directions = _directions(radius)
    return ((0, 0),) + directions + tuple((-dy, -dx) for dy, dx in directions)


@functools.lru_cache(maxsize=16)
def _inside_and_indices(height, width, radius):
    """For each pixel (row-major) and walk offset: whether the neighbour is in the image, and
    its flat index (the pixel's own index where it is not, so that gathers stay in range)."""
    offsets = np.array(_walk_offsets(radius))
    rows, cols = np.divmod(np.arange(height * width), width)
    target_rows, target_cols = rows[:, None] + offsets[:, 0], cols[:, None] + offsets[:, 1]
    inside = (target_rows >= 0) & (target_rows < height) & (target_cols >= 0) & (target_cols < width)
    indices = np.where(inside, target_rows * width + target_cols, np.arange(height * width)[:, None])
    return inside.reshape(height, width, -1).astype(np.float32), indices.astype(np.int32)


def walk_weights(boundary, radius=5, beta=10.0):
    """The random walk's sparse transition weights.

    Args:
        boundary: (h, w) boundary probabilities.
        radius: neighbourhood radius of the affinities.
        beta: power of the affinities.

    Returns:
        (offsets, weights): the 2 |D(r)| + 1 neighbour offsets (self first, then each direction,
        then each opposite direction) and a (h, w, len(offsets)) tensor: weights[j, o] =
        A(j, j + offsets[o])^beta divided by its sum over j's neighbours, i.e. T[j + o, j] (the
        column normalisation of T; A is symmetric). Neighbours outside the image get 0.

    Example:
    >>> import numpy as np
    >>> offsets, weights = walk_weights(np.zeros((4, 5), "float32"), radius=2)
    >>> len(offsets), tuple(weights.shape)
    (9, (4, 5, 9))
    """
    boundary, radius = ops.convert_to_tensor(boundary, "float32"), int(radius)
    height, width = boundary.shape
    # IRN pads the map with 1.0 (left, right, bottom): a path leaving the image crosses a
    # boundary, so pairs with one end outside get affinity 0. Padded on all sides here since
    # the opposite directions' sources lie above the image too.
    padded = ops.pad(boundary[None], ((0, 0), (radius, radius), (radius, radius)), constant_values=1.0)
    directions = _directions(radius)
    # The pair (j, j + d) is a path of d from j; the pair (j, j - d) a path of d from j - d.
    forward = _path_affinities(padded, directions, (radius, radius), (height, width))[0]
    backward = [
        _path_affinities(padded, [d], (radius - d[0], radius - d[1]), (height, width))[0, 0] for d in directions
    ]
    powered = ops.concatenate([ops.ones((1, height, width)), forward, ops.stack(backward)], axis=0) ** beta
    # A only links pixels of the image; the mask makes that hold for any beta (0 ** 0 is 1).
    inside, _ = _inside_and_indices(height, width, radius)
    weights = ops.transpose(powered, (1, 2, 0)) * ops.convert_to_tensor(inside)
    return _walk_offsets(radius), weights / ops.sum(weights, axis=-1, keepdims=True)


def _walk_by_slices(values, weights, offsets, radius, steps):
    """`steps` steps as shifted multiply-adds, which XLA fuses; op by op it is two kernels per
    neighbour offset and step."""
    height, width = values.shape[0], values.shape[1]
    # Sliced once, outside the loop, so eager backends do not redo it every step.
    per_offset = [weights[:, :, index, None] for index in range(len(offsets))]

    def step(_, current):
        padded = ops.pad(current, ((radius, radius), (radius, radius), (0, 0)))
        total = per_offset[0] * current
        for weight, (dy, dx) in zip(per_offset[1:], offsets[1:]):
            total = total + weight * padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        return total

    return ops.fori_loop(0, steps, step, values)


def _walk_by_gather(values, weights, offsets, radius, steps):
    """`steps` steps, each one gather of every pixel's neighbours and one batched product: a
    handful of kernels a step instead of two per offset, which is what counts where ops run
    one by one (eager, TensorFlow graphs, GPU launches). Holds an (h w, 2 |D| + 1, K) array."""
    height, width, channels = values.shape
    count = height * width
    _, indices = _inside_and_indices(height, width, radius)
    indices = ops.convert_to_tensor(indices, "int32")
    weights = ops.reshape(weights, (count, 1, len(offsets)))

    def step(_, current):
        # (N, 1, O) @ (N, O, K): each pixel's weighted sum over its neighbours.
        return ops.reshape(ops.matmul(weights, ops.take(current, indices, axis=0)), (count, channels))

    flat = ops.fori_loop(0, steps, step, ops.reshape(values, (count, channels)))
    return ops.reshape(flat, (height, width, channels))


def random_walk(cams, boundary, radius=5, beta=10.0, exp_times=8, *, method=None):
    """IRN's random walk (`propagate_to_edge`): `(cams ⊙ (1 - boundary))` as row vectors times
    T^(2^exp_times), without building T.

    A is the symmetric affinity matrix of the image's pixels (A_ii = 1, A(s, s + d) = a(s, d)
    for d in D(radius), 0 elsewhere and for pairs leaving the image), T = A^beta (element
    power) with each column normalised to sum 1. One step maps v to v T: pixel j receives
    sum over its neighbours i of v_i A_ij^beta / (column sum j).

    Args:
        cams: (h, w, K) maps to propagate (IRN: stride-4 CAMs, AMR: raised to 1.5).
        boundary: (h, w) boundary probabilities of the same grid.
        radius: neighbourhood of the affinities (5).
        beta: power of the affinities (10).
        exp_times: the walk makes 2**exp_times steps (8: 256 steps).
        method: "slices" (shifted multiply-adds; XLA and compiled TensorFlow fuse them) or
            "gather" (one gather and one batched matmul a step; fewer kernels where ops run one
            by one). None picks "gather" on PyTorch, whose Keras functions run eagerly, and
            "slices" elsewhere (measured through the pipeline's compiled `RandomWalk` on
            TensorFlow, CPU: 1.8-2.3 s vs 3.2-3.4 s for 128 x 128 x 3). Both give the same result.

    Returns:
        (h, w, K) propagated maps, float32.

    Example:
    >>> import numpy as np
    >>> tuple(random_walk(np.ones((6, 7, 2), "float32"), np.zeros((6, 7), "float32"), radius=3).shape)
    (6, 7, 2)
    """
    if method is None:
        method = "gather" if keras.backend.backend() == "torch" else "slices"
    if method not in ("slices", "gather"):
        raise ValueError(f'random_walk: method must be "slices" or "gather", got {method!r}.')
    cams = ops.convert_to_tensor(cams, "float32")
    boundary = ops.convert_to_tensor(boundary, "float32")
    if tuple(cams.shape[:2]) != tuple(boundary.shape):
        raise ValueError(f"random_walk: CAMs {tuple(cams.shape)} and boundary {tuple(boundary.shape)} differ in size.")
    offsets, weights = walk_weights(boundary, radius, beta)
    values = cams * (1.0 - boundary)[..., None]
    walk = _walk_by_slices if method == "slices" else _walk_by_gather
    return walk(values, weights, offsets, int(radius), 2 ** int(exp_times))


def walk_to_labels(propagated, keys, image_size, bg_threshold=0.25):
    """Label map from random-walk output: x4 bilinear up, crop, global max-normalise, background
    plane, argmax, class keys (IRN's make_sem_seg_labels).

    Args:
        propagated: (h, w, K) output of `random_walk` on a stride-4 grid.
        keys: the label value of each of the K channels (e.g. class + 1).
        image_size: (H, W) of the image, at most (4h, 4w).
        bg_threshold: the constant background score (0.25).

    Returns:
        (H, W) uint8 label map: 0 where no channel beats `bg_threshold`, else the key of the
        strongest channel.

    Example:
    >>> import numpy as np
    >>> walk_to_labels(np.ones((2, 2, 1), "float32"), [7], (8, 7)).tolist()[0]
    [7, 7, 7, 7, 7, 7, 7]
    """
    height, width = (int(v) for v in image_size)
    keys = np.asarray(keys, np.int64).ravel()
    channels = propagated.shape[-1]
    if len(keys) != channels:
        raise ValueError(f"walk_to_labels: {len(keys)} keys for {channels} channels.")
    if channels == 0:
        return np.zeros((height, width), np.uint8)
    lookup = np.concatenate([[0], keys]).astype(np.uint8)
    propagated = ops.convert_to_tensor(propagated, "float32")
    grid_h, grid_w = propagated.shape[0], propagated.shape[1]
    if height > 4 * grid_h or width > 4 * grid_w:
        raise ValueError(f"walk_to_labels: a {grid_h}x{grid_w} stride-4 grid cannot cover a {height}x{width} image.")
    upsampled = ops.convert_to_numpy(resize_bilinear(propagated[None], (4 * grid_h, 4 * grid_w)))[0]
    upsampled = upsampled[:height, :width]
    # One max over every class and pixel (IRN): a weak class stays weak against the background.
    upsampled = upsampled / (upsampled.max() + 1e-5)
    background = np.full((height, width, 1), bg_threshold, np.float32)
    return lookup[np.concatenate([background, upsampled], axis=-1).argmax(-1)]


def random_walk_labels(
    cams, boundary, keys, image_size, power=1.5, bg_threshold=0.25, radius=5, beta=10.0, exp_times=8
):
    """Pseudo-label map from stride-4 CAMs and a boundary map (spec §4.5 steps 2-7).

    Args:
        cams: (h, w, K) stride-4 CAMs of the image's present classes (K may be 0).
        boundary: (h, w) boundary probabilities.
        keys: the label value of each CAM channel, e.g. [3, 15].
        image_size: (H, W) of the image.
        power: the CAMs are walked as relu(cams) ** power (AMR: 1.5, IRN: 1).
        bg_threshold, radius, beta, exp_times: as in `walk_to_labels` and `random_walk`.

    Returns:
        (H, W) uint8 label map (0 background, else a key).

    Example:
    >>> import numpy as np
    >>> cams = np.zeros((8, 8, 1), "float32"); cams[2, 2] = 1.0
    >>> labels = random_walk_labels(cams, np.zeros((8, 8), "float32"), [5], (30, 32), radius=3)
    >>> labels.shape, int(labels[8, 8])
    ((30, 32), 5)
    """
    cams = ops.convert_to_tensor(cams, "float32")
    if cams.shape[-1] == 0:
        return walk_to_labels(cams, keys, image_size, bg_threshold)
    # relu: a fractional power of a negative number is NaN.
    propagated = random_walk(ops.power(ops.relu(cams), power), boundary, radius, beta, exp_times)
    return walk_to_labels(propagated, keys, image_size, bg_threshold)
