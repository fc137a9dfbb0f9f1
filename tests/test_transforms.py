"""OpenCV transforms: crop boxes and ignore padding, nearest labels, normalisation, views."""

import numpy as np
import pytest

from wsss_keras.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CamTrainTransform,
    EvalTransform,
    ToCoTrainTransform,
    TrainTransform,
    colour_jitter,
    denormalize,
    multiscale_flip_views,
    normalize,
    random_crop,
    random_flip,
    rescale,
)


def coordinate_image(height, width):
    """An image whose pixels encode their own coordinates, to track where they went."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([ys, xs, np.full_like(ys, 7)], -1).astype(np.float32)


@pytest.mark.parametrize("shape", [(10, 14), (30, 40), (12, 50)])
def test_random_crop_box_holds_exactly_the_real_pixels(shape):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        image = coordinate_image(*shape)
        labels = np.full(shape, 3, np.uint8)
        crop, crop_labels, (y0, y1, x0, x1) = random_crop(rng, image, labels, 24, image_fill=-1.0)
        assert crop.shape == (24, 24, 3) and crop_labels.shape == (24, 24)
        inside = np.zeros((24, 24), bool)
        inside[y0:y1, x0:x1] = True
        assert (crop[..., 2][inside] == 7).all() and (crop[..., 2][~inside] == -1).all()
        assert (crop_labels[inside] == 3).all() and (crop_labels[~inside] == 255).all()
        # The real pixels are a contiguous window of the source image.
        window = crop[y0:y1, x0:x1]
        assert np.all(np.diff(window[..., 0], axis=0) == 1) and np.all(np.diff(window[..., 1], axis=1) == 1)
        assert (y1 - y0) == min(24, shape[0]) and (x1 - x0) == min(24, shape[1])


def test_rescale_keeps_label_values_and_flip_mirrors_both():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 4, 255], size=(20, 20)).astype(np.uint8)
    image = rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)
    _, scaled = rescale(image, labels, 1.7)
    assert scaled.shape == (34, 34) and set(np.unique(scaled)) <= {0, 4, 255}
    flips = [random_flip(np.random.default_rng(s), image, labels) for s in range(10)]
    assert {flipped for _, _, flipped in flips} == {True, False}
    for out_image, out_labels, flipped in flips:
        expected = labels[:, ::-1] if flipped else labels
        np.testing.assert_array_equal(out_labels, expected)
        np.testing.assert_array_equal(out_image, image[:, ::-1] if flipped else image)


def test_normalize_round_trip_and_values():
    image = np.random.default_rng(1).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    normalised = normalize(image)
    assert normalised.dtype == np.float32
    assert normalised[0, 0, 0] == pytest.approx((image[0, 0, 0] / 255 - 0.485) / 0.229, rel=1e-5)
    np.testing.assert_array_equal(denormalize(normalised), image)


def test_colour_jitter_changes_colours_only():
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    out = colour_jitter(np.random.default_rng(3), image)
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    assert np.array_equal(colour_jitter(np.random.default_rng(3), image), out)  # seeded


def test_train_and_eval_transforms():
    image = np.random.default_rng(4).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    labels = np.ones((40, 60), np.uint8)
    out, out_labels, box = TrainTransform(crop_size=32, scale_range=(0.5, 1.5))(np.random.default_rng(0), image, labels)
    assert out.shape == (32, 32, 3) and out_labels.shape == (32, 32) and out.dtype == np.float32
    assert set(np.unique(out_labels)) <= {1, 255}
    out, out_labels, box = EvalTransform(size=24)(None, image, labels)
    assert out.shape == (24, 24, 3) and box == (0, 24, 0, 24)


def test_multiscale_flip_views():
    image = np.random.default_rng(5).normal(size=(20, 30, 3)).astype(np.float32)
    views = multiscale_flip_views(image, scales=(1.0, 0.5, 1.5), flip=True)
    assert [(s, f) for s, f, _ in views] == [(1.0, False), (1.0, True), (0.5, False), (0.5, True), (1.5, False), (1.5, True)]
    assert views[2][2].shape == (10, 15, 3) and views[4][2].shape == (30, 45, 3)
    np.testing.assert_array_equal(views[1][2], image[:, ::-1])


def toco_views(seed, follow, colour=False):
    """ToCoTrainTransform's main input and local source for one seed (colour changes optional)."""
    image = np.random.default_rng(100).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    options = {} if colour else dict(
        jitter=None, grayscale_probability=0.0, main_blur_probability=0.0, local_blur_probability=0.0,
    )
    transform = ToCoTrainTransform(crop_size=24, scale_range=(0.8, 1.2), local_crops_follow_flip=follow, **options)
    return transform(np.random.default_rng(seed), image, np.zeros((30, 40), np.uint8))


