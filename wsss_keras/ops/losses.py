"""Losses shared by the WSSS methods, in keras.ops.

Label maps use 0 for background, c for class c and 255 for ignore; logits are NHWC.
"""

import numpy as np
from keras import ops

IGNORE_INDEX = 255


def multilabel_soft_margin_loss(labels, logits):
    """torch's multilabel_soft_margin_loss: binary cross-entropy with logits, mean over classes and batch."""
    labels = ops.cast(labels, logits.dtype)
    return ops.mean(ops.mean(labels * ops.softplus(-logits) + (1 - labels) * ops.softplus(logits), axis=-1))


def pixel_cross_entropy(logits, label_map, valid):
    """Per-pixel cross-entropy (B, H, W) of NHWC logits against a label map, 0 where not `valid`."""
    num_classes = logits.shape[-1]
    safe = ops.where(valid, label_map, 0)
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.sum(log_probs * ops.one_hot(safe, num_classes, dtype=logits.dtype), axis=-1)
    return ops.where(valid, -picked, 0.0)


def balanced_segmentation_loss(logits, label_map, guard_empty=True, ignore_index=IGNORE_INDEX):
    """ToCo's seg loss: 0.5 · (mean CE over background pixels + mean CE over foreground pixels).

    Each half is averaged over its own pixels, so a small foreground weighs as much as a large
    background. ToCo's code returns NaN when a batch has no background (or no foreground) pixel;
    with `guard_empty` (default) an empty half contributes 0 instead (SeCo's sum / (count + 1e-6)).

    Args:
        logits: (B, H, W, K) at the label map's size.
        label_map: (B, H, W) int, 255 = ignore.
    """
    label_map = ops.cast(label_map, "int32")
    labelled = label_map != ignore_index
    background = labelled & (label_map == 0)
    foreground = labelled & (label_map != 0)
    losses = pixel_cross_entropy(logits, label_map, labelled)
    halves = []
    for part in (background, foreground):
        count = ops.sum(ops.cast(part, logits.dtype))
        total = ops.sum(ops.where(part, losses, 0.0))
        halves.append(total / (count + 1e-6) if guard_empty else total / count)
    return 0.5 * (halves[0] + halves[1])


def label_affinity(label_map, ignore_index=IGNORE_INDEX):
    """Pairwise targets (B, P, P) from a (B, h, w) label map: 1 same label, 0 different,
    `ignore_index` where either pixel is ignored and on the diagonal."""
    flat = ops.reshape(ops.cast(label_map, "int32"), (-1, label_map.shape[1] * label_map.shape[2]))
    same = ops.cast(flat[:, :, None] == flat[:, None, :], "int32")
    ignored = (flat[:, :, None] == ignore_index) | (flat[:, None, :] == ignore_index)
    count = flat.shape[1]
    ignored = ignored | ops.eye(count, dtype="bool")[None]
    return ops.where(ignored, ignore_index, same)


def patch_token_contrast_loss(tokens, affinity):
    """ToCo's PTC loss on patch tokens (B, P, D) and `label_affinity` targets (B, P, P).

    With |cos| the absolute cosine similarity of token pairs, summed over the whole batch:
    0.5 · (1 − Σ_pos |cos| / (n_pos + 1)) + 0.5 · Σ_neg |cos| / (n_neg + 1).
    """
    normalised = tokens / ops.maximum(ops.norm(tokens, axis=-1, keepdims=True), 1e-8)
    similarity = ops.abs(ops.matmul(normalised, ops.transpose(normalised, (0, 2, 1))))
    positive = ops.cast(affinity == 1, similarity.dtype)
    negative = ops.cast(affinity == 0, similarity.dtype)
    attract = 1.0 - ops.sum(positive * similarity) / (ops.sum(positive) + 1.0)
    repel = ops.sum(negative * similarity) / (ops.sum(negative) + 1.0)
    return 0.5 * attract + 0.5 * repel


def contrastive_token_loss(teacher, student, positive, temperature=0.5):
    """ToCo's CTC loss (`CTCLoss_neg`) between projected class tokens of several views.

    For image b, teacher view i and student view j, z = t_i · s_j / temperature. Each positive
    student view j adds −log(e^z_ij / (e^z_ij + Σ_neg e^z_in + 1e-4)); one extra term
    −log(1 / (1 + Σ_neg e^z_in + 1e-4)) per teacher view comes from the reference's
    `for … else`. Per image the sum is divided by 2 (the reference's constant, for its two
    teacher views) and by the number of positives + 1e-4, then averaged over the batch.
    Written with log-sum-exp, so large similarities do not overflow where the reference's
    `exp` would.

    Args:
        teacher: (B, T, E) teacher projections (T = 2 global views in ToCo).
        student: (B, V, E) student projections of all V views (global views first).
        positive: (B, V) 1 for positive views, 0 for negative local crops.
        temperature: the softmax temperature (0.5 in ToCo).

    Returns:
        scalar loss.
    """
    positive = ops.cast(positive, student.dtype)
    logits = ops.matmul(teacher, ops.transpose(student, (0, 2, 1))) / temperature  # B, T, V
    negative = (1.0 - positive)[:, None, :]
    very_negative = -1e9
    # log(Σ_neg e^z), -1e9 where a batch item has no negative.
    log_negatives = ops.logsumexp(ops.where(negative > 0, logits, very_negative), axis=-1, keepdims=True)
    log_eps = ops.full_like(log_negatives, float(np.log(1e-4)))
    denominator = ops.logsumexp(
        ops.stack([logits, log_negatives + ops.zeros_like(logits), log_eps + ops.zeros_like(logits)], -1),
        axis=-1,
    )
    per_pair = (denominator - logits) * positive[:, None, :]
    extra = ops.logsumexp(ops.concatenate([ops.zeros_like(log_negatives), log_negatives, log_eps], -1), axis=-1)
    per_image = (ops.sum(per_pair, axis=(1, 2)) + ops.sum(extra, axis=1)) / 2.0
    per_image = per_image / (ops.sum(positive, axis=1) + 1e-4)
    return ops.mean(per_image)


