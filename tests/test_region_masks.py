"""SSR's colour regions (scikit-learn's K-means over superpixel Lab colours), spec ssr.md §2.6.3."""

import cv2
import numpy as np
import pytest

from wsss_keras.ops.region_masks import colour_regions


def two_colour_image():
    """A 24 x 24 image: left half red-ish, right half blue-ish (slight noise), and a grid of
    4 x 4-pixel superpixels (36 of them, 18 per colour)."""
    rng = np.random.default_rng(0)
    image = np.zeros((24, 24, 3), np.uint8)
    image[:, :12] = (200, 40, 30)
    image[:, 12:] = (20, 60, 210)
    image = np.clip(image.astype(int) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
    ids = (np.arange(24)[:, None] // 4) * 6 + np.arange(24)[None, :] // 4
    return image, ids


def test_two_colours_give_two_clusters():
    image, ids = two_colour_image()
    regions = colour_regions(image, ids, clusters=2)
    assert regions.dtype == np.int32 and regions.shape == ids.shape
    assert set(np.unique(regions)) == {0, 1}
    assert len(np.unique(regions[:, :12])) == 1 and len(np.unique(regions[:, 12:])) == 1
    assert regions[0, 0] != regions[0, -1]
    # Superpixels are never split.
    for segment in np.unique(ids):
        assert len(np.unique(regions[ids == segment])) == 1


def test_deterministic_and_clipped_to_superpixel_count():
    image, ids = two_colour_image()
    first = colour_regions(image, ids, clusters=5, seed=3)
    np.testing.assert_array_equal(first, colour_regions(image, ids, clusters=5, seed=3))
    few = np.where(ids < 18, 7, 40)  # two superpixels, non-contiguous ids
    regions = colour_regions(image, few, clusters=8)
    assert set(np.unique(regions)) == {0, 1}
    np.testing.assert_array_equal(regions == regions[0, 0], few == few[0, 0])


def test_clusters_are_kmeans_optimal_on_lab_means():
    # Three well-separated colours, 3 clusters: each cluster holds one colour, and the
    # per-superpixel Lab means are those OpenCV computes.
    image = np.zeros((12, 18, 3), np.uint8)
    colours = [(250, 250, 250), (10, 200, 10), (120, 0, 120)]
    for k, colour in enumerate(colours):
        image[:, 6 * k : 6 * k + 6] = colour
    ids = (np.arange(12)[:, None] // 3) * 6 + np.arange(18)[None, :] // 3
    regions = colour_regions(image, ids, clusters=3, n_init=2)
    for k in range(3):
        assert len(np.unique(regions[:, 6 * k : 6 * k + 6])) == 1
    assert len(np.unique(regions)) == 3
    lab = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    assert lab[..., 0].max() <= 100.5 and lab[..., 1].min() < -50  # the scale the docstring states


def test_position_weight_splits_one_colour_by_place():
    # One flat colour: colour alone cannot separate; with positions, the image splits into a
    # left and a right band (superpixels are full-height strips, so only x varies). Where the
    # cut falls between the six equally spaced strips is K-means' own (3 | 3 is optimal, 2 | 4
    # a fixed point of Lloyd's steps with a strip equidistant from both centres).
    image = np.full((8, 24, 3), 128, np.uint8)
    ids = np.broadcast_to(np.arange(24)[None, :] // 4, (8, 24))
    assert len(np.unique(colour_regions(image, ids, clusters=2))) == 1
    regions = colour_regions(image, ids, clusters=2, position_weight=1.0)
    assert len(np.unique(regions)) == 2
    assert (regions == regions[:1]).all()  # each column one region
    row = regions[0]
    assert row[0] != row[-1] and np.count_nonzero(np.diff(row)) == 1  # two bands, one cut


def test_errors():
    image, ids = two_colour_image()
    with pytest.raises(ValueError):
        colour_regions(image, ids[:, :10])
    with pytest.raises(ValueError):
        colour_regions(image, ids - 1)
    with pytest.raises(ValueError):
        colour_regions(image, ids, clusters=0)
    with pytest.raises(ValueError):
        colour_regions(image, ids, iterations=0)
