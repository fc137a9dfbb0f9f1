"""Resizing a positional-embedding grid to any patch grid, exactly as the references do.

The references resize the table of patch positions in three different ways, and the
differences are large enough to change CAMs, so each is reproduced exactly:

- `"bicubic"`: PyTorch `F.interpolate(size=(h, w), mode="bicubic", align_corners=False)`,
  Keys cubic with a = -0.75, source coordinates from the size ratio. ToCo/timm, and
  Hugging Face `ViTModel(interpolate_pos_encoding=True)` in transformers 5.x.
- `"bicubic_dino"`: DINO's `F.interpolate(scale_factor=((h + 0.1)/H0, (w + 0.1)/W0),
  mode="bicubic")`: the same kernel, but source coordinates come from the scale factor
  (`src = (dst + 0.5)·H0/(h + 0.1) − 0.5`), so the result differs from `"bicubic"` at the
  same output size. DINO returns the table untouched when the grid is the native square
  one; so does this mode.
- `"bilinear"`: CLIP as used by WeCLIP, `F.interpolate(size=(h, w), mode="bilinear",
  align_corners=False)`: half-pixel centres, negative source coordinates clamped to 0, no
  antialiasing.

`keras.ops.image.resize` cannot be used for bicubic: its kernel follows each backend
(a = -0.5 on TensorFlow and JAX, -0.75 on PyTorch). Instead each axis gets an
interpolation matrix `M` of shape (out, in) built in NumPy (float64, cached per size) and
the grid is resized as `M_h · grid · M_wᵀ` with `keras.ops.matmul`. That is exact,
identical on every backend, differentiable with respect to the table (it may be learnable)
and exports as two MatMuls. When the grid size is only known at run time (a TensorFlow
graph traced with unknown image size) the same matrices are built with `keras.ops`.
"""

import functools

import numpy as np
from keras import ops

MODES = ("bicubic", "bicubic_dino", "bilinear")
_CUBIC_A = -0.75  # PyTorch's bicubic constant (Keys); TF/JAX/PIL use -0.5


def _cubic_weights(t, a=_CUBIC_A):
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t (array)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size, out_size, mode):
    """The (out_size, in_size) float64 matrix that resizes one axis as the reference does.

    Args:
        in_size: int, length of the axis in the stored table.
        out_size: int, wanted length.
        mode: one of `MODES`.
            For `"bicubic_dino"` the scale factor is `(out_size + 0.1) / in_size`.

    Returns:
        np.ndarray of shape (out_size, in_size); read-only (it is cached).

    Example:
    >>> m = interpolation_matrix(4, 7, "bicubic")
    >>> m.shape
    (7, 4)
    """
    if mode not in MODES:
        raise ValueError(f"Unknown positional-embedding resize mode {mode!r}; choose one of {MODES}.")
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise ValueError(f"Grid sizes must be positive, got in_size={in_size}, out_size={out_size}.")
    dst = np.arange(out_size, dtype=np.float64)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    if mode == "bilinear":
        src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
        low = np.floor(src).astype(np.int64)
        frac = src - low
        high = np.minimum(low + 1, in_size - 1)
        np.add.at(matrix, (rows, low), 1.0 - frac)
        np.add.at(matrix, (rows, high), frac)
    else:
        if mode == "bicubic":
            scale = in_size / out_size
        else:  # DINO: PyTorch uses 1 / scale_factor when a scale factor is given
            scale = in_size / (out_size + 0.1)
        src = (dst + 0.5) * scale - 0.5  # no clamping for cubic, as in PyTorch
        base = np.floor(src).astype(np.int64)
        weights = _cubic_weights(src - base)
        for offset, weight in zip((-1, 0, 1, 2), weights):
            np.add.at(matrix, (rows, np.clip(base + offset, 0, in_size - 1)), weight)
    matrix.setflags(write=False)
    return matrix


