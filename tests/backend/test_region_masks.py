"""SSR's target regions and token masks (spec ssr.md §2.6.3) against hand-computed ratios and
NumPy loops."""

import numpy as np
import pytest
from keras import ops

from wsss_keras.ops.region_masks import (
    correction_mask,
    pixel_to_token_mask,
    target_region_mask,
)


def hand_made():
    # One image, 2 x 4 pixels; region 0 (padding) at (0, 0), region 1: three pixels, region 2: four.
    regions = np.array([[[0, 1, 2, 2], [1, 1, 2, 2]]], np.int32)
    cams = np.zeros((1, 2, 4, 2), np.float32)
    cams[0, :, :, 0] = [[1.0, 0.9, 0.45, 0.3], [0.5, 0.2, 0.3, 0.3]]
    return cams, regions  # class 1 is all zero


def test_within_formula_by_hand():
    cams, regions = hand_made()
    # Region 1: high = 0.9 + 0.5 = 1.4 over 1.6 -> 0.875; region 2: 0.45 over 1.35 -> 0.333.
    mask = ops.convert_to_numpy(target_region_mask(cams, regions, 3, high=0.4, ratio=0.5))
    expected = (regions[0] == 1).astype(np.float32)
    np.testing.assert_array_equal(mask[0, :, :, 0], expected)
    np.testing.assert_array_equal(mask[0, :, :, 1], 0)  # no activation: rho = 0
    assert mask[0, 0, 0, 0] == 0  # the padding pixel (rho would be 1) is never a target
    # Between the two ratios: 0.3 takes region 2 too; 0.9 takes neither.
    both = ops.convert_to_numpy(target_region_mask(cams, regions, 3, ratio=0.3))
    np.testing.assert_array_equal(both[0, :, :, 0], (regions[0] > 0).astype(np.float32))
    none = ops.convert_to_numpy(target_region_mask(cams, regions, 3, ratio=0.9))
    assert none.sum() == 0


def test_share_formula_by_hand():
    cams, regions = hand_made()
    # All high activation: 1.0 (padding) + 1.4 + 0.45 = 2.85; region 1: 0.491, region 2: 0.158.
    at_half = ops.convert_to_numpy(target_region_mask(cams, regions, 3, ratio=0.5, formula="share"))
    assert at_half.sum() == 0
    mask = ops.convert_to_numpy(target_region_mask(cams, regions, 3, ratio=0.45, formula="share"))
    np.testing.assert_array_equal(mask[0, :, :, 0], (regions[0] == 1).astype(np.float32))
    low = ops.convert_to_numpy(target_region_mask(cams, regions, 3, ratio=0.15, formula="share"))
    np.testing.assert_array_equal(low[0, :, :, 0], (regions[0] > 0).astype(np.float32))
    with pytest.raises(ValueError):
        target_region_mask(cams, regions, 3, formula="ratio")


def numpy_target_mask(cams, regions, num_regions, high, ratio, formula):
    out = np.zeros_like(cams)
    for b in range(cams.shape[0]):
        for c in range(cams.shape[3]):
            cam = cams[b, :, :, c].astype(np.float64)
            strong = cam * (cam >= high)
            for r in range(1, num_regions):
                inside = regions[b] == r
                denominator = cam[inside].sum() if formula == "within" else strong.sum()
                if strong[inside].sum() / (denominator + 1e-6) >= ratio:
                    out[b, :, :, c][inside] = 1
    return out


def test_random_batch_matches_loop():
    rng = np.random.default_rng(0)
    cams = rng.random((3, 6, 7, 4)).astype(np.float32) ** 2
    regions = rng.integers(0, 5, (3, 6, 7)).astype(np.int32)
    for formula, ratio in (("within", 0.5), ("share", 0.2)):
        result = ops.convert_to_numpy(target_region_mask(cams, regions, 6, high=0.4, ratio=ratio, formula=formula))
        expected = numpy_target_mask(cams, regions, 6, 0.4, ratio, formula)
        np.testing.assert_array_equal(result, expected)
        assert 0 < expected.sum() < expected.size


def test_pixel_to_token_mask_matches_loop():
    rng = np.random.default_rng(1)
    for patch, shape in ((2, (2, 9, 7, 3)), (4, (1, 17, 12, 2))):
        mask = (rng.random(shape) > 0.5).astype(np.float32)
        result = ops.convert_to_numpy(pixel_to_token_mask(mask, patch))
        rows, cols = shape[1] // patch, shape[2] // patch
        assert result.shape == (shape[0], rows, cols, shape[3])
        for b in range(shape[0]):
            for y in range(rows):
                for x in range(cols):
                    for c in range(shape[3]):
                        block = mask[b, y * patch : (y + 1) * patch, x * patch : (x + 1) * patch, c]
                        assert result[b, y, x, c] == float(block.mean() >= 0.5)
    # Exactly half a patch counts (>=); a stricter threshold drops it.
    half = np.zeros((1, 2, 2, 1), np.float32)
    half[0, 0] = 1
    assert ops.convert_to_numpy(pixel_to_token_mask(half, 2))[0, 0, 0, 0] == 1
    assert ops.convert_to_numpy(pixel_to_token_mask(half, 2, threshold=0.6))[0, 0, 0, 0] == 0
    with pytest.raises(ValueError):
        pixel_to_token_mask(half, 3)


def numpy_correction(superpixel, box, mode, fallback):
    out = np.zeros_like(superpixel)
    for b in range(superpixel.shape[0]):
        for c in range(superpixel.shape[3]):
            s, x = superpixel[b, :, :, c], box[b, :, :, c]
            m = {"superpixel": s, "superpixel_and_box": s * x, "superpixel_or_box": np.maximum(s, x)}[mode]
            if m.sum() == 0:
                m = {"box": x, "ones": np.ones_like(m), "none": m}[fallback]
            out[b, :, :, c] = m
    return out


def test_correction_modes_and_fallbacks():
    superpixel = np.zeros((2, 3, 3, 4), np.float32)
    box = np.zeros((2, 3, 3, 4), np.float32)
    superpixel[0, :2, :2, 0] = 1  # class 0: both, overlapping
    box[0, 1:, 1:, 0] = 1
    box[0, :, 0, 1] = 1  # class 1: box only
    superpixel[0, 0, 2, 2] = 1  # class 2: disjoint
    box[0, 2, 0, 2] = 1
    # class 3 and all of image 1: empty (image 1 gets one superpixel-only class).
    superpixel[1, 2, 2, 3] = 1
    for mode in ("superpixel", "superpixel_and_box", "superpixel_or_box"):
        for fallback in ("box", "ones", "none"):
            result = ops.convert_to_numpy(correction_mask(superpixel, box, mode=mode, fallback=fallback))
            np.testing.assert_array_equal(result, numpy_correction(superpixel, box, mode, fallback), err_msg=f"{mode} {fallback}")
    default = ops.convert_to_numpy(correction_mask(superpixel, box))
    np.testing.assert_array_equal(default[0, :, :, 0], superpixel[0, :, :, 0])
    np.testing.assert_array_equal(default[0, :, :, 1], box[0, :, :, 1])  # fell back to the box
    anded = ops.convert_to_numpy(correction_mask(superpixel, box, "superpixel_and_box", "ones"))
    assert anded[0, 1, 1, 0] == 1 and anded[0, :, :, 0].sum() == 1
    np.testing.assert_array_equal(anded[0, :, :, 2], 1)  # disjoint -> empty -> all ones
    for mode, fallback in (("box", "box"), ("superpixel", "zeros")):
        with pytest.raises(ValueError):
            correction_mask(superpixel, box, mode, fallback)
