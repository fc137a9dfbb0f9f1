"""CAM files and their evaluation with a background-threshold sweep (NumPy only).

A CAM file is `<image id>.npz` holding `cams`, float16 (H, W, k) at the image's size and
normalised to [0, 1], and `classes`, the k foreground class indices (1-based, as in label maps)
the maps belong to, usually the classes present in the image. Keeping only those k maps keeps
files small (COCO has 80 classes, an image a handful). `.npz` rather than a pickled `.npy`
dictionary, so loading a file never runs code.
"""

import os

import numpy as np

from wsss_keras.data.imageio import read_label_map
from wsss_keras.errors import DataError
from wsss_keras.evaluation.metrics import ConfusionMatrix

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


def parse_thresholds(text):
    """"0.05:0.95:0.05" (inclusive) or "0.3,0.5" -> tuple of floats in [0, 1]; ValueError otherwise."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            values = np.round(np.arange(start, stop + step / 2, step), 6)
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if len(values) == 0 or min(values) < 0 or max(values) > 1:
        raise ValueError(f"{text!r}: give start:stop:step or a comma list of values in [0, 1].")
    return tuple(float(v) for v in values)


def save_cams(path, cams, classes):
    """Write CAMs (H, W, k) for the 1-based `classes` to `path` (.npz)."""
    cams = np.asarray(cams)
    classes = np.asarray(classes, np.int32).ravel()
    if cams.ndim != 3 or cams.shape[-1] != classes.size:
        raise ValueError(f"{path}: cams must be (H, W, {classes.size}) for {classes.size} classes, got {cams.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, cams=cams.astype(np.float16), classes=classes)


def load_cams(path):
    """Read a CAM file: (cams float32 (H, W, k), classes int32 (k,))."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive["cams"].astype(np.float32), archive["classes"].astype(np.int32)
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{path}: not a CAM file with 'cams' and 'classes' arrays ({error}); write it with save_cams.") from None


def strongest_class(cams, classes):
    """Per pixel, the largest CAM value and the class it belongs to (0 where there is no map)."""
    if cams.shape[-1] == 0:
        return np.zeros(cams.shape[:2], np.float32), np.zeros(cams.shape[:2], np.uint8)
    return cams.max(-1), classes[cams.argmax(-1)].astype(np.uint8)


class ThresholdSweep:
    """One confusion matrix per background threshold, filled in one pass over the CAMs.

    Example:
    >>> sweep = ThresholdSweep(3, thresholds=(0.3, 0.6))
    >>> cams = np.array([[[0.5], [0.9]]], np.float32)   # H=1, W=2, one class map
    >>> sweep.update(cams, np.array([2]), np.array([[0, 2]]))
    >>> [round(s.miou, 2) for s in sweep.scores()]
    [0.25, 1.0]
    """

    def __init__(self, num_classes, thresholds=DEFAULT_THRESHOLDS, class_names=None):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.matrices = [ConfusionMatrix(num_classes, class_names) for _ in self.thresholds]

    def update(self, cams, classes, ground_truth, source="cams"):
        strongest, label_map = strongest_class(cams, classes)  # once, shared by every threshold
        for threshold, matrix in zip(self.thresholds, self.matrices):
            matrix.update(np.where(strongest > threshold, label_map, 0), ground_truth, source)

    def scores(self):
        return [matrix.scores() for matrix in self.matrices]

    def best(self):
        """(threshold, scores) with the highest mIoU."""
        scores = self.scores()
        index = int(np.nanargmax([s.miou for s in scores]))
        return self.thresholds[index], scores[index]


def sweep_cam_folder(cam_dir, ground_truth_dir, class_names, thresholds=DEFAULT_THRESHOLDS, names=None, progress=None):
    """Score every CAM file in `cam_dir` against the label PNGs at each threshold.

    Returns:
        (ThresholdSweep, number of images).
    """
    if not os.path.isdir(cam_dir):
        raise DataError(f"{cam_dir}: CAM folder not found.")
    available = {os.path.splitext(f)[0] for f in os.listdir(cam_dir) if f.endswith(".npz")}
    names = sorted(available) if names is None else list(names)
    if not names:
        raise DataError(f"{cam_dir}: no .npz CAM files to score.")
    missing = [name for name in names if name not in available]
    if missing:
        raise DataError(f"{cam_dir}: no CAMs for {len(missing)} image(s), e.g. {missing[0]}.npz; compute CAMs for the whole split.")
    sweep = ThresholdSweep(len(class_names), thresholds, class_names)
    for done, name in enumerate(names, start=1):
        cams, classes = load_cams(os.path.join(cam_dir, f"{name}.npz"))
        truth_path = os.path.join(ground_truth_dir, f"{name}.png")
        truth = read_label_map(truth_path, len(class_names))
        if cams.shape[:2] != truth.shape:
            raise DataError(f"{cam_dir}/{name}.npz: CAMs are {cams.shape[1]}x{cams.shape[0]}, the label map {truth.shape[1]}x{truth.shape[0]}; save CAMs at the image size.")
        if classes.size and (classes.min() < 1 or classes.max() >= len(class_names)):
            raise DataError(f"{cam_dir}/{name}.npz: class index {int(classes.max())} is outside 1..{len(class_names) - 1}.")
        sweep.update(cams, classes, truth, source=f"{cam_dir}/{name}.npz")
        if progress is not None:
            progress(done, len(names))
    return sweep, len(names)
