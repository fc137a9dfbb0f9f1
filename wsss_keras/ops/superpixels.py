"""Superpixels: computed once per dataset, cached on disk, pooled over in `keras.ops`.

SSC's activation self-modulation averages CAMs inside superpixels (spec methods/ssc.md §2.5-2.6)
and SSR's superpixel-guided correction groups them by colour (methods/ssr.md §2.6.3); both read
the maps this module writes.

Algorithm: SLIC (Achanta et al., TPAMI 2012) from scikit-image (`skimage.segmentation.slic`,
on CIE-Lab, `start_label=0`). Why SLIC from scikit-image: SSC's code does not say which
algorithm made its released `voc_superpixels` (spec §2.6, unverified), SSR's paper names SLIC,
and scikit-image's is a plain PyPI wheel that works next to `opencv-python-headless`, where
opencv-contrib's ximgproc would replace the OpenCV package the project depends on. Its
parameters are knobs (`n_segments`, `compactness`, `sigma`); the defaults (200, 10, 1) are
SSR's spec suggestion, not a paper's number.

On disk: one RGB PNG per image, `<name>.png`, holding the 0-based segment id as
R + 256·G + 65536·B: the encoding of SSC's released `voc_superpixels.zip`, so that folder can be
used as a cache as is. Loaded maps are shifted by one, as SSC's loader does, so real segments
are >= 1 and 0 is free for the padding a training crop adds. `superpixels.json` beside the PNGs
records the parameters and the largest id, which fixes the static segment count the pooling op
needs (JAX wants it static).
"""

import json
import os

import cv2
import numpy as np
from keras import ops

from wsss_keras.errors import DataError

META_FILE = "superpixels.json"
SLIC_DEFAULTS = {"n_segments": 200, "compactness": 10.0, "sigma": 1.0}


def slic_superpixels(image, n_segments=200, compactness=10.0, sigma=1.0):
    """SLIC superpixels of an RGB uint8 image: int32 ids 0..K-1, shape (H, W).

    Example:
    >>> import numpy as np
    >>> image = np.zeros((32, 32, 3), "uint8"); image[:, 16:] = 255
    >>> ids = slic_superpixels(image, n_segments=4)
    >>> ids.shape, int(ids.min()), len(np.unique(ids[:, :16])) + len(np.unique(ids[:, 16:])) == len(np.unique(ids))
    ((32, 32), 0, True)
    """
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise DataError("superpixels need scikit-image: pip install scikit-image") from None
    ids = slic(image, n_segments=int(n_segments), compactness=float(compactness), sigma=float(sigma), start_label=0, channel_axis=-1)
    return ids.astype(np.int32)


def encode_ids(ids):
    """0-based ids (H, W) -> RGB uint8 (H, W, 3) with id = R + 256·G + 65536·B."""
    ids = np.asarray(ids, np.int64)
    if ids.min() < 0 or ids.max() >= 1 << 24:
        raise ValueError(f"superpixel ids must lie in [0, 2^24), got [{ids.min()}, {ids.max()}].")
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def decode_ids(rgb):
    """RGB uint8 (H, W, 3) -> int32 ids shifted by one (real segments >= 1, 0 left for padding)."""
    rgb = np.asarray(rgb, np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2] + 1


def write_ids_png(path, ids):
    # Write to a temporary name and rename, so an interrupted run never leaves half a file.
    temporary = f"{path}.tmp.png"
    if not cv2.imwrite(temporary, cv2.cvtColor(encode_ids(ids), cv2.COLOR_RGB2BGR)):
        raise DataError(f"{path}: could not write the superpixel map.")
    os.replace(temporary, path)


def _read_png(path):
    data = cv2.imread(path, cv2.IMREAD_COLOR)
    if data is None:
        raise DataError(f"{path}: not a readable superpixel PNG; delete it and rerun `wsss superpixels`.")
    return decode_ids(cv2.cvtColor(data, cv2.COLOR_BGR2RGB))


