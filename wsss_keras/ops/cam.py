"""Class activation maps: multi-scale + flip fusion and the thresholds that turn CAMs into labels.

Shapes are NHWC: CAMs are (B, H, W, C) over the C foreground classes; image-level labels are
(B, C) multi-hot; label maps use 0 for background, c + 1 for class c and 255 for ignore.
"""

from keras import ops

from wsss_keras.ops.par import par_refine

IGNORE_INDEX = 255


def min_max_normalize(cams, eps=1e-5):
    """Per image and class: subtract the spatial min, divide by the spatial max + eps."""
    cams = ops.convert_to_tensor(cams)
    cams = cams - ops.min(cams, axis=(1, 2), keepdims=True)
    return cams / (ops.max(cams, axis=(1, 2), keepdims=True) + eps)


def resize_bilinear(tensor, size):
    """Bilinear resize without antialiasing (PyTorch's align_corners=False) of an NHWC tensor."""
    if tuple(tensor.shape[1:3]) == tuple(size):
        return tensor
    return ops.image.resize(tensor, size, interpolation="bilinear", antialias=False)


def multiscale_cams(cam_function, images, scales=(1.0, 0.5, 1.5), flip=True):
    """ToCo's online CAMs: for each scale, the CAM of the image and of its mirror (un-mirrored),
    fused by max and ReLU'd, summed over scales, then min-max normalised per image and class.

    Args:
        cam_function: callable images (B, h, w, 3) -> CAMs (B, h', w', C), or a tuple of such
            CAM tensors (e.g. final and auxiliary CAMs); each is fused the same way.
        images: (B, H, W, 3) normalised images.
        scales: input scales; each rescaled size is int(scale * H) x int(scale * W).
        flip: add the mirrored view.

    Returns:
        (B, H, W, C) CAMs in [0, 1) (a tuple if `cam_function` returns a tuple).
    """
    images = ops.convert_to_tensor(images)
    height, width = images.shape[1], images.shape[2]
    totals = None
    for scale in scales:
        size = (int(scale * height), int(scale * width))
        view = resize_bilinear(images, size)
        if flip:
            view = ops.concatenate([view, ops.flip(view, axis=2)], axis=0)
        outputs = cam_function(view)
        single = not isinstance(outputs, (tuple, list))
        outputs = (outputs,) if single else tuple(outputs)
        fused = []
        for cams in outputs:
            cams = resize_bilinear(cams, (height, width))
            if flip:
                original, mirrored = ops.split(cams, 2, axis=0)
                cams = ops.maximum(original, ops.flip(mirrored, axis=2))
            fused.append(ops.relu(cams))
        totals = fused if totals is None else [total + cams for total, cams in zip(totals, fused)]
    results = tuple(min_max_normalize(total) for total in totals)
    return results[0] if single else results


def crop_box_mask(crop_boxes, height, width):
    """(B, H, W) boolean mask of the real pixels given (y0, y1, x0, x1) boxes."""
    crop_boxes = ops.convert_to_tensor(crop_boxes, "int32")
    rows = ops.arange(height, dtype="int32")[None, :, None]
    cols = ops.arange(width, dtype="int32")[None, None, :]
    y0, y1, x0, x1 = (crop_boxes[:, i][:, None, None] for i in range(4))
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def strongest_present_class(cams, labels):
    """Per pixel, the largest CAM value among the classes in `labels` and its label (class + 1)."""
    cams = ops.convert_to_tensor(cams)
    valid = cams * ops.cast(labels, cams.dtype)[:, None, None, :]
    return ops.max(valid, axis=-1), ops.cast(ops.argmax(valid, axis=-1), "int32") + 1


def cams_to_label_map(cams, labels, background_threshold):
    """Label map from CAMs: the strongest present class where its CAM exceeds the threshold,
    else background (0). CAMs of classes absent from `labels` are zeroed first.
    """
    cams = ops.convert_to_tensor(cams)
    strongest, label_map = strongest_present_class(cams, labels)
    return ops.where(strongest > background_threshold, label_map, 0)


