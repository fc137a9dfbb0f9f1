"""Superpixels on disk (SLIC, SSC's RGB id encoding, the cache) and their alignment with crops."""

import json
import os

import numpy as np
import pytest

from helpers import tiny_synthetic
from wsss_keras.data import VocDataset
from wsss_keras.data.loader import SegmentationLoader
from wsss_keras.data.transforms import CamTrainTransform
from wsss_keras.errors import DataError
from wsss_keras.ops.superpixels import META_FILE, SuperpixelCache, compute_superpixels, decode_ids, encode_ids, slic_superpixels


def test_rgb_encoding_round_trip_and_shift():
    ids = np.array([[0, 1, 255], [256, 65535, 70000]], np.int32)
    rgb = encode_ids(ids)
    assert rgb.dtype == np.uint8 and rgb[1, 0].tolist() == [0, 1, 0]
    # SSC's loader reads R + 256 G + 65536 B + 1: real segments >= 1, 0 left for padding.
    assert (decode_ids(rgb) == ids + 1).all()
    with pytest.raises(ValueError, match="2\\^24"):
        encode_ids(np.array([[-1]]))


def test_slic_follows_a_colour_edge():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = (200, 40, 40)
    ids = slic_superpixels(image, n_segments=8, compactness=10.0, sigma=0.0)
    left, right = set(np.unique(ids[:, :20])), set(np.unique(ids[:, 20:]))
    assert ids.shape == (40, 40) and ids.dtype == np.int32 and ids.min() == 0
    assert not left & right  # no superpixel straddles the edge


def test_compute_superpixels_caches_resumes_and_refuses_other_settings(tmp_path):
    dataset = VocDataset(tiny_synthetic(tmp_path / "data", n_train=3, size=48), "train")
    folder = str(tmp_path / "sp")
    seen = []
    assert compute_superpixels(dataset, folder, n_segments=16, progress=lambda done, total: seen.append((done, total))) == 3
    assert seen[-1] == (3, 3)
    with open(os.path.join(folder, META_FILE)) as handle:
        meta = json.load(handle)
    assert meta["n_segments"] == 16 and meta["images"] == 3
    cache = SuperpixelCache(folder)
    maps = [cache.load(name) for name in dataset.names]
    assert max(int(m.max()) for m in maps) == meta["max_id"] == cache.num_segments - 1
    assert all(m.min() >= 1 and m.shape == dataset.load_image(i).shape[:2] for i, m in enumerate(maps))
    # Resume: nothing recomputed, and the bound is still known.
    os.remove(os.path.join(folder, META_FILE))
    assert compute_superpixels(dataset, folder, n_segments=16) == 0
    assert SuperpixelCache(folder).num_segments == cache.num_segments
    with pytest.raises(DataError, match="n_segments"):
        compute_superpixels(dataset, folder, n_segments=32)
    assert compute_superpixels(dataset, folder, n_segments=32, overwrite=True) == 3


def test_cache_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="wsss superpixels"):
        SuperpixelCache(str(tmp_path / "missing"))
    folder = tmp_path / "sp"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "a.png"), encode_ids(np.array([[0, 5]]))[..., ::-1])
    cache = SuperpixelCache(str(folder))  # SSC's released folders have no metadata: scanned
    assert cache.num_segments == 7 and cache.load("a").tolist() == [[1, 6]]
    with pytest.raises(DataError, match="b.png.*wsss superpixels"):
        cache.load("b")
    with pytest.raises(DataError, match="exceeds"):
        SuperpixelCache(str(folder), num_segments=4).load("a")
    (folder / "c.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="c.png.*not a readable"):
        cache.load("c")


def test_cam_transform_carries_maps_through_resize_flip_and_crop():
    # The map holds each pixel's own coordinates; after the transform, the map must still match
    # the image pixel for pixel (image channels 0/1 encode row/column too).
    height, width = 40, 60
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows * 4, cols * 4, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    coordinates = (rows * width + cols + 1).astype(np.int32)
    transform = CamTrainTransform(crop_size=48, long_side=(60, 60), mean=(0, 0, 0), std=(1 / 255,) * 3)
    for seed in range(6):
        out, _, box, extras = transform(np.random.default_rng(seed), image, None, maps={"superpixels": coordinates})
        cropped = extras["superpixels"]
        assert cropped.shape == (48, 48) and cropped.dtype == np.int32
        y0, y1, x0, x1 = box
        assert (cropped[:y0] == 0).all() and (cropped[y1:] == 0).all()  # padding is segment 0
        inside = cropped[y0:y1, x0:x1] - 1
        out = np.round(out)
        assert (out[y0:y1, x0:x1, 0] == (inside // width) * 4).all()
        assert (out[y0:y1, x0:x1, 1] == (inside % width) * 4).all()
    # The same seed gives the same image with or without maps (the maps replay the crop's draws).
    plain = transform(np.random.default_rng(3), image, None)
    with_maps = transform(np.random.default_rng(3), image, None, maps={"superpixels": coordinates})
    assert np.array_equal(plain[0], with_maps[0]) and plain[2] == with_maps[2]


def test_loader_batches_superpixels_as_int32(tmp_path):
    dataset = VocDataset(tiny_synthetic(tmp_path / "data", n_train=4, size=48), "train")
    folder = str(tmp_path / "sp")
    compute_superpixels(dataset, folder, n_segments=16)
    cache = SuperpixelCache(folder)
    loader = SegmentationLoader(
        dataset, 2, CamTrainTransform(crop_size=32, long_side=(40, 56)), shuffle=True,
        item_maps=lambda index: {"superpixels": cache.load(dataset.names[index])},
    )
    images, targets = loader[0]
    assert images.shape == (2, 32, 32, 3) and targets["superpixels"].shape == (2, 32, 32)
    assert targets["superpixels"].dtype == np.int32 and 0 <= targets["superpixels"].min()
    assert targets["superpixels"].max() < cache.num_segments
