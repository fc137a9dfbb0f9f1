"""`wsss pseudo-labels`: label PNGs from CAM files, for training a segmentation network.

Three modes, each with ToCo's two background scores (`high`, `low`) and an ignore band:

- "threshold": the strongest present class where its CAM > high, background where <= low,
  255 in between (`cams_to_pseudo_labels`).
- "par": ToCo's PAR-refined labels (`refine_pseudo_labels`) on the image in [0, 1].
- "crf": ToCo's offline CRF labels (tools/infer_cam_crf_label.py): the stacks [high | CAMs]
  and [low | CAMs] of the present classes are softmaxed and refined by a dense CRF each; a
  class where the high stack says so, background where both say background, 255 elsewhere.
"""

import os

import numpy as np

from wsss_keras.data.imageio import IGNORE_INDEX, write_label_map
from wsss_keras.errors import DataError, WSSSError
from wsss_keras.evaluation.cams import load_cams
from wsss_keras.pipelines.cams import run_per_image

MODES = ("par", "threshold", "crf")


def present_cam_stack(cams, classes, present, cam_path, name):
    """The (H, W, k) maps of the `present` classes (1-based), in that order, from a CAM file."""
    position = {int(c): i for i, c in enumerate(classes)}
    lacking = [int(c) for c in present if int(c) not in position]
    if lacking:
        raise DataError(
            f"{cam_path}: no CAM for class(es) {', '.join(map(str, lacking))} that image {name} contains; "
            "recompute the CAMs of this split with `wsss cams` on the same dataset and labels."
        )
    return cams[..., [position[int(c)] for c in present]]


def image_and_present_cams(dataset, index, cam_dir):
    """(image, present classes (1-based), their (H, W, k) CAMs) of image `index`, checked.

    Every stage that reads CAM files (pseudo-labels, IR labels, the random walk) starts here:
    a missing file, a CAM of another size or a missing class is a `DataError` naming the file.
    """
    name = dataset.names[index]
    cam_path = os.path.join(cam_dir, f"{name}.npz")
    if not os.path.isfile(cam_path):
        raise DataError(f"{cam_path}: no CAM file for image {name}; run `wsss cams` on the same split first.")
    cams, classes = load_cams(cam_path)
    image = dataset.load_image(index)
    if cams.shape[:2] != image.shape[:2]:
        raise DataError(
            f"{cam_path}: CAMs are {cams.shape[1]}x{cams.shape[0]} but image {name} is "
            f"{image.shape[1]}x{image.shape[0]}; recompute the CAMs with `wsss cams` on this dataset."
        )
    present = np.flatnonzero(dataset.labels[index]) + 1
    return image, present, present_cam_stack(cams, classes, present, cam_path, name)


def combine_high_low(label_high, label_low):
    """ToCo's rule: the high label where it is a class, 0 where both are background, else 255."""
    label_map = np.where(label_high == 0, IGNORE_INDEX, label_high)
    return np.where((label_high == 0) & (label_low == 0), 0, label_map).astype(np.uint8)


def crf_pseudo_label(image, present_cams, present, high, low, crf_options):
    """ToCo's offline CRF label of one image from the (H, W, k) CAMs of its present classes."""
    from wsss_keras.ops.crf import dense_crf

    if len(present) == 0:
        return np.zeros(image.shape[:2], np.uint8)
    keys = np.concatenate([[0], present]).astype(np.uint8)

    def label(background):
        stack = np.concatenate([np.full_like(present_cams[..., :1], background), present_cams], axis=-1)
        stack = np.exp(stack - stack.max(-1, keepdims=True))
        probs = dense_crf(image, stack / stack.sum(-1, keepdims=True), **crf_options)
        return keys[probs.argmax(-1)]

    return combine_high_low(label(high), label(low))


def make_pseudo_labels(dataset, cam_dir, out_dir, mode="par", high=0.7, low=0.25, background=None, down_scale=2,
                       crf_options=None, par_options=None, progress=None, overwrite=False):
    """Write a pseudo-label PNG (VOC palette, 255 = ignore) per image from its CAM file.

    Args:
        dataset: the `SegmentationDataset` the CAMs were computed on (images, present classes).
        cam_dir: folder of `<image id>.npz` CAM files (`wsss cams`).
        out_dir: output folder of `<image id>.png` label maps.
        mode: "par", "threshold" or "crf" (see the module docstring).
        high, low: the two background scores (0 <= low <= high <= 1).
        background: one background threshold instead (sets high = low: no ignore band).
        down_scale: "par": PAR runs at 1/down_scale of the image size.
        crf_options: "crf": dense CRF settings (default ToCo's `TOCO_CAM_CRF`).
        par_options: "par": passed to `par_refine` (dilations, num_iter, w1, w2).
        progress: optional callable(done, total).
        overwrite: redo images whose PNG exists (default: skip them).

    Returns:
        the number of label maps written (skipped ones not counted).
    """
    if mode not in MODES:
        raise WSSSError(f"mode {mode!r}: choose one of {', '.join(MODES)}.")
    if background is not None:
        high = low = background
    if not 0.0 <= low <= high <= 1.0:
        raise WSSSError(f"thresholds high={high}, low={low}: need 0 <= low <= high <= 1.")
    if not os.path.isdir(cam_dir):
        raise DataError(f"{cam_dir}: CAM folder not found; write it with `wsss cams`.")
    if mode == "crf":
        from wsss_keras.ops.crf import TOCO_CAM_CRF, densecrf_module

        densecrf_module()  # fail before any work when pydensecrf is missing
        crf_options = {**TOCO_CAM_CRF, **(crf_options or {})}
    output = lambda name: [os.path.join(out_dir, f"{name}.png")]  # noqa: E731
    pending = [name for name in dataset.names if overwrite or not os.path.isfile(output(name)[0])]
    lacking = [name for name in pending if not os.path.isfile(os.path.join(cam_dir, f"{name}.npz"))]
    if lacking:
        raise DataError(
            f"{cam_dir}: no CAM file for {len(lacking)} image(s) of {dataset.description}, e.g. {lacking[0]}.npz; "
            "run `wsss cams` on the same split first."
        )
    if mode != "crf":
        from keras import ops

        from wsss_keras.ops.cam import cams_to_pseudo_labels
        from wsss_keras.pipelines.inference import PseudoLabelRefiner

        refiner = PseudoLabelRefiner(high, low, down_scale, **(par_options or {}))

    def work(index, paths):
        image, present, present_cams = image_and_present_cams(dataset, index, cam_dir)
        if mode == "crf":
            label_map = crf_pseudo_label(image, present_cams, present, high, low, crf_options)
        else:
            full = np.zeros(image.shape[:2] + (dataset.num_classes - 1,), np.float32)
            full[..., present - 1] = present_cams
            labels = dataset.labels[index][None]
            if mode == "threshold":
                label_map = cams_to_pseudo_labels(full[None], labels, high, low)
            else:
                rgb = image[None].astype(np.float32) / 255.0
                label_map = refiner.predict_on_batch((rgb, full[None], labels.astype(np.float32)))
            label_map = ops.convert_to_numpy(label_map)[0]
        write_label_map(paths[0], label_map)

    return run_per_image(dataset.names, output, work, overwrite, progress)
