"""`wsss irn labels`: confident foreground / background labels from CAMs, to train IRNet.

IRN's `cam_to_ir_label` (spec methods/amr.md §4.3), per image from its CAM file (the CAMs of
the present classes at the image size, in [0, 1]):

1. foreground map: a constant background plane `fg_threshold` (AMR 0.60, IRN 0.30) before the
   CAMs, argmax, then (optionally) a dense CRF on the hard labels;
2. background map: the same with `bg_threshold` (AMR 0.33, IRN 0.05);
3. label: the classes of the foreground map; pixels background there but foreground in the
   background map are 255 (unsure); background in both is 0.

The CRF (`crf=True`, needs the `crf` extra) is IRN's `crf_inference_label`: unary energies from
the hard labels with probability 0.7 on the label (`pydensecrf.utils.unary_from_labels`,
`zero_unsure=False`), a Gaussian kernel (sxy 3, compat 3) and a bilateral one (sxy 50, srgb 5,
compat 10), 10 iterations, argmax.
"""

import os

import numpy as np

from wsss_keras.data.imageio import IGNORE_INDEX, write_label_map
from wsss_keras.errors import DataError, WSSSError
from wsss_keras.pipelines.cams import run_per_image
from wsss_keras.pipelines.pseudo_labels import image_and_present_cams

IRN_LABEL_CRF = {"iterations": 10, "pos_xy": 3, "pos_w": 3, "bi_xy": 50, "bi_rgb": 5, "bi_w": 10}
LABEL_PROBABILITY = 0.7


def crf_on_labels(image, labels, num_labels, probability=LABEL_PROBABILITY, crf_options=None):
    """IRN's `crf_inference_label`: dense CRF started from hard labels 0..num_labels-1."""
    from wsss_keras.ops.crf import dense_crf

    if num_labels < 2:
        return labels
    # pydensecrf's unary_from_labels: the label gets `probability`, the others share the rest.
    probs = np.full(labels.shape + (num_labels,), (1.0 - probability) / (num_labels - 1), np.float32)
    np.put_along_axis(probs, labels[..., None].astype(np.int64), probability, axis=-1)
    refined = dense_crf(image, probs, **{**IRN_LABEL_CRF, **(crf_options or {})})
    return refined.argmax(-1)


def confident_labels(image, cams, classes, fg_threshold=0.60, bg_threshold=0.33, crf=True, crf_options=None):
    """The confident IR label map (H, W) uint8 of one image.

    Args:
        image: (H, W, 3) uint8 RGB (used by the CRF).
        cams: (H, W, k) CAMs of the image's present classes, in [0, 1].
        classes: the k 1-based class labels of those maps.
        fg_threshold, bg_threshold: the background planes of the two maps (fg > bg).
        crf: refine both maps with the dense CRF.

    Example:
    >>> import numpy as np
    >>> cams = np.array([[[0.9], [0.5], [0.1]]], "float32")
    >>> confident_labels(np.zeros((1, 3, 3), "uint8"), cams, [7], crf=False).tolist()
    [[7, 255, 0]]
    """
    keys = np.concatenate([[0], np.asarray(classes, np.int64)]).astype(np.uint8)

    def label(background):
        stack = np.concatenate([np.full(cams.shape[:2] + (1,), background, np.float32), cams], axis=-1)
        hard = stack.argmax(-1)
        if crf:
            hard = crf_on_labels(image, hard, stack.shape[-1], crf_options=crf_options)
        return keys[hard]

    foreground, background = label(fg_threshold), label(bg_threshold)
    result = np.where(foreground == 0, IGNORE_INDEX, foreground)
    return np.where((foreground == 0) & (background == 0), 0, result).astype(np.uint8)


def make_ir_labels(dataset, cam_dir, out_dir, fg_threshold=0.60, bg_threshold=0.33, crf=True, crf_options=None,
                   progress=None, overwrite=False):
    """Write the confident IR label PNG (`<image id>.png`, 255 = unsure) of every image.

    Returns:
        the number of label maps written (existing ones are skipped unless `overwrite`).
    """
    if not 0.0 <= bg_threshold < fg_threshold <= 1.0:
        raise WSSSError(
            f"IR label thresholds fg={fg_threshold}, bg={bg_threshold}: need 0 <= bg < fg <= 1 "
            "(AMR uses 0.60 and 0.33, IRN 0.30 and 0.05)."
        )
    if not os.path.isdir(cam_dir):
        raise DataError(f"{cam_dir}: CAM folder not found; write it with `wsss cams`.")
    if crf:
        from wsss_keras.ops.crf import densecrf_module

        densecrf_module()  # fail before any work when pydensecrf is missing

    def work(index, paths):
        image, present, stack = image_and_present_cams(dataset, index, cam_dir)
        write_label_map(paths[0], confident_labels(image, stack, present, fg_threshold, bg_threshold, crf, crf_options))

    return run_per_image(
        dataset.names, lambda name: [os.path.join(out_dir, f"{name}.png")], work, overwrite, progress
    )