def test_toco_local_source_follows_the_main_flip_when_asked():
    # Without colour changes the local source is the main input's crop itself, so a pixel-wise
    # comparison shows its orientation: ToCo crops it where the main input's CAMs say.
    mirrored = 0
    for seed in range(16):
        main, _, _, extras = toco_views(seed, follow=True)
        np.testing.assert_array_equal(extras["local_source"], main)
        reference_main, _, _, reference_extras = toco_views(seed, follow=False)
        np.testing.assert_array_equal(reference_main, main)
        if not np.array_equal(reference_extras["local_source"], main):
            # The reference's independent flip: then it is the main input's mirror.
            np.testing.assert_array_equal(reference_extras["local_source"], main[:, ::-1])
            mirrored += 1
    assert 0 < mirrored < 16  # the default keeps the reference's behaviour, which mirrors about half


def test_toco_flip_knob_changes_only_the_local_orientation():
    for seed in range(8):
        follow = toco_views(seed, follow=True, colour=True)
        reference = toco_views(seed, follow=False, colour=True)
        np.testing.assert_array_equal(follow[0], reference[0])
        np.testing.assert_array_equal(follow[1], reference[1])
        assert follow[2] == reference[2]
        np.testing.assert_array_equal(follow[3]["global_view"], reference[3]["global_view"])
        local, reference_local = follow[3]["local_source"], reference[3]["local_source"]
        assert np.array_equal(local, reference_local) or np.array_equal(local, reference_local[:, ::-1])
    with pytest.raises(TypeError, match="local_crops_follow_flip='yes'"):
        ToCoTrainTransform(local_crops_follow_flip="yes")


@pytest.mark.parametrize("pad_fill, rgb", [("mean", (124, 116, 104)), ("black", (0, 0, 0))])
def test_cam_transform_pads_with_the_colour_asked_for(pad_fill, rgb):
    """A 20x30 image in a 48 crop: outside the crop box every pixel is the padding colour,
    read back in RGB 0..255 (ImageNet's mean is about (124, 116, 104))."""
    image = np.full((20, 30, 3), 200, np.uint8)
    transform = CamTrainTransform(crop_size=48, long_side=None, flip=False, pad_fill=pad_fill)
    crop, _, (y0, y1, x0, x1) = transform(np.random.default_rng(0), image)
    rgb_crop = (crop * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)) * 255.0
    outside = np.ones(crop.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any() and not outside.all()
    np.testing.assert_allclose(rgb_crop[outside], np.broadcast_to(rgb, rgb_crop[outside].shape), atol=0.6)
    np.testing.assert_allclose(rgb_crop[~outside], 200.0, atol=1e-3)


def test_cam_transform_refuses_an_unknown_pad_fill():
    with pytest.raises(ValueError, match="pad_fill"):
        CamTrainTransform(pad_fill="grey")


def test_multicrop_views_have_dinos_shapes_and_repeat_with_the_seed():
    from wsss_keras.data.transforms import IMAGENET_MEAN, IMAGENET_STD, MultiCropTransform

    image = np.random.default_rng(0).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    transform = MultiCropTransform(global_size=32, local_size=16, local_crops=3)
    first, label_map, box, extras = transform(np.random.default_rng(5), image)
    assert first.shape == extras["global_view"].shape == (32, 32, 3) and label_map is None and box == (0, 32, 0, 32)
    assert extras["local_views"].shape == (3, 16, 16, 3)
    assert not np.allclose(first, extras["global_view"])  # two draws of the crop, not one view twice
    # Normalised with ImageNet's statistics: uint8 0..255 maps into this range.
    low = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    high = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for view in (first, extras["global_view"], *extras["local_views"]):
        assert (view >= low - 1e-5).all() and (view <= high + 1e-5).all()
    again = transform(np.random.default_rng(5), image)
    np.testing.assert_array_equal(again[0], first)
    np.testing.assert_array_equal(again[3]["local_views"], extras["local_views"])
    assert MultiCropTransform(local_crops=0)(np.random.default_rng(0), image)[3]["local_views"].shape == (0, 48, 48, 3)
