"""ToCo's local crops for class token contrast: cut around the CAMs' uncertain regions."""

import keras
from keras import ops

from wsss_keras.ops.cam import strongest_present_class


def uncertainty_roi(cams, labels, high, low):
    """ToCo's ROI for local crops: 0 where the strongest present-class CAM ≤ low, 2 where ≥ high, else 1."""
    strongest, _ = strongest_present_class(cams, labels)
    roi = ops.where(strongest <= low, 0.0, 1.0)
    return ops.where(strongest >= high, 2.0, roi)


def gather_square_crops(images, centres, size):
    """Square `size` crops of (B, H, W, C) images centred at (B, n, 2) integer (row, col) centres.

    Centres must lie in [size // 2, H − size + size // 2] so that every crop is inside.
    Returns (B, n, size, size, C).
    """
    images, centres = ops.convert_to_tensor(images), ops.convert_to_tensor(centres, "int32")
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    count = centres.shape[1]
    offsets = ops.arange(size, dtype="int32") - size // 2
    rows = centres[..., 0:1] + offsets[None, None, :]  # B, n, s
    cols = centres[..., 1:2] + offsets[None, None, :]
    flat_index = rows[:, :, :, None] * width + cols[:, :, None, :]  # B, n, s, s
    flat_index = ops.tile(ops.reshape(flat_index, (-1, count * size * size, 1)), (1, 1, channels))
    pixels = ops.take_along_axis(ops.reshape(images, (-1, height * width, channels)), flat_index, axis=1)
    return ops.reshape(pixels, (-1, count, size, size, channels))


def sample_local_crops(images, roi, count, size, negative_ratio, seed):
    """ToCo's `crop_from_roi_neg`: `count` crops centred at distinct random pixels whose ROI is
    ≤ 1 (uncertain or background), chosen among the pixels at least size/2 from the border (any
    such pixel when fewer than `count` qualify); a crop is negative when its mean ROI ≤ `negative_ratio`.

    Returns:
        crops (B, count, size, size, C) and positive flags (B, count) float32.
    """
    roi = ops.convert_to_tensor(roi, "float32")
    height, width = roi.shape[1], roi.shape[2]
    margin = size // 2
    rows = ops.arange(height)[None, :, None]
    cols = ops.arange(width)[None, None, :]
    inner = (rows >= margin) & (rows < height - margin) & (cols >= margin) & (cols < width - margin)
    wanted = inner & (roi <= 1.0)
    enough = ops.sum(ops.cast(wanted, "int32"), axis=(1, 2), keepdims=True) >= count
    allowed = ops.reshape(ops.where(enough, wanted, inner), (-1, height * width))
    # Distinct uniform picks: top-k of Gumbel noise over the allowed pixels.
    noise = -ops.log(-ops.log(keras.random.uniform((ops.shape(roi)[0], height * width), 1e-6, 1.0 - 1e-6, seed=seed)))
    _, picks = ops.top_k(ops.where(allowed, noise, -1e9), count)
    centres = ops.stack([picks // width, picks % width], axis=-1)
    crops = gather_square_crops(images, centres, size)
    roi_crops = gather_square_crops(roi[..., None], centres, size)
    positive = ops.mean(roi_crops, axis=(2, 3, 4)) > negative_ratio
    return crops, ops.cast(positive, "float32")
