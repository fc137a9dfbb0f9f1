"""The predict stage's protocols: how an image's and its mirror's logits merge, how the scales
merge, WeCLIP's resize to a long side, and CRF settings checked before a run trains."""

import numpy as np
import pytest
from keras import ops

from wsss_keras.errors import WSSSError
from wsss_keras.ops.crf import TOCO_SEG_CRF, WECLIP_CRF, segmentation_crf
from wsss_keras.pipelines.inference import MultiScaleSegmentation
from wsss_keras.pipelines.predict import segment_image
from wsss_keras.pipelines.run import run_recipe
from wsss_keras.recipes import load_recipe


class ShiftModel:
    """Logits = the image shifted one pixel right (wrapping): its mirror's, un-mirrored, are the
    image shifted one pixel left, so every merge rule gives a different map."""

    image_mean, image_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self):
        self.seen = []

    def segment_logits(self, views):
        self.seen.append(tuple(views.shape[1:3]))
        return ops.roll(views, 1, axis=2)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(1, 6, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("flip_merge, scale_merge", [("sum", "max"), ("max", "sum"), ("mean", "mean")])
def test_merges_match_numpy(images, flip_merge, scale_merge):
    right, left = np.roll(images, 1, axis=2), np.roll(images, -1, axis=2)
    flipped = {"sum": right + left, "max": np.maximum(right, left), "mean": (right + left) / 2}[flip_merge]
    # Two views at scale 1.0: the scale merge doubles (sum) or keeps (max, mean) the map.
    expected = {"sum": 2 * flipped, "max": flipped, "mean": flipped}[scale_merge]
    runner = MultiScaleSegmentation(ShiftModel(), scales=(1.0, 1.0), flip=True, flip_merge=flip_merge,
                                    scale_merge=scale_merge)
    np.testing.assert_allclose(np.asarray(runner.predict_on_batch(images)), expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_merge_is_refused():
    with pytest.raises(ValueError, match="flip_merge = 'avg': choose one of sum, mean, max"):
        MultiScaleSegmentation(ShiftModel(), flip_merge="avg")


def test_resize_long_runs_the_model_at_that_side_and_returns_the_image_size():
    model = ShiftModel()
    image = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    logits = segment_image(model, image, resize_long=20)
    assert model.seen == [(15, 20)] and logits.shape == (30, 40, 3)
    # A flat image stays flat through both resizes and the shift (normalised: 7 / 255).
    flat = np.full((30, 40, 3), 7, np.uint8)
    np.testing.assert_allclose(segment_image(ShiftModel(), flat, resize_long=20), 7 / 255, atol=1e-5)


def test_crf_settings():
    assert segmentation_crf(None) is None and segmentation_crf(False) is None and segmentation_crf("none") is None
    assert segmentation_crf("toco") == TOCO_SEG_CRF and segmentation_crf("weclip") == WECLIP_CRF
    assert segmentation_crf({"bi_xy": 80}) == {"bi_xy": 80}
    with pytest.raises(ValueError, match="crf = True: name the settings"):
        segmentation_crf(True)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['sigma'\]"):
        segmentation_crf({"sigma": 3})


def test_a_wrong_predict_crf_stops_the_run_before_it_trains(tmp_path):
    recipe = load_recipe("weclip_voc")
    recipe["predict"]["crf"] = True  # what weclip_voc once set: it failed after 30k steps
    with pytest.raises(WSSSError, match=r"\[predict\] crf = True: name the settings"):
        run_recipe(recipe, str(tmp_path / "no-data"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_paper_recipes_predict_as_their_references():
    toco, coco, weclip = load_recipe("toco_voc")["predict"], load_recipe("toco_coco")["predict"], load_recipe("ssr_voc")["predict"]
    assert toco["crf"] == "toco" and "flip_merge" not in toco  # MS + CRF, flips summed, max over scales
    assert (coco["flip_merge"], coco["scale_merge"], coco["crf"]) == ("max", "sum", "toco")
    assert (weclip["resize_long"], weclip["flip_merge"], weclip["scale_merge"]) == (512, "mean", "mean")
    assert "crf" not in weclip
