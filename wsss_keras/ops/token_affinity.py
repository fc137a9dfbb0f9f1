"""Attention-affinity refinement of token CAMs (CLIP-ES / WeCLIP "CAA"; SSR's fused affinity).

Spec methods/ssr.md §2.6.1-2.6.2 (WeCLIP `clip/clip_tool.py: compute_trans_mat`,
`perform_single_voc_cam`; CLIP-ES `clip/utils.py: scoremap2bbox`):

1. `fuse_attention` averages patch-patch attention maps (the last 8 CLIP blocks; SSR then mixes
   CLIP and DINO 0.4 : 0.6).
2. `sinkhorn_transition` turns the mixed attention into a transition matrix: three rounds of
   column-then-row normalisation, symmetrise, square.
3. `box_token_mask` is the per-class box mask of the baseline: the bounding boxes of the
   8-connected components of the thresholded, uint8-quantised CAM, filled with the reference's
   clip-to-(size - 1) and exclusive-end quirk.
4. `propagate_cams` spreads each class's CAM with the transition, gathering only from the
   tokens the class's mask lets in (column masking).

Layout: token CAMs are (B, h, w, C) or (B, N, C) with N = h·w in row-major order; attention
and transition matrices are (B, N, N) with row i the query token i. Everything is keras.ops and
runs under jit / tf.function with static shapes.
"""

import numpy as np
from keras import ops

# Guards the Sinkhorn divisions: an all-zero column (or row) stays zero instead of NaN. Real
# attention sums are O(1), where this changes nothing in float32.
SINKHORN_EPS = 1e-8

# Below any coordinate: marks "not on" pixels in the component-extent propagation.
_FAR = -1e6


def _as_tokens(cams):
    """(B, h, w, C) or (B, N, C) -> ((B, N, C) tensor, the original shape or None)."""
    cams = ops.convert_to_tensor(cams)
    if len(cams.shape) == 4:
        shape = ops.shape(cams)
        return ops.reshape(cams, (shape[0], shape[1] * shape[2], shape[3])), shape
    if len(cams.shape) == 3:
        return cams, None
    raise ValueError(f"token CAMs must be (B, h, w, C) or (B, N, C), got shape {tuple(cams.shape)}.")


def sinkhorn_transition(attention, iterations=3, symmetrize=True, square=True):
    """Transition matrix from non-negative attention (WeCLIP's `compute_trans_mat`).

    Args:
        attention: (B, N, N) non-negative, row i = query token i.
        iterations: rounds of {divide each column by its sum; then each row by its sum}
            (the reference runs 3).
        symmetrize: then T <- (T + T^T) / 2.
        square: then T <- T @ T.

    Returns:
        (B, N, N) transition matrix. Divisions are by max(sum, 1e-8), so an all-zero column
        or row stays zero rather than giving NaN.

    Example:
    >>> import numpy as np
    >>> attention = np.array([[[2.0, 1.0], [1.0, 2.0]]], "float32")
    >>> t = np.asarray(sinkhorn_transition(attention, symmetrize=False, square=False))
    >>> np.round(t.astype("float64"), 4).tolist()
    [[[0.6667, 0.3333], [0.3333, 0.6667]]]
    """
    if int(iterations) < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}.")
    transition = ops.convert_to_tensor(attention)
    if len(transition.shape) != 3:
        raise ValueError(f"attention must be (B, N, N), got shape {tuple(transition.shape)}.")
    for _ in range(int(iterations)):
        transition = transition / ops.maximum(ops.sum(transition, axis=1, keepdims=True), SINKHORN_EPS)
        transition = transition / ops.maximum(ops.sum(transition, axis=2, keepdims=True), SINKHORN_EPS)
    if symmetrize:
        transition = (transition + ops.transpose(transition, (0, 2, 1))) / 2
    if square:
        transition = ops.matmul(transition, transition)
    return transition