def cams_to_pseudo_labels(cams, labels, high=0.7, low=0.25, crop_boxes=None, ignore_index=IGNORE_INDEX):
    """ToCo's pseudo-labels with two background thresholds.

    Where the strongest present-class CAM value v is > `high`: that class; where v <= `low`:
    background; in between, and outside the crop box: `ignore_index`.
    """
    cams = ops.convert_to_tensor(cams)
    strongest, label_map = strongest_present_class(cams, labels)
    label_map = ops.where(strongest > high, label_map, ignore_index)
    label_map = ops.where(strongest <= low, 0, label_map)
    if crop_boxes is not None:
        inside = crop_box_mask(crop_boxes, cams.shape[1], cams.shape[2])
        label_map = ops.where(inside, label_map, ignore_index)
    return label_map


def refine_pseudo_labels(images, cams, labels, high=0.7, low=0.25, crop_boxes=None, down_scale=2,
                         ignore_index=IGNORE_INDEX, **par_options):
    """ToCo's PAR-refined pseudo-labels with two background scores (`refine_cams_with_bkg_v2`).

    Two score stacks, [`high` | CAMs] and [`low` | CAMs], are downsampled by `down_scale`,
    softmaxed over the background and the image's present classes, refined with PAR on the
    downsampled image, upsampled back and arg-maxed. Where the high-background label is a class,
    that class; where both labels are background, background; elsewhere (the high one says
    background, the low one a class) and outside the crop box, `ignore_index`.

    Args:
        images: (B, H, W, 3) RGB in [0, 1] (ToCo quantises to uint8 first; see
            `denormalize_unit`).
        cams: (B, H, W, C) CAMs in [0, 1] at the images' size.
        labels: (B, C) multi-hot image labels.
        high, low: the two background scores.
        crop_boxes: optional (B, 4) (y0, y1, x0, x1) boxes of real pixels.
        down_scale: PAR runs at (H // down_scale, W // down_scale).
        **par_options: passed to `par_refine` (dilations, num_iter, w1, w2).

    Returns:
        (B, H, W) int32 label map (0 background, c + 1 class c, `ignore_index`).
    """
    cams = ops.convert_to_tensor(cams, "float32")
    images = ops.convert_to_tensor(images, "float32")
    height, width = cams.shape[1], cams.shape[2]
    small = (height // down_scale, width // down_scale)
    small_images = resize_bilinear(images, small)
    small_cams = resize_bilinear(cams, small)
    present = ops.cast(labels, "float32")
    present = ops.concatenate([ops.ones_like(present[:, :1]), present], axis=1)
    present = present[:, None, None, :] > 0

    def refined_label(background):
        stack = ops.concatenate([ops.full_like(small_cams[..., :1], background), small_cams], axis=-1)
        # Absent classes take no part in the softmax (ToCo keeps only the present channels).
        probs = ops.softmax(ops.where(present, stack, -1e9), axis=-1)
        refined = resize_bilinear(par_refine(small_images, probs, **par_options), (height, width))
        return ops.cast(ops.argmax(ops.where(present, refined, -1e9), axis=-1), "int32")

    label_high, label_low = refined_label(high), refined_label(low)
    label_map = ops.where(label_high == 0, ignore_index, label_high)
    label_map = ops.where((label_high == 0) & (label_low == 0), 0, label_map)
    if crop_boxes is not None:
        label_map = ops.where(crop_box_mask(crop_boxes, height, width), label_map, ignore_index)
    return label_map


def denormalize_unit(images, mean, std, quantize=True):
    """Normalised images back to RGB in [0, 1]; `quantize` floors to 1/255 steps as ToCo's uint8 cast does."""
    images = ops.convert_to_tensor(images, "float32")
    rgb = images * ops.convert_to_tensor(std, "float32") + ops.convert_to_tensor(mean, "float32")
    rgb = ops.clip(rgb, 0.0, 1.0)
    return ops.floor(rgb * 255.0) / 255.0 if quantize else rgb
