"""Confusion-matrix metrics for semantic segmentation: mIoU, per-class IoU, precision, recall.

Conventions (those of the WSSS literature, made explicit):
* ground-truth pixels labelled 255 are ignored;
* a class absent from both the predictions and the ground truth of everything scored has no
  IoU (NaN) and is left out of the mean, rather than counted as 0 or 1;
* a prediction of 255 ("no label", as pseudo-labels have) either counts as a miss for the
  ground-truth class (`"miss"`, the default: it lowers recall, never helps) or takes the pixel
  out of the score (`"skip"`, scoring only the pixels that got a label).
"""

import dataclasses

import numpy as np

from wsss_keras.data.imageio import IGNORE_INDEX
from wsss_keras.errors import DataError

PREDICTION_IGNORE_MODES = ("miss", "skip")


@dataclasses.dataclass
class SegmentationScores:
    """Scores of one confusion matrix. Per-class arrays hold NaN for classes with no pixels."""

    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    pixel_accuracy: float
    unlabelled_fraction: float
    class_names: tuple

    @property
    def miou(self):
        """Mean IoU over the classes present in the predictions or the ground truth."""
        valid = ~np.isnan(self.iou)
        return float(self.iou[valid].mean()) if valid.any() else float("nan")

    def as_dict(self):
        def named(values):
            return {name: (None if np.isnan(v) else float(v)) for name, v in zip(self.class_names, values)}

        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "unlabelled_fraction": self.unlabelled_fraction,
            "iou": named(self.iou),
            "precision": named(self.precision),
            "recall": named(self.recall),
        }

    def table(self):
        """A plain-text table, one class a row, then the mean."""
        width = max(len(name) for name in self.class_names)
        lines = [f"{'class':<{width}}    IoU  precision  recall"]

        def cell(value, digits):
            return f"{'-':>{digits}}" if np.isnan(value) else f"{100 * value:>{digits}.1f}"

        for name, iou, precision, recall in zip(self.class_names, self.iou, self.precision, self.recall):
            lines.append(f"{name:<{width}} {cell(iou, 6)} {cell(precision, 10)} {cell(recall, 7)}")
        lines.append(f"{'mIoU':<{width}} {cell(self.miou, 6)}")
        return "\n".join(lines)


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) matrix, rows = ground truth, columns = prediction.

    Args:
        num_classes: classes including background.
        class_names: optional names for reports (default "class 0", ...).
        prediction_ignore: "miss" or "skip", for predictions of 255 (see the module docstring).

    Example:
    >>> import numpy as np
    >>> matrix = ConfusionMatrix(3)
    >>> matrix.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 255]]))
    >>> round(matrix.scores().miou, 3)
    1.0
    """

    def __init__(self, num_classes, class_names=None, prediction_ignore="miss"):
        if prediction_ignore not in PREDICTION_IGNORE_MODES:
            raise ValueError(f"prediction_ignore={prediction_ignore!r}; choose one of {PREDICTION_IGNORE_MODES}")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names else tuple(f"class {i}" for i in range(num_classes))
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.prediction_ignore = prediction_ignore
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        # Ground-truth pixels whose prediction was 255, per ground-truth class.
        self.unlabelled = np.zeros(num_classes, dtype=np.int64)

    def update(self, prediction, ground_truth, source="prediction"):
        """Add one label map pair (any equal shapes, integer values)."""
        prediction = np.asarray(prediction)
        ground_truth = np.asarray(ground_truth)
        if prediction.shape != ground_truth.shape:
            raise DataError(
                f"{source}: prediction shape {prediction.shape} differs from ground truth {ground_truth.shape}; "
                "predict at the ground truth's size."
            )
        prediction = prediction.astype(np.int64).ravel()
        ground_truth = ground_truth.astype(np.int64).ravel()
        bad_truth = (ground_truth < 0) | ((ground_truth >= self.num_classes) & (ground_truth != IGNORE_INDEX))
        if bad_truth.any():
            raise DataError(f"{source}: ground-truth value {int(ground_truth[bad_truth][0])} is not a class (0..{self.num_classes - 1}) nor 255.")
        bad_prediction = (prediction < 0) | ((prediction >= self.num_classes) & (prediction != IGNORE_INDEX))
        if bad_prediction.any():
            raise DataError(f"{source}: predicted value {int(prediction[bad_prediction][0])} is not a class (0..{self.num_classes - 1}) nor 255.")
        scored = ground_truth != IGNORE_INDEX
        unlabelled = scored & (prediction == IGNORE_INDEX)
        self.unlabelled += np.bincount(ground_truth[unlabelled], minlength=self.num_classes)
        labelled = scored & ~unlabelled
        pairs = ground_truth[labelled] * self.num_classes + prediction[labelled]
        self.matrix += np.bincount(pairs, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def merge(self, other):
        """Add another matrix of the same classes (for scoring in parallel parts)."""
        self.matrix += other.matrix
        self.unlabelled += other.unlabelled

    def scores(self):
        true_positive = np.diag(self.matrix).astype(np.float64)
        predicted = self.matrix.sum(0).astype(np.float64)
        actual = self.matrix.sum(1).astype(np.float64)
        if self.prediction_ignore == "miss":
            actual = actual + self.unlabelled
        union = actual + predicted - true_positive
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, true_positive / union, np.nan)
            precision = np.where(predicted > 0, true_positive / predicted, np.nan)
            recall = np.where(actual > 0, true_positive / actual, np.nan)
        total = actual.sum()
        unlabelled_total = self.unlabelled.sum()
        scored_total = self.matrix.sum() + unlabelled_total
        return SegmentationScores(
            iou=iou,
            precision=precision,
            recall=recall,
            pixel_accuracy=float(true_positive.sum() / total) if total else float("nan"),
            unlabelled_fraction=float(unlabelled_total / scored_total) if scored_total else 0.0,
            class_names=self.class_names,
        )
