"""mIoU and friends against independent computations (sklearn's confusion matrix, a plain loop)."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from wsss_keras.errors import DataError
from wsss_keras.evaluation import ConfusionMatrix


def random_pair(rng, num_classes, shape=(37, 53), absent=(), ignore_rate=0.1, predicted_ignore_rate=0.0):
    classes = [c for c in range(num_classes) if c not in absent]
    truth = rng.choice(classes, size=shape)
    prediction = np.where(rng.random(shape) < 0.6, truth, rng.choice(classes, size=shape))
    truth[rng.random(shape) < ignore_rate] = 255
    prediction[rng.random(shape) < predicted_ignore_rate] = 255
    return prediction.astype(np.uint8), truth.astype(np.uint8)


def loop_iou(predictions, truths, num_classes):
    """IoU per class by counting pixels one class at a time; NaN where the union is empty."""
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for prediction, truth in zip(predictions, truths):
            valid = truth != 255
            p, t = (prediction == c) & valid, (truth == c) & valid
            inter += np.sum(p & t)
            union += np.sum(p | t)
        ious.append(inter / union if union else np.nan)
    return np.array(ious)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_and_miou_match_sklearn_and_loop(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6
    absent = (2, 4)  # never in the ground truth nor the prediction
    pairs = [random_pair(rng, num_classes, absent=absent) for _ in range(4)]
    matrix = ConfusionMatrix(num_classes)
    for prediction, truth in pairs:
        matrix.update(prediction, truth)

    predictions = np.concatenate([p.ravel() for p, _ in pairs])
    truths = np.concatenate([t.ravel() for _, t in pairs])
    keep = truths != 255
    reference = sklearn_confusion_matrix(truths[keep], predictions[keep], labels=list(range(num_classes)))
    np.testing.assert_array_equal(matrix.matrix, reference)

    scores = matrix.scores()
    expected_iou = loop_iou([p for p, _ in pairs], [t for _, t in pairs], num_classes)
    np.testing.assert_allclose(scores.iou, expected_iou, equal_nan=True)
    assert np.isnan(scores.iou[list(absent)]).all()
    # Absent classes are left out of the mean, not counted as 0 (or 1).
    present = [c for c in range(num_classes) if c not in absent]
    assert scores.miou == pytest.approx(np.mean(expected_iou[present]))
    assert scores.miou != pytest.approx(np.mean(np.nan_to_num(expected_iou)))


def test_class_only_in_prediction_counts_as_zero():
    truth = np.zeros((4, 4), np.uint8)
    prediction = truth.copy()
    prediction[0, 0] = 3  # class 3 is predicted but never true: IoU 0, and it is in the mean
    matrix = ConfusionMatrix(4)
    matrix.update(prediction, truth)
    scores = matrix.scores()
    assert scores.iou[3] == 0.0
    assert np.isnan(scores.iou[1]) and np.isnan(scores.iou[2])
    assert scores.miou == pytest.approx((15 / 16 + 0.0) / 2)


def test_precision_and_recall_hand_computed():
    truth = np.array([[1, 1, 1, 0], [0, 0, 255, 0]], np.uint8)
    prediction = np.array([[1, 1, 0, 1], [0, 0, 1, 0]], np.uint8)
    matrix = ConfusionMatrix(2)
    matrix.update(prediction, truth)
    scores = matrix.scores()
    # class 1: TP 2, FP 1 (the ignored pixel does not count), FN 1.
    assert scores.precision[1] == pytest.approx(2 / 3)
    assert scores.recall[1] == pytest.approx(2 / 3)
    assert scores.iou[1] == pytest.approx(2 / 4)
    assert scores.pixel_accuracy == pytest.approx(5 / 7)


def test_predicted_ignore_miss_and_skip():
    rng = np.random.default_rng(7)
    prediction, truth = random_pair(rng, 4, predicted_ignore_rate=0.2)
    miss, skip = ConfusionMatrix(4, prediction_ignore="miss"), ConfusionMatrix(4, prediction_ignore="skip")
    miss.update(prediction, truth)
    skip.update(prediction, truth)
    scored = truth != 255
    unlabelled = scored & (prediction == 255)
    # skip: the unlabelled pixels are out; miss: they are false negatives of their true class.
    keep = scored & ~unlabelled
    expected_skip = loop_iou([prediction[keep]], [truth[keep]], 4)
    np.testing.assert_allclose(skip.scores().iou, expected_skip)
    for c in range(4):
        p, t = (prediction == c) & scored, (truth == c) & scored
        expected = np.sum(p & t) / np.sum(p | t)
        assert miss.scores().iou[c] == pytest.approx(expected)
    assert miss.scores().unlabelled_fraction == pytest.approx(unlabelled.sum() / scored.sum())
    assert miss.scores().miou < skip.scores().miou


def test_bad_values_and_shapes_are_refused():
    matrix = ConfusionMatrix(3)
    with pytest.raises(DataError, match="predicted value 7"):
        matrix.update(np.full((2, 2), 7), np.zeros((2, 2)), source="x.png")
    with pytest.raises(DataError, match="ground-truth value 5"):
        matrix.update(np.zeros((2, 2)), np.full((2, 2), 5))
    with pytest.raises(DataError, match="differs from ground truth"):
        matrix.update(np.zeros((2, 3)), np.zeros((2, 2)))


def test_merge_equals_single_pass():
    rng = np.random.default_rng(3)
    pairs = [random_pair(rng, 5) for _ in range(3)]
    whole, parts = ConfusionMatrix(5), [ConfusionMatrix(5) for _ in pairs]
    for (prediction, truth), part in zip(pairs, parts):
        whole.update(prediction, truth)
        part.update(prediction, truth)
    merged = ConfusionMatrix(5)
    for part in parts:
        merged.merge(part)
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
