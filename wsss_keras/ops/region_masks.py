"""SSR's superpixel-guided correction (SGC): colour regions, target regions, token masks.

Spec methods/ssr.md §2.6.3 (paper Eq. 7-8; the formulas and parameters are the spec's
interpretation, each behind a switch):

1. `colour_regions` (NumPy and scikit-learn, data side): K-means over the superpixels' mean
   CIE-Lab colours (optionally with their centroids) groups an image's superpixels into
   `clusters` colour regions. It depends only on the image, so the input pipeline computes it.
2. `target_region_mask` (keras.ops): a region is a target for class c when the share of
   high-confidence activation in it reaches `ratio`, formula "within" (the region's own
   activation as the denominator, spec (a)) or "share" (the image's high-confidence total,
   spec (b)); the result is a pixel mask.
3. `pixel_to_token_mask` pools the pixel mask to the ViT token grid (p x p means, >= 0.5).
4. `correction_mask` combines it with the baseline box mask (`mask_mode` ablation) and falls
   back where a class's mask came out empty.

Region ids in the model: the loader shifts the cluster ids by one, so 0 is the padding a crop
adds and is never a target; real regions are 1..k.
"""

import warnings

import cv2
import numpy as np
from keras import ops

from wsss_keras.ops.superpixels import batch_segment_ids

RATIO_FORMULAS = ("within", "share")
MASK_MODES = ("superpixel", "superpixel_and_box", "superpixel_or_box")
FALLBACKS = ("box", "ones", "none")

# In the denominators of both ratio formulas, as the spec writes it.
RATIO_EPS = 1e-6


def _superpixel_features(image, superpixel_ids, position_weight):
    """(ids (H, W) dense 0..S-1, features (S, F)) for the superpixels of one image."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    _, dense = np.unique(superpixel_ids.reshape(-1), return_inverse=True)
    dense = dense.reshape(-1)
    count = int(dense.max()) + 1
    sizes = np.bincount(dense, minlength=count).astype(np.float64)
    features = np.stack([np.bincount(dense, weights=lab[:, k], minlength=count) for k in range(3)], axis=1)
    features /= sizes[:, None]
    if position_weight:
        height, width = superpixel_ids.shape
        ys, xs = np.divmod(np.arange(height * width), width)
        centroid = np.stack(
            [np.bincount(dense, weights=ys / height, minlength=count), np.bincount(dense, weights=xs / width, minlength=count)],
            axis=1,
        )
        features = np.concatenate([features, centroid / sizes[:, None] * (float(position_weight) * 100.0)], axis=1)
    return dense, features


_THREADS = None


def _one_thread():
    """A context in which OpenMP (scikit-learn's K-means) runs one thread. An image has a few
    hundred superpixels, too few to share out: on 191 superpixels (SLIC n_segments = 200 on a
    500 x 375 image), 8 clusters, 3 restarts, KMeans took 91 ms with its default threads and
    5.4 ms with one (our former NumPy K-means: 14 ms), on a 2-core machine under load."""
    global _THREADS
    if _THREADS is None:
        from threadpoolctl import ThreadpoolController

        _THREADS = ThreadpoolController()
    return _THREADS.limit(limits=1, user_api="openmp")


def _kmeans(features, clusters, iterations, n_init, seed):
    """Cluster ids of `features` (N, F) by scikit-learn's K-means."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    kmeans = KMeans(clusters, init="k-means++", n_init=n_init, max_iter=iterations, random_state=seed, algorithm="lloyd")
    with warnings.catch_warnings(), _one_thread():
        # Fewer distinct colours than clusters (a flat image): the duplicates share a cluster.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return kmeans.fit_predict(features)


def colour_regions(image, superpixel_ids, clusters=8, position_weight=0.0, iterations=20, n_init=3, seed=0):
    """Group an image's superpixels into colour regions by K-means (for the data side).

    Features per superpixel: its mean CIE-Lab colour (cv2 RGB2LAB on float32 image / 255:
    L in 0..100, a and b in about -127..127), plus, when `position_weight` > 0, its centroid
    (y / H, x / W) times position_weight · 100. K-means: scikit-learn's `KMeans` (k-means++
    seeding from `random_state=seed`, at most `iterations` Lloyd steps, `n_init` restarts
    keeping the lowest inertia), on one thread (`_one_thread`).

    Args:
        image: (H, W, 3) uint8 RGB.
        superpixel_ids: (H, W) int >= 0 (any ids; need not be contiguous).
        clusters: k, clipped to the number of superpixels.
        position_weight: weight of the centroid features (0: colour only).
        iterations: the most Lloyd steps per restart (>= 1).
        n_init: restarts.
        seed: the random stream; the result is deterministic for a given seed.

    Returns:
        (H, W) int32 cluster ids 0..k-1 (shift by one for the model, where 0 is padding).

    Example:
    >>> import numpy as np
    >>> image = np.zeros((4, 4, 3), "uint8"); image[:, 2:] = 255
    >>> ids = np.arange(16).reshape(4, 4)
    >>> regions = colour_regions(image, ids, clusters=2)
    >>> bool((regions[:, :2] == regions[0, 0]).all() and (regions[:, 2:] != regions[0, 0]).all())
    True
    """
    image = np.asarray(image)
    superpixel_ids = np.asarray(superpixel_ids)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"colour_regions needs an (H, W, 3) RGB image, got shape {image.shape}.")
    if superpixel_ids.shape != image.shape[:2]:
        raise ValueError(f"superpixel_ids shape {superpixel_ids.shape} does not match the image's {image.shape[:2]}.")
    if superpixel_ids.size and superpixel_ids.min() < 0:
        raise ValueError(f"superpixel ids must be >= 0, got {int(superpixel_ids.min())}.")
    if int(clusters) < 1 or int(n_init) < 1 or int(iterations) < 1:
        raise ValueError(f"colour_regions needs clusters >= 1, n_init >= 1, iterations >= 1; got {clusters}, {n_init}, {iterations}.")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    dense, features = _superpixel_features(image, superpixel_ids, position_weight)
    k = min(int(clusters), len(features))
    best = _kmeans(features, k, int(iterations), int(n_init), int(seed))
    # Renumber by first appearance in raster order, so ids do not depend on the seeding order
    # (and a cluster left empty leaves no gap).
    labels = best[dense]
    present, first = np.unique(labels, return_index=True)
    relabel = np.zeros(k, np.int32)
    relabel[present[np.argsort(first)]] = np.arange(len(present), dtype=np.int32)
    return relabel[labels].reshape(superpixel_ids.shape)