def compute_superpixels(dataset, out_dir, n_segments=200, compactness=10.0, sigma=1.0, progress=None, overwrite=False):
    """SLIC superpixels of every image of `dataset`, written to `out_dir`; returns how many
    were computed (images whose PNG is there are skipped, so an interrupted run resumes).

    Args:
        dataset: a `SegmentationDataset`.
        out_dir: the cache folder (`<name>.png` + `superpixels.json`).
        n_segments, compactness, sigma: SLIC's parameters.
        progress: optional callable(done, total).
        overwrite: recompute every image.
    """
    os.makedirs(out_dir, exist_ok=True)
    settings = {"n_segments": int(n_segments), "compactness": float(compactness), "sigma": float(sigma)}
    meta_path = os.path.join(out_dir, META_FILE)
    if os.path.isfile(meta_path) and not overwrite:
        previous = _read_meta(meta_path)
        if {key: previous.get(key) for key in settings} != settings:
            raise DataError(
                f"{out_dir} holds superpixels made with {({key: previous.get(key) for key in settings})}, not {settings}; "
                "give another folder, or pass overwrite (--overwrite) to recompute them."
            )
    written, largest = 0, 0
    for index, name in enumerate(dataset.names):
        path = os.path.join(out_dir, f"{name}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.isfile(path) and not overwrite:
            largest = max(largest, int(_read_png(path).max()))
        else:
            ids = slic_superpixels(dataset.load_image(index), **settings)
            write_ids_png(path, ids)
            largest = max(largest, int(ids.max()) + 1)
            written += 1
        if progress:
            progress(index + 1, len(dataset))
    meta = {"algorithm": "slic (scikit-image)", **settings, "images": len(dataset), "max_id": largest}
    with open(meta_path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
    return written


def _read_meta(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable superpixel metadata ({error}); delete it and rerun `wsss superpixels`.") from None


class SuperpixelCache:
    """The superpixel maps of a folder written by `compute_superpixels` (or SSC's released
    `voc_superpixels`), read per image name.

    Args:
        folder: the cache folder.
        num_segments: the static segment count (largest shifted id + 1). Default: from
            `superpixels.json`; a folder without one (SSC's release) must be given it, or is
            scanned once.

    Example:
    ```python
    cache = SuperpixelCache("runs/ssc/superpixels")
    ids = cache.load("2007_000032")        # int32 (H, W), real segments >= 1
    cache.num_segments                     # bound for superpixel_average
    ```
    """

    def __init__(self, folder, num_segments=None):
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: no superpixel folder; make it with `wsss superpixels DATA --out {folder}`.")
        self.folder = folder
        if num_segments is None:
            meta_path = os.path.join(folder, META_FILE)
            if os.path.isfile(meta_path):
                num_segments = int(_read_meta(meta_path)["max_id"]) + 1
            else:
                pngs = [name for name in os.listdir(folder) if name.endswith(".png")]
                num_segments = 1 + max((int(_read_png(os.path.join(folder, name)).max()) for name in pngs), default=0)
        self.num_segments = int(num_segments)

    def path(self, name):
        return os.path.join(self.folder, f"{name}.png")

    def load(self, name):
        """The shifted ids (H, W) int32 of image `name`, checked against `num_segments`."""
        path = self.path(name)
        if not os.path.isfile(path):
            raise DataError(
                f"{path}: no superpixel map for image {name!r}; compute the split's superpixels with "
                f"`wsss superpixels DATA --split SPLIT --out {self.folder}`."
            )
        ids = _read_png(path)
        if ids.max() >= self.num_segments:
            raise DataError(
                f"{path}: segment id {int(ids.max()) - 1} exceeds the {self.num_segments - 1} the cache's "
                f"{META_FILE} allows; the folder mixes two computations: recompute it with --overwrite."
            )
        return ids


def batch_segment_ids(segment_ids, num_segments):
    """(B, H, W) per-image ids -> flat (B·H·W,) ids offset by b·num_segments, so that one
    `segment_sum` with `B·num_segments` segments serves the whole batch (row b·S + s of its
    result is image b's segment s, and `take(rows, flat_ids)` puts them back on the pixels)."""
    segment_ids = ops.cast(segment_ids, "int32")
    offsets = ops.arange(ops.shape(segment_ids)[0], dtype="int32")[:, None, None] * num_segments
    return ops.reshape(segment_ids + offsets, (-1,))


def superpixel_average(values, segment_ids, num_segments):
    """Replace every pixel's value by the mean of its superpixel, per image and channel.

    Args:
        values: (B, H, W, C) float.
        segment_ids: (B, H, W) int ids in [0, num_segments).
        num_segments: static bound on the ids (per image).

    Returns:
        (B, H, W, C): for pixel p of image b, the mean of `values[b]` over the pixels with
        the same id (segment sums over ids offset by b·num_segments, so one pass serves the
        batch; the reference's dense one-hot matmuls would need (B, C, K, HW) memory).

    Example:
    >>> import numpy as np
    >>> values = np.array([[[[1.0], [3.0]], [[5.0], [7.0]]]], "float32")   # (1, 2, 2, 1)
    >>> ids = np.array([[[0, 0], [1, 2]]], "int32")
    >>> np.asarray(superpixel_average(values, ids, 3))[0, ..., 0].tolist()
    [[2.0, 2.0], [5.0, 7.0]]
    """
    values = ops.convert_to_tensor(values)
    batch, height, width, channels = ops.shape(values)
    flat_ids = batch_segment_ids(segment_ids, num_segments)
    flat_values = ops.reshape(values, (-1, channels))
    total = batch * num_segments
    sums = ops.segment_sum(flat_values, flat_ids, num_segments=total)
    counts = ops.segment_sum(ops.ones_like(flat_ids, dtype=values.dtype), flat_ids, num_segments=total)
    means = sums / ops.maximum(counts, 1e-5)[:, None]
    return ops.reshape(ops.take(means, flat_ids, axis=0), (batch, height, width, channels))