def fuse_attention(attention_maps, weights=None):
    """Weighted mean of attention maps (last-k-layer averaging; SSR's CLIP : DINO mixing).

    Args:
        attention_maps: a list of (B, N, N) tensors.
        weights: one non-negative Python number per map (normalised to sum 1 here);
            None means equal weights.

    Returns:
        (B, N, N): sum_k weights[k] / sum(weights) * attention_maps[k].

    Example:
    >>> import numpy as np
    >>> a, b = np.zeros((1, 2, 2), "float32"), np.ones((1, 2, 2), "float32")
    >>> round(float(np.asarray(fuse_attention([a, b], [0.4, 0.6]))[0, 0, 0]), 4)
    0.6
    """
    maps = list(attention_maps)
    if not maps:
        raise ValueError("fuse_attention needs at least one attention map, got an empty list.")
    weights = [1.0] * len(maps) if weights is None else [float(weight) for weight in weights]
    if len(weights) != len(maps):
        raise ValueError(f"fuse_attention got {len(maps)} attention maps but {len(weights)} weights; give one weight per map.")
    if any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise ValueError(f"attention weights must be non-negative and not all zero, got {weights}.")
    total = sum(weights)
    fused = None
    for weight, attention in zip(weights, maps):
        term = ops.convert_to_tensor(attention) * (weight / total)
        fused = term if fused is None else fused + term
    return fused


def _max3(values, axis):
    """Max over a window of 3 along `axis` (1 or 2 of a (M, h, w, K) tensor), padded with _FAR."""
    pad = [[0, 0]] * 4
    pad[axis] = [1, 1]
    padded = ops.pad(values, pad, constant_values=_FAR)
    size = values.shape[axis]
    slices = [
        padded[:, start : start + size] if axis == 1 else padded[:, :, start : start + size] for start in range(3)
    ]
    return ops.maximum(ops.maximum(slices[0], slices[1]), slices[2])


