"""Positional-embedding interpolation matrices against torch.nn.functional.interpolate."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_keras.backbones.pos_embed import MODES, interpolation_matrix


def _resize_numpy(grid, size, mode):
    """Apply the separable matrices to a (H0, W0, D) grid."""
    matrix_h = interpolation_matrix(grid.shape[0], size[0], mode)
    matrix_w = interpolation_matrix(grid.shape[1], size[1], mode)
    return np.einsum("ih,jw,hwd->ijd", matrix_h, matrix_w, grid.astype(np.float64))


def _torch_reference(grid, size, mode):
    tensor = torch.from_numpy(grid).permute(2, 0, 1)[None].double()
    if mode == "bicubic":  # ToCo / timm / HF ViT: size-based
        out = F.interpolate(tensor, size=size, mode="bicubic", align_corners=False)
    elif mode == "bicubic_dino":  # DINO: scale-factor-based coordinates
        n0 = grid.shape[0]
        out = F.interpolate(tensor, scale_factor=((size[0] + 0.1) / n0, (size[1] + 0.1) / n0), mode="bicubic")
    else:  # CLIP / WeCLIP
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source,size", [(14, (10, 17)), (4, (10, 17)), (14, (28, 28)), (4, (3, 2)), (14, (32, 20))])
def test_matrices_match_torch_interpolate(mode, source, size):
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(source, source, 6))
    ours = _resize_numpy(grid, size, mode)
    reference = _torch_reference(grid, size, mode)
    assert reference.shape == ours.shape
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_dino_and_size_based_bicubic_differ():
    """The two bicubic conventions really are different functions (so the modes matter)."""
    difference = np.abs(interpolation_matrix(14, 20, "bicubic") - interpolation_matrix(14, 20, "bicubic_dino")).max()
    assert difference > 1e-3


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_identity_at_native_size(mode):
    np.testing.assert_allclose(interpolation_matrix(14, 14, mode), np.eye(14), atol=1e-12)


def test_rows_sum_to_one_and_bad_mode():
    for mode in MODES:
        assert np.allclose(interpolation_matrix(7, 23, mode).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="bicubic_dino"):
        interpolation_matrix(4, 5, "nearest")
    assert math.isclose(interpolation_matrix(1, 3, "bilinear").sum(), 3.0)