def target_region_mask(cams, regions, num_regions, high=0.4, ratio=0.5, formula="within"):
    """Pixel mask of each class's target regions.

    For image b, class c and region r >= 1, with high(x) = cam(x) · [cam(x) >= high]:
    "within" (spec (a), default): rho = sum_{x in r} high(x) / (sum_{x in r} cam(x) + 1e-6);
    "share" (spec (b)): rho = sum_{x in r} high(x) / (sum_{all x} high(x) + 1e-6).
    Region r is a target of class c when rho >= ratio; region 0 (padding) never is.

    Args:
        cams: (B, H, W, C) in [0, 1] at pixel resolution.
        regions: (B, H, W) int region ids in [0, num_regions), 0 = padding.
        num_regions: static int, the largest id + 1 (e.g. clusters + 1).
        high: the high-confidence threshold θ_h.
        ratio: the target threshold θ_r.
        formula: "within" or "share".

    Returns:
        (B, H, W, C) float mask of 0 / 1 (the dtype of `cams`).

    Example:
    >>> import numpy as np
    >>> cams = np.array([[[[0.9], [0.8]], [[0.1], [0.2]]]], "float32")   # (1, 2, 2, 1)
    >>> regions = np.array([[[1, 1], [2, 2]]], "int32")
    >>> np.asarray(target_region_mask(cams, regions, 3))[0, ..., 0].tolist()
    [[1.0, 1.0], [0.0, 0.0]]
    """
    if formula not in RATIO_FORMULAS:
        raise ValueError(f"unknown ratio formula {formula!r}; use one of {RATIO_FORMULAS}.")
    num_regions = int(num_regions)
    if num_regions < 1:
        raise ValueError(f"num_regions must be >= 1 (the largest region id + 1), got {num_regions}.")
    cams = ops.convert_to_tensor(cams)
    if not str(cams.dtype).startswith(("float", "bfloat")):
        cams = ops.cast(cams, "float32")
    batch, height, width, channels = ops.shape(cams)
    flat_ids = batch_segment_ids(regions, num_regions)
    flat_cams = ops.reshape(cams, (-1, channels))
    strong = flat_cams * ops.cast(flat_cams >= high, cams.dtype)
    total = batch * num_regions
    high_sums = ops.reshape(ops.segment_sum(strong, flat_ids, num_segments=total), (batch, num_regions, channels))
    if formula == "within":
        denominator = ops.reshape(ops.segment_sum(flat_cams, flat_ids, num_segments=total), (batch, num_regions, channels))
    else:
        # Over all pixels of the image, padding included (it holds no activation after a crop).
        denominator = ops.sum(high_sums, axis=1, keepdims=True)
    rho = high_sums / (denominator + RATIO_EPS)
    not_padding = ops.cast(ops.arange(num_regions) > 0, cams.dtype)[None, :, None]
    targets = ops.cast(rho >= ratio, cams.dtype) * not_padding
    pixel_mask = ops.take(ops.reshape(targets, (total, channels)), flat_ids, axis=0)
    return ops.reshape(pixel_mask, (batch, height, width, channels))


