"""PAR: pixel-adaptive refinement of CAMs by colour and position affinities (ToCo, WeCLIP).

Each pixel looks at 8 neighbours at each dilation (default 1, 2, 4, 8, 12, 24: 48 in all).
Its affinity to neighbour k mixes
* colour: softmax_k of -(|I_k - I| / (std_k I + 1e-8) / w1)^2, averaged over RGB channels
  (std over the 48 neighbours, unbiased as torch.std is), and
* position: w2 * softmax_k of -(d_k / (std_k d + 1e-8) / w1)^2, with d_k the neighbour's
  distance (d on the axes, d·√2 on diagonals);
then the masks are replaced `num_iter` times by the affinity-weighted sum of their neighbours.
Borders are replicated. The affinities sum to 1 + w2 per pixel, as in the reference, so the
masks grow by (1 + w2)^num_iter; callers take an argmax, which that scale does not change.
"""

import numpy as np
from keras import ops

from wsss_keras.ops.padding import replicate_pad

DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
# The 8 neighbour offsets (dy, dx) of a 3x3 window, row by row, centre excluded.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def shifted_views(tensor, dilations):
    """The (B, H, W, C) views of each pixel's neighbours, 8 per dilation, borders replicated.

    One replicate pad by the largest dilation serves every dilation: reading a clamped index is
    the same whatever the pad width, as long as it covers the offset.
    """
    height, width = tensor.shape[1], tensor.shape[2]
    pad = max(dilations)
    padded = replicate_pad(tensor, pad)
    views = []
    for dilation in dilations:
        for dy, dx in NEIGHBOUR_OFFSETS:
            top, left = pad + dy * dilation, pad + dx * dilation
            views.append(padded[:, top : top + height, left : left + width, :])
    return views


def dilated_neighbours(tensor, dilations):
    """(B, H, W, C) -> (B, H, W, C, 8 * len(dilations)): each pixel's neighbours, borders replicated."""
    return ops.stack(shifted_views(tensor, dilations), axis=-1)


def position_affinity(dilations, w1=0.3):
    """The softmax of the position term over the neighbours (a constant vector)."""
    distances = np.array(
        [dilation * (np.sqrt(2.0) if dy and dx else 1.0) for dilation in dilations for dy, dx in NEIGHBOUR_OFFSETS]
    )
    logits = -((distances / (distances.std(ddof=1) + 1e-8) / w1) ** 2)
    weights = np.exp(logits - logits.max())
    return (weights / weights.sum()).astype("float32")


def par_affinity(images, dilations=DEFAULT_DILATIONS, w1=0.3, w2=0.01):
    """Affinities (B, H, W, K) of each pixel to its K = 8 * len(dilations) neighbours."""
    images = ops.convert_to_tensor(images, "float32")
    neighbours = dilated_neighbours(images, dilations)  # B, H, W, 3, K
    count = neighbours.shape[-1]
    # torch.std is unbiased (ddof=1); keras.ops.std is not.
    spread = ops.std(neighbours, axis=-1, keepdims=True) * np.sqrt(count / (count - 1.0))
    colour = -((ops.abs(neighbours - images[..., None]) / (spread + 1e-8) / w1) ** 2)
    colour = ops.softmax(ops.mean(colour, axis=3), axis=-1)
    return colour + w2 * position_affinity(dilations, w1)


def par_refine(images, masks, dilations=DEFAULT_DILATIONS, num_iter=10, w1=0.3, w2=0.01):
    """Refine score maps with PAR.

    Args:
        images: (B, H, W, 3) float images (ToCo feeds RGB in [0, 1]; any scale works, the
            colour term is normalised by the local spread).
        masks: (B, H, W, K) score maps at the images' size (resize them first).
        dilations, num_iter, w1, w2: the reference's defaults.

    Returns:
        (B, H, W, K) refined maps.

    Example:
    >>> import numpy as np
    >>> images = np.random.rand(1, 16, 16, 3).astype("float32")
    >>> masks = np.random.rand(1, 16, 16, 2).astype("float32")
    >>> par_refine(images, masks, num_iter=2).shape
    (1, 16, 16, 2)
    """
    affinity = par_affinity(images, dilations, w1, w2)  # B, H, W, K
    weights = [affinity[..., k : k + 1] for k in range(affinity.shape[-1])]
    masks = ops.convert_to_tensor(masks, "float32")
    for _ in range(num_iter):
        # Accumulate neighbour by neighbour rather than stacking all K views: same sum, a
        # fraction of the memory traffic.
        views = shifted_views(masks, dilations)
        refined = views[0] * weights[0]
        for view, weight in zip(views[1:], weights[1:]):
            refined = refined + view * weight
        masks = refined
    return masks
