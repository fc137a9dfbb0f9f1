"""Losses shared by the WSSS methods, in keras.ops.

Label maps use 0 for background, c for class c and 255 for ignore; logits are NHWC.
"""

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
    batch = label_map.shape[0]
    flat = ops.reshape(ops.cast(label_map, "int32"), (batch, -1))
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
