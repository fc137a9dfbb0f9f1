"""DRS and activation self-modulation: the feature suppression of SSC's CAM network and the
target of its ASM loss."""

from keras import ops

from wsss_keras.ops.superpixels import superpixel_average


def drs(features, delta=0.55, relu=False):
    """Discriminative region suppression: min(x, δ · max over (h, w) of x), per image and channel.

    `relu=True` applies ReLU first (SSC's layer4 bottlenecks); `relu=False` clips the raw
    tensor (its stage-2 placement). On a ReLU output the two agree.

    Example:
    >>> import numpy as np
    >>> x = np.array([[[[-2.0], [1.0]], [[4.0], [2.0]]]], "float32")   # (1, 2, 2, 1)
    >>> np.asarray(drs(x, 0.5))[0, ..., 0].tolist(), np.asarray(drs(x, 0.5, relu=True))[0, ..., 0].tolist()
    ([[-2.0, 1.0], [2.0, 2.0]], [[0.0, 1.0], [2.0, 2.0]])
    """
    if relu:
        features = ops.relu(features)
    return ops.minimum(features, delta * ops.max(features, axis=(1, 2), keepdims=True))


def max_normalize(maps):
    """SSC's `mx_norm`: ReLU, then divide each (image, class) map by its spatial max + 1e-5."""
    maps = ops.relu(maps)
    return maps / (ops.max(maps, axis=(1, 2), keepdims=True) + 1e-5)


def binary_erosion(mask, size):
    """Erosion of a 0/1 (B, H, W, C) mask by a size x size square, as OpenCV's `cv2.erode`
    with its defaults: the anchor at the kernel's centre (offsets -size//2 .. size-1-size//2)
    and the border counting as set, so image edges do not erode."""
    if size <= 1:
        return mask
    before, after = size // 2, size - 1 - size // 2
    unset = ops.pad(1.0 - mask, [[0, 0], [before, after], [before, after], [0, 0]])
    return 1.0 - ops.max_pool(unset, pool_size=size, strides=1, padding="valid")


def self_modulation_target(masked_maps, segment_ids, num_segments, threshold=0.3, erosion_size=8):
    """ASM's normalised CAM O and its target T (spec §2.5 steps 3-7).

    Args:
        masked_maps: (B, h, w, C) CAM logits with absent classes zeroed (M = P' ⊙ y).
        segment_ids: (B, h, w) superpixel ids in [0, num_segments).
        threshold, erosion_size: the reliable part is erode(sg(O) > threshold).

    Returns:
        (O, T): O = max_normalize(M), differentiable; T = max(sg(max_normalize(superpixel
        average of M)), sg(O) ⊙ reliable), constant.
    """
    normalized = max_normalize(masked_maps)
    averaged = ops.stop_gradient(max_normalize(superpixel_average(masked_maps, segment_ids, num_segments)))
    fixed = ops.stop_gradient(normalized)
    reliable = binary_erosion(ops.cast(fixed > threshold, fixed.dtype), erosion_size)
    return normalized, ops.stop_gradient(ops.maximum(averaged, fixed * reliable))
