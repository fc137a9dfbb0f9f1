"""`[ssc] decoder_classes`: which class maps SSC's reconstruction decoder reads."""

import types

import numpy as np
import pytest

from wsss_keras.errors import RecipeError
from wsss_keras.pipelines.ssc import decoder_classes

DATASET = types.SimpleNamespace(
    class_names=["background", "aeroplane", "bicycle", "bird", "boat"],
    # bicycle and boat are in no training image (a VOC layout with a subset of its classes).
    labels=np.array([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]], np.uint8),
)


def test_all_is_the_codes_default_and_seen_keeps_the_classes_of_some_image():
    lines = []
    assert decoder_classes({"ssc": {}}, DATASET, lines.append) is None
    assert decoder_classes({"ssc": {"decoder_classes": "all"}}, DATASET, lines.append) is None
    assert decoder_classes({"ssc": {"decoder_classes": "seen"}}, DATASET, lines.append) == [0, 2]
    assert lines == ["[train] the decoder reads 2 class maps; no training image has bicycle, boat"]


def test_another_value_is_a_one_line_recipe_error():
    with pytest.raises(RecipeError, match=r"\[ssc\] decoder_classes = 'present'; choose 'all'"):
        decoder_classes({"recipe": {"name": "mine"}, "ssc": {"decoder_classes": "present"}}, DATASET)