def _interpolation_matrix_ops(in_size, out_size, mode, dtype):
    """`interpolation_matrix` built with keras.ops, for an output size known only at run time."""
    out_size = ops.cast(out_size, "int32")
    dst = ops.cast(ops.arange(out_size), "float32")
    out_float = ops.cast(out_size, "float32")
    if mode == "bilinear":
        src = ops.maximum((dst + 0.5) * (in_size / out_float) - 0.5, 0.0)
        low = ops.floor(src)
        frac = src - low
        low = ops.cast(low, "int32")
        high = ops.minimum(low + 1, in_size - 1)
        matrix = ops.one_hot(low, in_size) * (1.0 - frac)[:, None] + ops.one_hot(high, in_size) * frac[:, None]
    else:
        scale = in_size / out_float if mode == "bicubic" else in_size / (out_float + 0.1)
        src = (dst + 0.5) * scale - 0.5
        base = ops.floor(src)
        weights = _cubic_weights(src - base)
        base = ops.cast(base, "int32")
        matrix = 0.0
        for offset, weight in zip((-1, 0, 1, 2), weights):
            index = ops.clip(base + offset, 0, in_size - 1)
            matrix = matrix + ops.one_hot(index, in_size) * weight[:, None]
    return ops.cast(matrix, dtype)


def _is_static(value):
    return isinstance(value, (int, np.integer))


def resize_grid_embedding(table, source_grid, target_grid, mode):
    """Resize a `(H0·W0, D)` table of patch positions to `(h·w, D)`, row-major.

    Args:
        table: tensor `(H0·W0, D)` (or `(1, H0·W0, D)`), the patch rows of the positional
            embedding without class rows.
        source_grid: (H0, W0) python ints, the grid the table was trained on.
        target_grid: (h, w), python ints or (TensorFlow graphs) scalar tensors.
        mode: one of `MODES`.

    Returns:
        tensor `(h·w, D)` (or `(1, h·w, D)` when `table` had a leading 1), same dtype.

    Example:
    >>> table = keras.random.normal((16, 8))
    >>> tuple(resize_grid_embedding(table, (4, 4), (3, 5), "bicubic").shape)
    (15, 8)
    """
    if mode not in MODES:
        raise ValueError(f"Unknown positional-embedding resize mode {mode!r}; choose one of {MODES}.")
    source_h, source_w = (int(v) for v in source_grid)
    target_h, target_w = target_grid
    static = _is_static(target_h) and _is_static(target_w)
    if static and (int(target_h), int(target_w)) == (source_h, source_w):
        return table  # identity at the native grid for every mode (DINO returns its table as is)
    leading = len(table.shape) == 3
    dim = table.shape[-1]
    dtype = table.dtype
    grid = ops.reshape(table, (source_h, source_w * dim))
    if static:
        matrix_h = ops.convert_to_tensor(np.asarray(interpolation_matrix(source_h, int(target_h), mode)), dtype=dtype)
        matrix_w = ops.convert_to_tensor(np.asarray(interpolation_matrix(source_w, int(target_w), mode)), dtype=dtype)
    else:
        matrix_h = _interpolation_matrix_ops(source_h, target_h, mode, dtype)
        matrix_w = _interpolation_matrix_ops(source_w, target_w, mode, dtype)
    grid = ops.matmul(matrix_h, grid)  # (h, W0·D)
    grid = ops.reshape(grid, (-1, source_w, dim))  # (h, W0, D)
    grid = ops.transpose(grid, (1, 0, 2))  # (W0, h, D)
    grid = ops.reshape(grid, (source_w, -1))  # (W0, h·D)
    grid = ops.matmul(matrix_w, grid)  # (w, h·D)
    grid = ops.reshape(grid, (target_w, -1, dim))  # (w, h, D)
    grid = ops.transpose(grid, (1, 0, 2))  # (h, w, D)
    grid = ops.reshape(grid, (-1, dim))
    return ops.expand_dims(grid, 0) if leading else grid