def bilateral_affinity(images, sigma_rgb, sigma_xy):
    """Dense Gaussian bilateral weights (B, P, P) over the pixels of small (B, h, w, 3) images.

    exp(−|p − q|² / 2σ_xy² − |I_p − I_q|² / 2σ_rgb²), the kernel the reference's permutohedral
    filter approximates, computed exactly (P² entries, so only for small images).
    """
    height, width = images.shape[1], images.shape[2]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    position = np.stack([rows.ravel(), cols.ravel()], -1).astype("float32") / sigma_xy
    spatial = ((position[:, None, :] - position[None, :, :]) ** 2).sum(-1)
    colours = ops.reshape(ops.convert_to_tensor(images, "float32"), (-1, height * width, 3)) / sigma_rgb
    squared = ops.sum(colours**2, axis=-1)
    colour = squared[:, :, None] + squared[:, None, :] - 2.0 * ops.matmul(colours, ops.transpose(colours, (0, 2, 1)))
    return ops.exp(-0.5 * (ops.convert_to_tensor(spatial)[None] + ops.maximum(colour, 0.0)))


def dense_energy_loss(images, probs, roi, unlabelled, sigma_rgb=15.0, sigma_xy=100.0, scale=0.5, max_pixels=4096):
    """ToCo's dense-energy (bilateral CRF) regulariser, with a vectorised dense kernel.

    The reference (`DenseEnergyLoss`, from Tang et al.'s rloss) downsamples by `scale`, filters
    the soft segmentation with a permutohedral-lattice bilateral filter (a C++ extension), and
    returns E = −(1/B) Σ_k S_kᵀ (W S_k ⊙ Gate) with Gate = 1 − max_k S_k on labelled pixels, 1 on
    ignored ones, 0 outside the crop; its hand-written gradient is −2 (W S ⊙ Gate) / B on S.

    Here W is the exact Gaussian bilateral kernel over all pixel pairs (`bilateral_affinity`), so
    the image is downsampled further until it has at most `max_pixels` pixels, σ_xy follows the
    resolution, and the energy is scaled by the squared pixel-count ratio so its magnitude (a
    sum over pairs) matches the reference's resolution. The permutohedral filter is itself an
    approximation of this kernel; the coarser grid is the deviation. Value and gradient follow
    the reference's (the gradient treats the gate and W S as constants, as its backward does).

    Args:
        images: (B, H, W, 3) RGB in 0–255.
        probs: (B, H, W, K) softmax of the segmentation logits at the image size.
        roi: (B, H, W) 1 inside the crop box, 0 outside.
        unlabelled: (B, H, W) bool, pixels whose pseudo-label is ignore (255).
    """
    height, width = probs.shape[1], probs.shape[2]
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    factor = 1.0
    while size[0] * size[1] > max_pixels:
        size = (max(1, size[0] // 2), max(1, size[1] // 2))
        factor *= 2.0
    reference_pixels = int(height * scale) * int(width * scale)
    batch = ops.cast(ops.shape(probs)[0], "float32")
    images = ops.image.resize(ops.convert_to_tensor(images, "float32"), size, interpolation="nearest")
    probs = ops.image.resize(probs, size, interpolation="bilinear", antialias=False)
    roi = ops.image.resize(ops.cast(roi, "float32")[..., None], size, interpolation="nearest")
    unlabelled = ops.image.resize(ops.cast(unlabelled, "float32")[..., None], size, interpolation="nearest") > 0.5
    gate = ops.where(unlabelled, 1.0, roi - ops.max(probs, axis=-1, keepdims=True))
    gate = ops.stop_gradient(ops.maximum(gate, 0.0))
    masked = probs * roi
    count = size[0] * size[1]
    weights = bilateral_affinity(images, sigma_rgb, sigma_xy * scale / factor)
    flat = ops.reshape(masked, (-1, count, masked.shape[-1]))
    filtered = ops.matmul(weights, ops.stop_gradient(flat))
    filtered = ops.stop_gradient(ops.reshape(filtered, (-1, size[0], size[1], masked.shape[-1])) * gate)
    pair_scale = (reference_pixels / count) ** 2
    energy = -pair_scale * ops.sum(ops.stop_gradient(masked) * filtered) / batch
    # Straight-through term: value 0, gradient −2 (W S ⊙ Gate) / B on S, as the reference's backward.
    surrogate = -2.0 * pair_scale * ops.sum((masked - ops.stop_gradient(masked)) * filtered) / batch
    return energy + surrogate
