"""Class activation maps: multi-scale + flip fusion and the thresholds that turn CAMs into labels.

Shapes are NHWC: CAMs are (B, H, W, C) over the C foreground classes; image-level labels are
(B, C) multi-hot; label maps use 0 for background, c + 1 for class c and 255 for ignore.
"""

from keras import ops

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
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
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
                cams = ops.maximum(cams[:batch], ops.flip(cams[batch:], axis=2))
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
