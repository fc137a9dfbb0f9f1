"""`wsss predict`: segmentation label maps (and overlays) from a model's segmentation head.

ToCo's protocol (tools/infer_seg_voc.py): at the original resolution, per scale the logits of
the image plus the un-mirrored logits of its mirror (summed), bilinear to the image size, the
maximum over scales, then the argmax. ToCo uses scales (1.0, 1.25, 1.5) with flips.

Other references merge differently (`flip_merge`, `scale_merge`): ToCo's COCO script takes the
maximum of an image's and its mirror's logits and sums the scales; WeCLIP's test first resizes
the image to a long side of 512 (`resize_long`) and averages both, its scales merged at the
1.0 view's logit size where this merges at the image's (bilinear resizing is linear, so the two
differ only by the interpolation of an interpolation).

Optionally a dense CRF refines the softmax of the fused logits before the argmax (`crf`:
"toco", ToCo's "MS+CRF" settings; "deeplab", deeplab-pytorch's, which the IRN-pipeline
papers use after DeepLab-v2; "weclip", the settings of WeCLIP's test script, where it is
commented out; needs the `crf` extra).
"""

import os

import numpy as np

from wsss_keras.data.imageio import read_image, voc_palette, write_image, write_label_map
from wsss_keras.errors import DataError, WSSSError
from wsss_keras.pipelines.cams import check_class_count, check_scales, run_per_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
OVERLAY_FOLDER = "overlays"


class ImageFolder:
    """The .jpg/.jpeg/.png images of a folder (not its subfolders), named by file stem."""

    def __init__(self, folder):
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: image folder not found.")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not files:
            raise DataError(f"{folder}: no .jpg or .png images in this folder.")
        self.names = [os.path.splitext(f)[0] for f in files]
        duplicates = sorted({name for name in self.names if self.names.count(name) > 1})
        if duplicates:
            raise DataError(f"{folder}: several images are named {duplicates[0]!r} (different extensions); rename one so outputs do not collide.")
        self.image_paths = [os.path.join(folder, f) for f in files]
        self.description = f"image folder {folder}"

    def __len__(self):
        return len(self.names)

    def load_image(self, index):
        return read_image(self.image_paths[index])


def overlay_image(image, label_map, alpha=0.5, palette=None):
    """The image blended with the palette colours of `label_map` (weight `alpha` on the colours)."""
    palette = voc_palette() if palette is None else np.asarray(palette, np.uint8)
    colours = palette[label_map].astype(np.float32)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours + 0.5, 0, 255).astype(np.uint8)


def segment_image(model, image, scales=(1.0,), flip=False, runner=None, resize_long=None):
    """Fused segmentation logits (H, W, C + 1) of one uint8 RGB image, ToCo's protocol by
    default (`wsss_keras.pipelines.inference.MultiScaleSegmentation`; pass one as `runner` to
    reuse its compiled function across images, and to merge views otherwise).

    Args:
        resize_long: first resize the image bilinearly so its long side has this many pixels
            (WeCLIP: 512), and the logits back to the image's size at the end; None: as it is.
    """
    from wsss_keras.data.transforms import normalize
    from wsss_keras.pipelines.inference import MultiScaleSegmentation

    runner = runner or MultiScaleSegmentation(model, scales, flip)
    height, width = image.shape[:2]
    inputs = normalize(image, model.image_mean, model.image_std)[None]
    if resize_long:
        ratio = resize_long / max(height, width)
        inputs = _resize(inputs, (int(height * ratio), int(width * ratio)))
    logits = np.asarray(runner.predict_on_batch(inputs))
    if resize_long:
        logits = _resize(logits, (height, width))
    return logits[0]


def _resize(batch, size):
    """Bilinear resize of a (1, h, w, C) float array to `size`, half-pixel centres (PyTorch's
    align_corners=False, as the references resize)."""
    import cv2

    if tuple(batch.shape[1:3]) == tuple(size):
        return batch
    channels = [cv2.resize(np.ascontiguousarray(batch[0, ..., c]), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                for c in range(batch.shape[-1])]
    return np.stack(channels, axis=-1)[None].astype(np.float32)


def predict_folder(model, images, out_dir, scales=(1.0,), flip=False, overlay=True, progress=None, overwrite=False,
                   model_name="the model", crf=None, flip_merge="sum", scale_merge="max", resize_long=None):
    """Write the predicted label map of each image to `out_dir/<name>.png` (VOC palette).

    Args:
        model: a `WSSSModel` with a segmentation head.
        images: a `SegmentationDataset`, or a folder of .jpg/.png images.
        out_dir: output folder; overlays go to `out_dir/overlays/<name>.jpg`.
        scales, flip: test-time views (ToCo: (1.0, 1.25, 1.5) with flip).
        overlay: also write the image blended with the label colours (alpha 0.5).
        progress: optional callable(done, total).
        overwrite: redo images whose outputs exist (default: skip them).
        model_name: how errors name the model (e.g. its file).
        crf: None, or the CRF settings to refine with: "toco", "deeplab", "weclip" or a dict
            of `dense_crf` arguments (`wsss_keras.ops.crf.segmentation_crf`).
        flip_merge, scale_merge: "sum", "mean" or "max" (`MultiScaleSegmentation`).
        resize_long: the long side the image is resized to first (`segment_image`), or None.

    Returns:
        the number of images predicted (skipped ones not counted).
    """
    scales = check_scales(scales)
    from wsss_keras.ops.crf import densecrf_module, segmentation_crf

    try:
        crf = segmentation_crf(crf)
    except ValueError as error:
        raise WSSSError(str(error)) from None
    if crf is not None:
        densecrf_module()  # fail before any work when pydensecrf is missing
    if isinstance(images, (str, os.PathLike)):
        images = ImageFolder(os.fspath(images))
    is_dataset = hasattr(images, "num_classes")

    def outputs(name):
        paths = [os.path.join(out_dir, f"{name}.png")]
        return paths + [os.path.join(out_dir, OVERLAY_FOLDER, f"{name}.jpg")] if overlay else paths

    from wsss_keras.pipelines.inference import MultiScaleSegmentation

    try:
        runner = MultiScaleSegmentation(model, scales, flip, flip_merge=flip_merge, scale_merge=scale_merge)
    except ValueError as error:
        raise WSSSError(str(error)) from None

    def work(index, paths):
        image = images.load_image(index)
        try:
            logits = segment_image(model, image, runner=runner, resize_long=resize_long)
        except NotImplementedError:
            raise WSSSError(
                f"{model_name}: {type(model).__name__} has no segmentation head; make labels with "
                "`wsss cams` + `wsss pseudo-labels` and predict with the segmentation network trained on them."
            ) from None
        if is_dataset:
            check_class_count(logits.shape[-1] - 1, images, "segmentation logits (less background)")
        if crf is not None:
            from wsss_keras.ops.crf import dense_crf

            probs = np.exp(logits - logits.max(-1, keepdims=True))
            logits = dense_crf(image, probs / probs.sum(-1, keepdims=True), **crf)
        label_map = logits.argmax(-1).astype(np.uint8)
        write_label_map(paths[0], label_map)
        if overlay:
            write_image(paths[1], overlay_image(image, label_map))

    return run_per_image(images.names, outputs, work, overwrite, progress)
