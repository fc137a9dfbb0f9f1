"""The splits the IRN and segmentation stages train on follow the images that have their labels
(the IR labels' and the pseudo-labels', which default to the CAMs'), not a fixed "train"."""

import pytest

from wsss_keras.pipelines.irn import irn_split
from wsss_keras.pipelines.segmentation import segmentation_split


@pytest.mark.parametrize("split_of, labels, own", [(irn_split, "ir_labels", "irn"),
                                                   (segmentation_split, "pseudo_labels", "segmentation")])
def test_a_stage_trains_on_the_images_that_have_its_labels(split_of, labels, own):
    # amr_voc names neither split: both follow the CAMs' (train_aug), not VOC's "train".
    assert split_of({"cams": {"split": "train_aug"}}) == "train_aug"
    assert split_of({"cams": {"split": "train2014"}, labels: {}}) == "train2014"
    assert split_of({"cams": {"split": "train_aug"}, labels: {"split": "train"}}) == "train"
    assert split_of({"cams": {"split": "train_aug"}, own: {"split": "val"}}) == "val"
    assert split_of({}) == "train"
