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
  and squares it; here the sparse T is applied step by step through shifted slices (each pixel
  has 2 |D(r)| + 1 neighbours), which gives the same product and fits a 512 x 512 image's
  128 x 128 grid in a few MB.

Shapes: maps are (B, h, w); affinities and pair masks (B, D, h', w') with D the directions in
`path_directions` order; CAMs for the walk are (h, w, K), channels last.
"""

import functools

import numpy as np
from keras import ops

from wsss_keras.ops.cam import resize_bilinear

IGNORE_INDEX = 255


@functools.lru_cache(maxsize=None)
def path_directions(radius):
    """The directions (dy, dx) of radius `radius`: (0, x) for 1 <= x < r, then rows y = 1 .. r-1
    with |x| < r and x² + y² < r², x ascending."""
    radius = int(radius)
    directions = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        directions += [(y, x) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius]
    return tuple(directions)


@functools.lru_cache(maxsize=None)
def direction_path(direction):
    """The integer points from `direction` back to (0, 0) whose squared distance to the line
    through both is below 1, by decreasing L1 norm (the first is the direction itself)."""
    dy, dx = (int(v) for v in direction)
    length2 = dy * dy + dx * dx
    points = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (y * dx - x * dy) ** 2 < length2
    ]
    return tuple(sorted(points, key=lambda p: (-(abs(p[0]) + abs(p[1])), p)))


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
    cache, affinities = {}, []
    for direction in directions:
        largest = None
        for point in direction_path(direction):
            if point not in cache:
                cache[point] = _shifted(boundary, point, origin, size)
            largest = cache[point] if largest is None else ops.maximum(largest, cache[point])
        affinities.append(1.0 - largest)
    return ops.stack(affinities, axis=1)


def boundary_to_affinity(boundary, radius):
    """Affinities of every training source and direction from boundary probabilities.

    Args:
        boundary: (B, h, w) boundary probabilities in [0, 1].
        radius: neighbourhood radius (IRN trains with 10).

    Returns:
        (B, D, h - radius + 1, w - 2 (radius - 1)) affinities, D = len(path_directions(radius)).

    Example:
    >>> import numpy as np
    >>> boundary_to_affinity(np.zeros((1, 8, 8), "float32"), 3).shape
    (1, 8, 6, 4)
    """
    boundary = ops.convert_to_tensor(boundary, "float32")
    size = _source_size(boundary.shape[1], boundary.shape[2], radius)
    return _path_affinities(boundary, path_directions(radius), (0, radius - 1), size)


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
    >>> bg, fg, neg = pair_labels(np.zeros((1, 6, 6), "int32"), 2)
    >>> float(bg.sum()), float(fg.sum()), float(neg.sum())
    (100.0, 0.0, 0.0)
    """
    labels = ops.cast(ops.convert_to_tensor(label_maps), "int32")
    size = _source_size(labels.shape[1], labels.shape[2], radius)
    origin = (0, radius - 1)
    valid = (labels >= 0) & (labels < IGNORE_INDEX)
    source, source_valid = _shifted(labels, (0, 0), origin, size), _shifted(valid, (0, 0), origin, size)
    bg_pos, fg_pos, neg = [], [], []
    for direction in path_directions(radius):
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
    """IRN's affinity loss: (L_pos + L_neg) / 2, L_pos the mean of the background- and
    foreground-positive terms -log(a), L_neg the term -log(1 - a) on negative pairs.

    Each term is a masked mean sum(mask · loss) / (sum(mask) + 1e-5) over the batch.
    """
    affinity = ops.cast(affinity, "float32")
    positive = -ops.log(affinity + eps)
    pos = 0.5 * _masked_mean(positive, bg_pos) + 0.5 * _masked_mean(positive, fg_pos)
    negative = _masked_mean(-ops.log(1.0 + eps - affinity), neg)
    return 0.5 * (pos + negative)


