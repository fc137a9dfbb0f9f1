"""Bad input stops with one line naming the file and the fix, in the API and in the CLI."""

import os

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import tiny_synthetic, write_split
from wsss_keras.cli import cli
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_image
from wsss_keras.errors import DataError


@pytest.fixture()
def root(tmp_path):
    return tiny_synthetic(tmp_path / "synth")


def run_cli(*args):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    message = result.output.strip()
    for fragment in fragments:
        assert fragment in message, message


def test_missing_image_listed_in_split(root):
    os.remove(os.path.join(root, "JPEGImages", "train_00002.jpg"))
    with pytest.raises(DataError, match=r"train\.txt: 1 listed images not found: .*train_00002\.jpg.*remove their ids"):
        VocDataset(root, "train")
    result = run_cli("data", "stats", root, "--split", "train")
    assert_one_line_error(result, "train_00002.jpg", "split file")


def test_corrupt_jpeg(root):
    path = os.path.join(root, "JPEGImages", "train_00001.jpg")
    with open(path, "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    dataset = VocDataset(root, "train")
    with pytest.raises(DataError, match=r"train_00001\.jpg: cannot decode this image"):
        dataset.load_image(1)
    result = run_cli("data", "check", root, "--split", "train")
    assert_one_line_error(result, "train_00001.jpg: cannot decode", "1 of 6 images have problems")


def test_truncated_png_label_map(root):
    path = os.path.join(root, "SegmentationClassAug", "train_00003.png")
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    dataset = VocDataset(root, "train")
    with pytest.raises(DataError, match=r"train_00003\.png: cannot decode this label map"):
        dataset.load_label_map(3)
    result = run_cli("data", "check", root, "--split", "train")
    assert_one_line_error(result, "train_00003.png: cannot decode this label map")


def test_mask_value_not_a_class(root):
    path = os.path.join(root, "SegmentationClassAug", "train_00000.png")
    with Image.open(path) as png:
        labels = np.array(png)
        palette = png.getpalette()
    labels[0, 0] = 42  # the dataset has 7 classes
    out = Image.fromarray(labels, mode="P")
    out.putpalette(palette)
    out.save(path)
    with pytest.raises(DataError, match=r"train_00000\.png: label value\(s\) 42 are not classes \(0\.\.6\) nor 255"):
        VocDataset(root, "train").load_label_map(0)
    result = run_cli("data", "check", root, "--split", "train")
    assert_one_line_error(result, "label value(s) 42")


def test_unknown_class_name_in_xml(root):
    path = os.path.join(root, "Annotations", "train_00004.xml")
    text = open(path, encoding="utf-8").read()
    first_name = text.split("<name>")[1].split("</name>")[0]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(f"<name>{first_name}</name>", "<name>unicorn</name>", 1))
    with pytest.raises(DataError, match=r"train_00004\.xml: object name 'unicorn' is not a class.*class_names\.txt"):
        VocDataset(root, "train")
    result = run_cli("data", "stats", root, "--split", "train")
    assert_one_line_error(result, "train_00004.xml", "'unicorn'")


def test_empty_split(root):
    write_split(root, "empty", [])
    with pytest.raises(DataError, match=r"empty\.txt: the split file is empty"):
        VocDataset(root, "empty")
    result = run_cli("data", "stats", root, "--split", "empty")
    assert_one_line_error(result, "empty.txt: the split file is empty")


def test_missing_split_file(root):
    with pytest.raises(DataError, match=r"nosuch\.txt: split file not found"):
        VocDataset(root, "nosuch")


def test_label_map_size_differs_from_image(root):
    path = os.path.join(root, "SegmentationClassAug", "train_00005.png")
    with Image.open(path) as png:
        png.resize((10, 10)).save(path)
    with pytest.raises(DataError, match=r"train_00005\.png: label map is 10x10 but its image .* is 64x64"):
        VocDataset(root, "train").load_item(5)


def test_xml_with_broken_syntax(root):
    with open(os.path.join(root, "Annotations", "train_00000.xml"), "w", encoding="utf-8") as handle:
        handle.write("<annotation><object><name>boat</name>")
    with pytest.raises(DataError, match=r"train_00000\.xml: cannot parse this annotation XML"):
        VocDataset(root, "train")


def test_cls_labels_missing_entry(root, tmp_path):
    table = dict(np.load(os.path.join(root, "cls_labels.npy"), allow_pickle=True).item())
    del table["train_00001"]
    path = str(tmp_path / "cls.npy")
    np.save(path, table)
    with pytest.raises(DataError, match=r"cls\.npy: no entry for image 'train_00001'"):
        VocDataset(root, "train", labels_from="cls_labels", cls_labels=path)


def cut_file(path, keep):
    """Keep the first `keep` bytes of `path` (a download or copy cut short); return the whole."""
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:keep])
    return data


def test_truncated_jpeg_is_refused_everywhere(root):
    path = os.path.join(root, "JPEGImages", "train_00002.jpg")
    whole = cut_file(path, None)
    cut_file(path, len(whole) // 2)  # cut inside the entropy-coded data
    # OpenCV's imread decodes it anyway (grey-filled), so the old reader let it through.
    assert cv2.imread(path, cv2.IMREAD_COLOR).shape == (64, 64, 3)
    with pytest.raises(DataError, match=r"train_00002\.jpg: cannot decode this image: the file is truncated"):
        read_image(path)
    dataset = VocDataset(root, "train")
    with pytest.raises(DataError, match=r"train_00002\.jpg: .*truncated"):
        dataset.load_image(2)
    result = run_cli("data", "check", root, "--split", "train")
    assert_one_line_error(result, "train_00002.jpg: cannot decode this image: the file is truncated", "1 of 6 images")

    from wsss_keras.data.loader import SegmentationLoader

    with pytest.raises(DataError, match=r"train_00002\.jpg: .*truncated"):
        SegmentationLoader(dataset, 6)[0]


def test_jpeg_cut_in_its_header_or_after_a_thumbnail_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    jpeg = encoded.tobytes()
    # An EXIF-style APP1 segment holding a whole thumbnail JPEG, whose own FF D9 must not count.
    app1 = b"\xff\xe1" + (2 + 6 + len(jpeg)).to_bytes(2, "big") + b"Exif\x00\x00" + jpeg
    with_thumbnail = jpeg[:2] + app1 + jpeg[2:]
    for name, data in (("header.jpg", jpeg[:40]), ("thumbnail.jpg", with_thumbnail[: len(with_thumbnail) - 100])):
        path = str(tmp_path / name)
        with open(path, "wb") as handle:
            handle.write(data)
        with pytest.raises(DataError, match=rf"{name}: cannot decode this image: the file is truncated"):
            read_image(path)
    # Complete files still read, with or without bytes after the end-of-image marker.
    for name, data in (("whole.jpg", with_thumbnail), ("padded.jpg", jpeg + b"\x00" * 64 + b"trailer")):
        path = str(tmp_path / name)
        with open(path, "wb") as handle:
            handle.write(data)
        expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(read_image(path), expected)


def test_png_image_without_its_end_chunk_is_refused(tmp_path):
    path = str(tmp_path / "image.png")
    cv2.imwrite(path, np.full((16, 16, 3), 200, np.uint8))
    whole = cut_file(path, -12)  # drop the IEND chunk: the pixels are all there, the file is not
    assert whole.endswith(b"IEND\xaeB`\x82")
    with pytest.raises(DataError, match=r"image\.png: cannot decode this image: the file is truncated"):
        read_image(path)
