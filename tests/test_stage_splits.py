"""The splits the IRN and segmentation stages train on follow the images that have their labels
(the IR labels' and the pseudo-labels', which default to the CAMs'), not a fixed "train"."""

import pytest

from wsss_keras.recipes import labelled_split


@pytest.mark.parametrize("labels, own", [("ir_labels", "irn"), ("pseudo_labels", "segmentation")])
def test_a_stage_trains_on_the_images_that_have_its_labels(labels, own):
    # amr_voc names neither split: both follow the CAMs' (train_aug), not VOC's "train".
    assert labelled_split({"cams": {"split": "train_aug"}}, own) == "train_aug"
    assert labelled_split({"cams": {"split": "train2014"}, labels: {}}, own) == "train2014"
    assert labelled_split({"cams": {"split": "train_aug"}, labels: {"split": "train"}}, own) == "train"
    assert labelled_split({"cams": {"split": "train_aug"}, own: {"split": "val"}}, own) == "val"
    assert labelled_split({}, own) == "train"