def pixel_to_token_mask(pixel_mask, patch_size, threshold=0.5):
    """Pool a pixel mask to the token grid: p x p means (the remainder rows and columns are
    dropped, as the ViT's valid patch convolution drops them), then >= threshold.

    Args:
        pixel_mask: (B, H, W, C) 0 / 1 (or soft).
        patch_size: p, a Python int.
        threshold: the fraction of a patch that must be in.

    Returns:
        (B, H // p, W // p, C) float 0 / 1.

    Example:
    >>> import numpy as np
    >>> mask = np.zeros((1, 4, 4, 1), "float32"); mask[0, :2, :3] = 1
    >>> np.asarray(pixel_to_token_mask(mask, 2))[0, ..., 0].tolist()
    [[1.0, 1.0], [0.0, 0.0]]
    """
    patch = int(patch_size)
    if patch < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size}.")
    mask = ops.convert_to_tensor(pixel_mask)
    if not str(mask.dtype).startswith(("float", "bfloat")):
        mask = ops.cast(mask, "float32")
    height, width = mask.shape[1], mask.shape[2]
    if height is None or width is None:
        raise ValueError("pixel_to_token_mask needs static (H, W); build the function per input shape.")
    rows, cols = height // patch, width // patch
    if rows == 0 or cols == 0:
        raise ValueError(f"a {height} x {width} mask has no whole {patch} x {patch} patch; give a larger mask or a smaller patch_size.")
    batch, channels = ops.shape(mask)[0], ops.shape(mask)[3]
    mask = mask[:, : rows * patch, : cols * patch]
    means = ops.mean(ops.reshape(mask, (batch, rows, patch, cols, patch, channels)), axis=(2, 4))
    return ops.cast(means >= threshold, mask.dtype)


def correction_mask(superpixel_token_mask, box_mask, mode="superpixel", fallback="box"):
    """The token mask SGC propagates with: superpixel targets, optionally combined with the
    baseline box mask, with a fallback for classes whose mask is empty.

    Args:
        superpixel_token_mask: (B, h, w, C) 0 / 1 from `pixel_to_token_mask`.
        box_mask: (B, h, w, C) 0 / 1 from `token_affinity.box_token_mask`.
        mode: "superpixel" (default), "superpixel_and_box", "superpixel_or_box".
        fallback: for an (image, class) whose mask is all zeros: "box" (the box mask),
            "ones" (every token) or "none" (keep it empty).

    Returns:
        (B, h, w, C) float 0 / 1.

    Example:
    >>> import numpy as np
    >>> sp = np.zeros((1, 2, 2, 2), "float32"); sp[0, 0, 0, 0] = 1
    >>> box = np.zeros((1, 2, 2, 2), "float32"); box[0, 1, 1, 1] = 1
    >>> np.asarray(correction_mask(sp, box)).sum(axis=(1, 2)).tolist()
    [[1.0, 1.0]]
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; use one of {MASK_MODES}.")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown mask fallback {fallback!r}; use one of {FALLBACKS}.")
    superpixel = ops.convert_to_tensor(superpixel_token_mask)
    if not str(superpixel.dtype).startswith(("float", "bfloat")):
        superpixel = ops.cast(superpixel, "float32")
    box = ops.cast(box_mask, superpixel.dtype)
    if tuple(superpixel.shape) != tuple(box.shape) or len(superpixel.shape) != 4:
        raise ValueError(f"correction_mask needs two (B, h, w, C) masks of one shape, got {tuple(superpixel.shape)} and {tuple(box.shape)}.")
    superpixel = ops.cast(superpixel > 0, superpixel.dtype)
    box = ops.cast(box > 0, superpixel.dtype)
    if mode == "superpixel":
        mask = superpixel
    elif mode == "superpixel_and_box":
        mask = superpixel * box
    else:
        mask = ops.maximum(superpixel, box)
    if fallback == "none":
        return mask
    empty = ops.cast(ops.max(mask, axis=(1, 2), keepdims=True) <= 0, mask.dtype)
    replacement = box if fallback == "box" else ops.ones_like(mask)
    return mask + empty * replacement