def walk_weights(boundary, radius=5, beta=10.0):
    """The random walk's sparse transition weights.

    Args:
        boundary: (h, w) boundary probabilities.

    Returns:
        (offsets, weights): the 2 |D(r)| + 1 neighbour offsets (self first, then each direction
        and its opposite) and a (h, w, len(offsets)) tensor: weights[j, o] = A^beta between pixel
        j and its neighbour j + offsets[o], divided by the sum over j's neighbours (the column
        normalisation of T). Neighbours outside the image get 0: the map is padded with 1.0,
        a boundary on every path that leaves it (IRN pads it with 1.0 too).
    """
    boundary = ops.convert_to_tensor(boundary, "float32")
    height, width = boundary.shape
    padded = ops.pad(boundary[None], ((0, 0), (radius, radius), (radius, radius)), constant_values=1.0)
    directions = path_directions(radius)
    # The pair (j, j + d) starts at j; the pair (j - d, j) starts at j - d: both are paths of d.
    forward = _path_affinities(padded, directions, (radius, radius), (height, width))[0]
    backward = [
        _path_affinities(padded, [d], (radius - d[0], radius - d[1]), (height, width))[0, 0] for d in directions
    ]
    powered = ops.concatenate([ops.ones((1, height, width)), forward, ops.stack(backward)], axis=0) ** beta
    offsets = ((0, 0),) + directions + tuple((-dy, -dx) for dy, dx in directions)
    weights = ops.transpose(powered, (1, 2, 0))
    return offsets, weights / ops.sum(weights, axis=-1, keepdims=True)


def random_walk(cams, boundary, radius=5, beta=10.0, exp_times=8):
    """IRN's random walk: `(cams ⊙ (1 - boundary))` as row vectors times T^(2^exp_times).

    Args:
        cams: (h, w, K) maps to propagate (IRN: stride-4 CAMs, AMR: raised to 1.5).
        boundary: (h, w) boundary probabilities of the same grid.
        radius: neighbourhood of the affinities (5).
        beta: power of the affinities (10).
        exp_times: the walk makes 2**exp_times steps (8: 256 steps).

    Returns:
        (h, w, K) propagated maps.

    Example:
    >>> import numpy as np
    >>> random_walk(np.ones((6, 7, 2), "float32"), np.zeros((6, 7), "float32"), radius=3).shape
    (6, 7, 2)
    """
    cams = ops.convert_to_tensor(cams, "float32")
    boundary = ops.convert_to_tensor(boundary, "float32")
    height, width = boundary.shape
    offsets, weights = walk_weights(boundary, radius, beta)
    weights = weights[..., None]

    def step(_, values):
        padded = ops.pad(values, ((radius, radius), (radius, radius), (0, 0)))
        total = 0.0
        for index, (dy, dx) in enumerate(offsets):
            neighbour = padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
            total = total + weights[:, :, index] * neighbour
        return total

    values = cams * (1.0 - boundary)[..., None]
    return ops.fori_loop(0, 2 ** int(exp_times), step, values)


def walk_to_labels(propagated, keys, image_size, bg_threshold=0.25):
    """Label map from random-walk output: x4 bilinear up, crop, global max-normalise, background
    plane, argmax, class keys (IRN's make_sem_seg_labels).

    Args:
        propagated: (h, w, K) output of `random_walk` on a stride-4 grid.
        keys: the label of each of the K channels (1-based classes).
        image_size: (H, W) of the image.
        bg_threshold: the constant background score (0.25).

    Returns:
        (H, W) uint8 label map.
    """
    height, width = (int(v) for v in image_size)
    keys = np.concatenate([[0], np.asarray(keys, np.int64).ravel()]).astype(np.uint8)
    if keys.size == 1:
        return np.zeros((height, width), np.uint8)
    propagated = ops.convert_to_tensor(propagated, "float32")
    grid_h, grid_w = propagated.shape[0], propagated.shape[1]
    upsampled = ops.convert_to_numpy(resize_bilinear(propagated[None], (4 * grid_h, 4 * grid_w)))[0]
    upsampled = upsampled[:height, :width]
    upsampled = upsampled / (upsampled.max() + 1e-5)
    background = np.full((height, width, 1), bg_threshold, np.float32)
    return keys[np.concatenate([background, upsampled], axis=-1).argmax(-1)]


def random_walk_labels(cams, boundary, keys, image_size, power=1.5, bg_threshold=0.25, radius=5, beta=10.0, exp_times=8):
    """Pseudo-label map (H, W) uint8 from stride-4 CAMs and a boundary map: the walk on
    cams**power, then `walk_to_labels`."""
    cams = ops.convert_to_tensor(cams, "float32")
    if cams.shape[-1] == 0:
        return walk_to_labels(cams, keys, image_size, bg_threshold)
    propagated = random_walk(ops.power(ops.relu(cams), power), boundary, radius, beta, exp_times)
    return walk_to_labels(propagated, keys, image_size, bg_threshold)
