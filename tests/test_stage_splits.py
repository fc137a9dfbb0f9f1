"""The splits the IRN and segmentation stages train on follow the images that have their labels."""


def test_irn_trains_on_the_images_that_have_ir_labels():
    from wsss_keras.pipelines.irn import irn_split

    # amr_voc names no IRN or IR-label split: both follow the CAMs' (train_aug), not "train".
    assert irn_split({"cams": {"split": "train_aug"}}) == "train_aug"
    assert irn_split({"cams": {"split": "train2014"}, "ir_labels": {}}) == "train2014"
    assert irn_split({"cams": {"split": "train_aug"}, "ir_labels": {"split": "train"}}) == "train"
    assert irn_split({"cams": {"split": "train_aug"}, "irn": {"split": "val"}}) == "val"
    assert irn_split({}) == "train"


def test_the_segmentation_network_trains_on_the_pseudo_labelled_images():
    from wsss_keras.pipelines.segmentation import segmentation_split

    assert segmentation_split({"cams": {"split": "train_aug"}}) == "train_aug"
    assert segmentation_split({"cams": {"split": "train2014"}, "pseudo_labels": {}}) == "train2014"
    assert segmentation_split({"cams": {"split": "train_aug"}, "pseudo_labels": {"split": "train"}}) == "train"
    assert segmentation_split({"cams": {"split": "train_aug"}, "segmentation": {"split": "val"}}) == "val"
    assert segmentation_split({}) == "train"
