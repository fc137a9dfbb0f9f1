"""Scoring a folder of predicted label PNGs against a folder of ground-truth PNGs.

Any tool's output can be scored: predictions are matched to ground truth by file stem, both
read as class indices (palette or single-channel PNGs).
"""

import os

from wsss_keras.data.imageio import read_label_map
from wsss_keras.evaluation.metrics import ConfusionMatrix
from wsss_keras.errors import DataError


def list_pngs(folder):
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: folder not found.")
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(".png")}


def score_folders(prediction_dir, ground_truth_dir, class_names, names=None, prediction_ignore="miss", progress=None):
    """Score predictions against ground truth.

    Args:
        prediction_dir: folder of predicted label PNGs.
        ground_truth_dir: folder of ground-truth label PNGs (VOC SegmentationClass or similar).
        class_names: class names, background first (their count sets the classes).
        names: the image ids to score; default every prediction. Each must have both files.
        prediction_ignore: "miss" or "skip" for predicted 255 pixels.
        progress: optional callable(done, total).

    Returns:
        (SegmentationScores, number of images scored).
    """
    predictions = list_pngs(prediction_dir)
    ground_truth = list_pngs(ground_truth_dir)
    if names is None:
        names = sorted(predictions)
        if not names:
            raise DataError(f"{prediction_dir}: no .png predictions to score.")
    missing_prediction = [name for name in names if name not in predictions]
    if missing_prediction:
        raise DataError(
            f"{prediction_dir}: no prediction for {len(missing_prediction)} image(s), e.g. {missing_prediction[0]}.png; "
            "predict every image of the split or score fewer images."
        )
    missing_truth = [name for name in names if name not in ground_truth]
    if missing_truth:
        raise DataError(
            f"{ground_truth_dir}: no ground truth for {len(missing_truth)} predicted image(s), e.g. {missing_truth[0]}.png; "
            "check that both folders use the same image ids."
        )
    matrix = ConfusionMatrix(len(class_names), class_names, prediction_ignore)
    for done, name in enumerate(names, start=1):
        prediction = read_label_map(predictions[name])
        truth = read_label_map(ground_truth[name], len(class_names))
        matrix.update(prediction, truth, source=predictions[name])
        if progress is not None:
            progress(done, len(names))
    return matrix.scores(), len(names)
