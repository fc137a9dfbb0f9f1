"""`wsss predict`: segmentation label maps (and overlays) from a model's segmentation head.

ToCo's protocol (tools/infer_seg_voc.py): at the original resolution, per scale the logits of
the image plus the un-mirrored logits of its mirror (summed), bilinear to the image size, the
maximum over scales, then the argmax. ToCo uses scales (1.0, 1.25, 1.5) with flips.

Optionally a dense CRF refines the softmax of the fused logits before the argmax (`crf`:
"toco", ToCo's "MS+CRF" settings, or "deeplab", deeplab-pytorch's, which the IRN-pipeline
papers use after DeepLab-v2; needs the `crf` extra).
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


def segment_image(model, image, scales=(1.0,), flip=False, runner=None):
    """Fused segmentation logits (H, W, C + 1) of one uint8 RGB image, ToCo's protocol
    (`wsss_keras.pipelines.inference.MultiScaleSegmentation`; pass it as `runner` to reuse its
    compiled function across images)."""
    from wsss_keras.data.transforms import normalize
    from wsss_keras.pipelines.inference import MultiScaleSegmentation

    runner = runner or MultiScaleSegmentation(model, scales, flip)
    inputs = normalize(image, model.image_mean, model.image_std)[None]
    return np.asarray(runner.predict_on_batch(inputs))[0]


def predict_folder(model, images, out_dir, scales=(1.0,), flip=False, overlay=True, progress=None, overwrite=False,
                   model_name="the model", crf=None):
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
        crf: None, or the CRF settings to refine with: "toco", "deeplab" or a dict of
            `dense_crf` arguments.

    Returns:
        the number of images predicted (skipped ones not counted).
    """
    scales = check_scales(scales)
    if crf is not None:
        from wsss_keras.ops.crf import SEGMENTATION_CRFS, densecrf_module

        if isinstance(crf, str) and crf not in SEGMENTATION_CRFS:
            raise WSSSError(f"crf {crf!r}: choose one of {', '.join(SEGMENTATION_CRFS)} (or none).")
        crf = SEGMENTATION_CRFS[crf] if isinstance(crf, str) else dict(crf)
        densecrf_module()  # fail before any work when pydensecrf is missing
    if isinstance(images, (str, os.PathLike)):
        images = ImageFolder(os.fspath(images))
    is_dataset = hasattr(images, "num_classes")

    def outputs(name):
        paths = [os.path.join(out_dir, f"{name}.png")]
        return paths + [os.path.join(out_dir, OVERLAY_FOLDER, f"{name}.jpg")] if overlay else paths

    from wsss_keras.pipelines.inference import MultiScaleSegmentation

    runner = MultiScaleSegmentation(model, scales, flip)

    def work(index, paths):
        image = images.load_image(index)
        try:
            logits = segment_image(model, image, runner=runner)
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
