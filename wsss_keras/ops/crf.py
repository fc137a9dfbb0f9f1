"""Dense CRF (Krähenbühl and Koltun, 2011) through pydensecrf, with NumPy arrays.

pydensecrf comes from the optional `crf` extra (`pip install 'wsss-keras[crf]'`, the
`pydensecrf2` package, built from source with a C++ compiler and Cython). It is imported only
when a CRF is run, so everything else works without it.
"""

import numpy as np

from wsss_keras.errors import WSSSError

INSTALL_HINT = "pip install 'wsss-keras[crf]'"

# ToCo tools/infer_cam_crf_label.py: offline CRF labels from CAMs.
TOCO_CAM_CRF = {"iterations": 10, "pos_xy": 3, "pos_w": 3, "bi_xy": 36, "bi_rgb": 3, "bi_w": 4}
# ToCo tools/infer_seg_voc.py: "MS+CRF" segmentation.
TOCO_SEG_CRF = {"iterations": 10, "pos_xy": 1, "pos_w": 1, "bi_xy": 121, "bi_rgb": 5, "bi_w": 4}
# deeplab-pytorch (configs/voc12.yaml), the CRF after DeepLab-v2 in the IRN-pipeline papers.
DEEPLAB_CRF = {"iterations": 10, "pos_xy": 1, "pos_w": 3, "bi_xy": 67, "bi_rgb": 3, "bi_w": 4}
# WeCLIP test_msc_flip_voc.py's crf_proc (commented out of its own test run, so off in weclip_voc).
WECLIP_CRF = {"iterations": 10, "pos_xy": 3, "pos_w": 3, "bi_xy": 64, "bi_rgb": 5, "bi_w": 4}
SEGMENTATION_CRFS = {"toco": TOCO_SEG_CRF, "deeplab": DEEPLAB_CRF, "weclip": WECLIP_CRF}


def segmentation_crf(value):
    """The `dense_crf` settings a `crf` setting names: None for none (None, false, "none"), a
    preset's for its name, a copy of a table of `dense_crf` arguments.

    Raises:
        ValueError: anything else (`true` too: which CRF it means must be named).
    """
    if value is None or value is False or value == "none":
        return None
    if isinstance(value, str) and value in SEGMENTATION_CRFS:
        return dict(SEGMENTATION_CRFS[value])
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(TOCO_SEG_CRF))
        if unknown:
            raise ValueError(f"crf = {value!r}: unknown setting(s) {unknown}; a table takes {', '.join(TOCO_SEG_CRF)}.")
        return dict(value)
    raise ValueError(f"crf = {value!r}: name the settings, one of {', '.join(map(repr, SEGMENTATION_CRFS))}, a table of "
                     f"{', '.join(TOCO_SEG_CRF)}, or false.")


def densecrf_module():
    """`pydensecrf.densecrf`, or a WSSSError saying how to install it."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as error:
        raise WSSSError(
            f"dense CRF needs pydensecrf ({error}); install it with {INSTALL_HINT} "
            "(it builds from source: needs a C++ compiler and Cython)."
        ) from None
    return densecrf


def dense_crf(image, probs, iterations=10, pos_xy=3, pos_w=3, bi_xy=36, bi_rgb=3, bi_w=4, clip=1e-5):
    """Refine per-pixel class probabilities with a fully connected CRF.

    Unary energies are -log(probs) (probs clipped at `clip`); the pairwise terms are a Gaussian
    of position (std `pos_xy` pixels, weight `pos_w`) and a bilateral one of position and colour
    (stds `bi_xy` pixels and `bi_rgb` intensity levels, weight `bi_w`), both with Potts
    compatibility, as in the pydensecrf calls of ToCo, DeepLab and others.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (H, W, K) probabilities over K labels (channels last, like the rest of the project).
        iterations: mean-field iterations.

    Returns:
        (H, W, K) float32 refined probabilities.
    """
    densecrf = densecrf_module()
    image = np.ascontiguousarray(image, dtype=np.uint8)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or probs.ndim != 3 or probs.shape[:2] != image.shape[:2]:
        raise ValueError(f"dense_crf needs an (H, W, 3) image and (H, W, K) probabilities, got {image.shape} and {probs.shape}")
    height, width, labels = probs.shape
    unary = -np.log(np.clip(probs, clip, None)).transpose(2, 0, 1).reshape(labels, -1)
    crf = densecrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=image, compat=bi_w)
    refined = np.asarray(crf.inference(int(iterations)), dtype=np.float32)
    return refined.reshape(labels, height, width).transpose(1, 2, 0)