def box_token_mask(cams, threshold=0.4, iterations=None):
    """CLIP-ES's box mask (`scoremap2bbox` with multi-contour evaluation, then box filling),
    per image and class, in keras.ops.

    Per (image, class): q = floor(cam · 255) (the reference's uint8 cast; values are clipped
    to [0, 255] first), on = q > int(threshold · max(q)) (cv2 THRESH_BINARY is strict); every
    8-connected component of `on` gives the box x0 = min col, y0 = min row,
    x1 = min(max col + 1, w - 1), y1 = min(max row + 1, h - 1), and the mask is the union of
    [y0:y1, x0:x1] (exclusive ends, so the last row and column are never inside). RETR_TREE's
    hole contours lie inside their component's box and add nothing. No component: empty mask.

    Components are found without labels: every "on" pixel starts with its own extent
    (row, row, col, col) and takes the min/max over its on-neighbours (3 x 3) `iterations`
    times, which reaches the whole component's extent once `iterations` >= the component's
    geodesic diameter (h·w - 1 always suffices: the default). Filling the union of boxes is a
    (h x N) @ (N x w) product of per-pixel row and column indicators.

    Args:
        cams: (B, h, w, C) token CAMs in [0, 1] (min-max normalised).
        threshold: Python float in [0, 1]: 0.4 (VOC), 0.7 (COCO).
        iterations: propagation steps (static int); default h·w - 1.

    Returns:
        (B, h, w, C) float32 mask of 0 / 1.

    Example:
    >>> import numpy as np
    >>> cams = np.zeros((1, 5, 5, 1), "float32"); cams[0, 1:3, 1:3, 0] = 1.0
    >>> np.asarray(box_token_mask(cams))[0, :, :, 0].astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"box_token_mask's threshold must be a Python number (it is applied to uint8 levels), got {threshold!r}.")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"box_token_mask's threshold must lie in [0, 1] (0.4 VOC, 0.7 COCO), got {threshold}.")
    cams = ops.convert_to_tensor(cams)
    if len(cams.shape) != 4:
        raise ValueError(f"box_token_mask needs token CAMs shaped (B, h, w, C), got shape {tuple(cams.shape)}.")
    height, width = cams.shape[1], cams.shape[2]
    if height is None or width is None:
        raise ValueError("box_token_mask needs a static token grid (h, w); build the function per input shape.")
    steps = height * width - 1 if iterations is None else int(iterations)
    batch, channels = ops.shape(cams)[0], ops.shape(cams)[3]

    # One (h, w) map per (image, class): (M, h, w) with M = B·C.
    maps = ops.reshape(ops.transpose(ops.cast(cams, "float32"), (0, 3, 1, 2)), (-1, height, width))
    levels = ops.floor(ops.clip(maps * 255.0, 0.0, 255.0))
    # int(threshold · max) in float64 for each of the 256 possible maxima, looked up by the
    # max: exactly the reference's Python arithmetic (float32 gives 63 for int(0.7 · 90) = 62).
    table = ops.convert_to_tensor(np.array([int(float(threshold) * level) for level in range(256)], np.float32))
    peaks = ops.cast(ops.max(levels, axis=(1, 2)), "int32")
    cutoff = ops.take(table, peaks, axis=0)[:, None, None]
    on = ops.cast(levels > cutoff, "float32")[..., None]

    rows = ops.cast(ops.arange(height), "float32")[:, None] * ops.ones((1, width))
    cols = ops.ones((height, 1)) * ops.cast(ops.arange(width), "float32")[None, :]
    # Extents as maxima: (-row, row, -col, col); off pixels hold _FAR and never win.
    start = ops.stack([-rows, rows, -cols, cols], axis=-1)[None]
    extents = ops.where(on > 0, start, _FAR)

    def step(_, values):
        grown = _max3(_max3(values, 1), 2)
        return ops.where(on > 0, grown, _FAR)

    if steps > 0:
        extents = ops.fori_loop(0, steps, step, extents)
    y0 = -extents[..., 0]
    y1 = ops.minimum(extents[..., 1] + 1, height - 1)
    x0 = -extents[..., 2]
    x1 = ops.minimum(extents[..., 3] + 1, width - 1)

    def flat(tensor):
        return ops.reshape(tensor, (-1, height * width, 1))

    is_on = flat(on[..., 0])
    row_index = ops.cast(ops.arange(height), "float32")[None, None, :]
    col_index = ops.cast(ops.arange(width), "float32")[None, None, :]
    # Pixel i's component box covers row r when y0_i <= r < y1_i (and likewise columns).
    row_in = ops.cast((row_index >= flat(y0)) & (row_index < flat(y1)), "float32") * is_on
    col_in = ops.cast((col_index >= flat(x0)) & (col_index < flat(x1)), "float32")
    covered = ops.matmul(ops.transpose(row_in, (0, 2, 1)), col_in)
    mask = ops.cast(covered > 0, "float32")
    return ops.transpose(ops.reshape(mask, (batch, channels, height, width)), (0, 2, 3, 1))


def propagate_cams(transition, cams, token_mask):
    """Spread each class's CAM with the transition, gathering only from masked-in tokens.

    result[b, i, c] = sum_j T[b, i, j] · mask[b, j, c] · cam[b, j, c]: the reference's
    (T ⊙ 1·vec(mask)^T) · vec(cam), i.e. the mask zeroes the transition's columns.

    Args:
        transition: (B, N, N).
        cams: (B, N, C) or (B, h, w, C) with N = h·w (row-major).
        token_mask: the same shape as `cams`, 0 / 1 (or soft weights).

    Returns:
        The refined CAMs in the layout of `cams`.

    Example:
    >>> import numpy as np
    >>> t = np.array([[[0.5, 0.5], [0.0, 1.0]]], "float32")
    >>> cams = np.array([[[1.0], [3.0]]], "float32"); mask = np.array([[[1.0], [0.0]]], "float32")
    >>> np.asarray(propagate_cams(t, cams, mask))[0, :, 0].tolist()
    [0.5, 0.0]
    """
    tokens, shape = _as_tokens(cams)
    mask, mask_shape = _as_tokens(token_mask)
    if tuple(tokens.shape) != tuple(mask.shape) or (shape is None) != (mask_shape is None):
        raise ValueError(
            f"propagate_cams needs token_mask shaped like cams, got {tuple(ops.convert_to_tensor(token_mask).shape)} "
            f"for cams {tuple(ops.convert_to_tensor(cams).shape)}."
        )
    refined = ops.matmul(ops.convert_to_tensor(transition), tokens * ops.cast(mask, tokens.dtype))
    return refined if shape is None else ops.reshape(refined, shape)
