"""CAM fusion, CAM thresholds and PAR against hand-computed cases and plain references."""

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from keras import ops

from wsss_keras.ops.cam import cams_to_label_map, cams_to_pseudo_labels, min_max_normalize, multiscale_cams
from wsss_keras.ops.par import NEIGHBOUR_OFFSETS, par_refine, position_affinity


def par_loop_reference(image, masks, dilations, num_iter, w1=0.3, w2=0.01):
    """PAR for one image written pixel by pixel from its equations (H, W, 3), (H, W, K)."""
    height, width = image.shape[:2]
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in NEIGHBOUR_OFFSETS]
    distances = np.array([d * (np.sqrt(2) if dy and dx else 1.0) for d in dilations for dy, dx in NEIGHBOUR_OFFSETS])
    position = -((distances / (distances.std(ddof=1) + 1e-8) / w1) ** 2)
    position = np.exp(position) / np.exp(position).sum()

    def neighbour(array, y, x, oy, ox):
        return array[min(max(y + oy, 0), height - 1), min(max(x + ox, 0), width - 1)]

    affinity = np.zeros((height, width, len(offsets)))
    for y, x in itertools.product(range(height), range(width)):
        values = np.array([neighbour(image, y, x, oy, ox) for oy, ox in offsets])  # K x 3
        spread = values.std(axis=0, ddof=1)
        colour = -((np.abs(values - image[y, x]) / (spread + 1e-8) / w1) ** 2)
        colour = colour.mean(axis=1)
        colour = np.exp(colour - colour.max()) / np.exp(colour - colour.max()).sum()
        affinity[y, x] = colour + w2 * position
    for _ in range(num_iter):
        updated = np.zeros_like(masks)
        for y, x in itertools.product(range(height), range(width)):
            neighbours = np.array([neighbour(masks, y, x, oy, ox) for oy, ox in offsets])  # K x C
            updated[y, x] = (neighbours * affinity[y, x][:, None]).sum(0)
        masks = updated
    return masks


def test_par_matches_the_pixel_loop():
    rng = np.random.default_rng(0)
    image = rng.random((7, 9, 3)).astype("float32")
    masks = rng.random((7, 9, 2)).astype("float32")
    out = ops.convert_to_numpy(par_refine(image[None], masks[None], dilations=(1, 2), num_iter=3))[0]
    np.testing.assert_allclose(out, par_loop_reference(image.astype("float64"), masks.astype("float64"), (1, 2), 3), atol=1e-5)


def test_par_scales_constant_masks_by_one_plus_w2_per_iteration():
    rng = np.random.default_rng(1)
    image = rng.random((1, 12, 12, 3)).astype("float32")
    masks = np.full((1, 12, 12, 3), 0.5, "float32")
    out = ops.convert_to_numpy(par_refine(image, masks, num_iter=4))
    np.testing.assert_allclose(out, 0.5 * 1.01**4, rtol=1e-5)


def test_par_pulls_noisy_scores_to_the_colour_regions():
    rng = np.random.default_rng(2)
    image = np.zeros((1, 24, 24, 3), "float32")
    image[:, :, 12:] = 1.0  # left half black, right half white
    truth = np.zeros((24, 24), int)
    truth[:, 12:] = 1
    scores = np.stack([1.0 - truth, truth], -1)[None].astype("float32") + rng.normal(0, 0.6, (1, 24, 24, 2)).astype("float32")
    before = (scores.argmax(-1)[0] == truth).mean()
    after = (ops.convert_to_numpy(par_refine(image, scores)).argmax(-1)[0] == truth).mean()
    assert before < 0.9 and after > 0.98, (before, after)


def test_position_affinity_hand_computed():
    weights = position_affinity((1,), w1=0.3)
    distances = np.array([np.sqrt(2), 1, np.sqrt(2), 1, 1, np.sqrt(2), 1, np.sqrt(2)])
    logits = -((distances / distances.std(ddof=1) / 0.3) ** 2)
    np.testing.assert_allclose(weights, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5, atol=1e-30)


def test_min_max_normalize():
    cams = np.array([[[[1.0, -2.0]], [[3.0, 2.0]]]], "float32")  # B1 H2 W1 C2
    out = ops.convert_to_numpy(min_max_normalize(cams))
    np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 2.0 / (2.0 + 1e-5)], rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 1], [0.0, 4.0 / (4.0 + 1e-5)], rtol=1e-6)


def torch_multiscale_reference(images, scales):
    """The same fusion with torch's own interpolate, NCHW, for the CAM function x -> x[:, :2] ** 2 - 0.1."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    batch, _, height, width = x.shape
    total = 0
    for scale in scales:
        view = x if scale == 1.0 else F.interpolate(x, size=(int(scale * height), int(scale * width)), mode="bilinear", align_corners=False)
        view = torch.cat([view, view.flip(-1)], 0)
        cams = view[:, :2] ** 2 - 0.1
        cams = F.interpolate(cams, size=(height, width), mode="bilinear", align_corners=False)
        total = total + F.relu(torch.max(cams[:batch], cams[batch:].flip(-1)))
    total = total - total.amin(dim=(2, 3), keepdim=True)
    total = total / (total.amax(dim=(2, 3), keepdim=True) + 1e-5)
    return total.permute(0, 2, 3, 1).numpy()


def test_multiscale_cams_match_torch_interpolation():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 16, 20, 3)).astype("float32")
    cam_function = lambda x: x[..., :2] ** 2 - 0.1
    out = multiscale_cams(cam_function, images, scales=(1.0, 0.5, 1.5))
    np.testing.assert_allclose(ops.convert_to_numpy(out), torch_multiscale_reference(images, (1.0, 0.5, 1.5)), atol=1e-5)
    final, auxiliary = multiscale_cams(lambda x: (cam_function(x), -cam_function(x)), images, scales=(1.0,))
    assert final.shape == auxiliary.shape == (2, 16, 20, 2)


def test_pseudo_labels_thresholds_absent_classes_and_box():
    cams = np.zeros((1, 2, 4, 3), "float32")
    cams[0, 0] = [[0.9, 0.1, 0.0], [0.5, 0.2, 0.0], [0.1, 0.2, 0.0], [0.1, 0.8, 0.95]]
    cams[0, 1] = [[0.26, 0.0, 0.0], [0.7, 0.0, 0.0], [0.71, 0.0, 0.0], [0.0, 0.0, 0.99]]
    labels = np.array([[1.0, 1.0, 0.0]], "float32")  # class 2 is absent: its CAM must not count
    out = ops.convert_to_numpy(cams_to_pseudo_labels(cams, labels, high=0.7, low=0.25))
    np.testing.assert_array_equal(out[0], [[1, 255, 0, 2], [255, 255, 1, 0]])
    boxed = ops.convert_to_numpy(cams_to_pseudo_labels(cams, labels, crop_boxes=np.array([[0, 1, 1, 4]])))
    np.testing.assert_array_equal(boxed[0], [[255, 255, 0, 2], [255, 255, 255, 255]])
    single = ops.convert_to_numpy(cams_to_label_map(cams, labels, background_threshold=0.5))
    np.testing.assert_array_equal(single[0], [[1, 0, 0, 2], [0, 1, 1, 0]])
