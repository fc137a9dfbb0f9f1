"""Segmentation scores from a confusion matrix (NumPy only)."""

from wsss_keras.evaluation.metrics import ConfusionMatrix, SegmentationScores
from wsss_keras.evaluation.folders import score_folders

__all__ = ["ConfusionMatrix", "SegmentationScores", "score_folders"]
