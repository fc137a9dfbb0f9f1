"""README.md's "In Python" section, run as written on this backend, so its examples cannot rot.

Its ```python blocks are executed top to bottom in one namespace, with the working directory and
`tempfile`'s folder in a scratch folder; tracebacks point at README.md's own lines. What they
leave behind is then checked against what this test works out by itself: the classes from the
generator's Annotations XML and its label PNGs read with Pillow, the model's `segment_logits` on
an image normalised here, and the exported ONNX file run here with onnxruntime.
"""

import os
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import keras
import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## In Python"
IGNORE = 255
# Pixels whose two best logits are closer than this may flip between runtimes (float32 sums in
# another order); the exporter's own float32 bar on logits is 1e-3.
LOGIT_TOLERANCE = 1e-3


def python_blocks(text):
    """[(line number of the block's first code line, code)] of the section's ```python blocks."""
    lines = text.splitlines()
    start = next((number for number, line in enumerate(lines) if line.strip() == HEADING), None)
    if start is None:
        pytest.fail(f"{README} has no {HEADING!r} heading: this test runs that section's ```python blocks.")
    end = next((number for number in range(start + 1, len(lines)) if lines[number].startswith("## ")), len(lines))
    blocks, current = [], None
    for number in range(start + 1, end):
        line = lines[number]
        if current is None and line.strip() == "```python":
            current = (number + 2, [])  # 1-based number of the next line
        elif current is not None and line.strip() == "```":
            blocks.append((current[0], "\n".join(current[1]) + "\n"))
            current = None
        elif current is not None:
            current[1].append(line)
    if current is not None:
        pytest.fail(f"{README}:{current[0] - 1}: a ```python block of {HEADING!r} is never closed.")
    if not blocks:
        pytest.fail(f"{README}: {HEADING!r} (lines {start + 1}-{end}) has no ```python block.")
    return blocks


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    """The namespace the section's blocks leave, run in a scratch folder."""
    folder = tmp_path_factory.mktemp("readme_python")
    namespace = {"__name__": "readme_in_python"}
    saved_tempdir, saved_cwd = tempfile.tempdir, os.getcwd()
    tempfile.tempdir = str(folder)
    os.chdir(folder)
    try:
        for first_line, code in python_blocks(README.read_text(encoding="utf-8")):
            # Padded so that line numbers in a traceback are README.md's.
            exec(compile("\n" * (first_line - 1) + code, str(README), "exec"), namespace)  # noqa: S102 (the README's own code)
    finally:
        tempfile.tempdir = saved_tempdir
        os.chdir(saved_cwd)
    namespace["scratch"] = folder
    return namespace


def class_names(data_dir):
    return Path(data_dir, "class_names.txt").read_text(encoding="utf-8").split()


def annotated_classes(data_dir, name):
    """The 1-based classes of an image, from its Annotations XML."""
    names = class_names(data_dir)
    root = ElementTree.parse(Path(data_dir, "Annotations", f"{name}.xml")).getroot()
    return sorted({names.index(node.findtext("name")) for node in root.iter("object")})


def png(path):
    return np.asarray(Image.open(path))


def jpeg(path):
    return np.asarray(Image.open(path).convert("RGB"))


def keras_logits(model, image):
    """The model's logits for a uint8 RGB image: normalised here, `segment_logits`, bilinear to
    the image's size."""
    mean = np.asarray(model.image_mean, "float32") * 255.0
    std = np.asarray(model.image_std, "float32") * 255.0
    logits = model.segment_logits(keras.ops.convert_to_tensor(((image.astype("float32") - mean) / std)[None]))
    logits = keras.ops.image.resize(keras.ops.cast(logits, "float32"), image.shape[:2], interpolation="bilinear",
                                    antialias=False)
    return keras.ops.convert_to_numpy(logits)[0]


def clear_pixels(logits):
    """Where the two best logits are far enough apart for the labels to be compared."""
    ordered = np.sort(logits, axis=-1)
    return ordered[..., -1] - ordered[..., -2] > LOGIT_TOLERANCE


def test_examples_work_in_their_scratch_folder(readme):
    workdir = Path(readme["workdir"])
    assert workdir.parent == readme["scratch"], "the examples should write under tempfile.mkdtemp()"
    for path in ("synth/JPEGImages", "model.keras", "cams", "pseudo_labels", "onnx/model.onnx", "onnx/manifest.json"):
        assert (workdir / path).exists(), path
    assert tuple(readme["train_set"].class_names) == tuple(class_names(readme["data_dir"]))


def test_cams_are_the_annotated_classes_at_image_size(readme):
    data_dir, train_set = readme["data_dir"], readme["train_set"]
    for name in train_set.names:
        image = jpeg(Path(data_dir, "JPEGImages", f"{name}.jpg"))
        with np.load(Path(readme["cam_dir"], f"{name}.npz")) as archive:
            cams, classes = archive["cams"].astype("float32"), archive["classes"]
        present = annotated_classes(data_dir, name)
        assert classes.tolist() == present, name
        assert cams.shape == image.shape[:2] + (len(present),), name
        assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0, name
    first = train_set.names[0]
    assert readme["classes"].tolist() == annotated_classes(data_dir, first)
    assert readme["cams"].shape == jpeg(Path(data_dir, "JPEGImages", f"{first}.jpg")).shape[:2] + (len(readme["classes"]),)


def test_pseudo_labels_hold_present_classes_background_or_ignore(readme):
    data_dir, train_set = readme["data_dir"], readme["train_set"]
    for name in train_set.names:
        labels = png(Path(readme["label_dir"], f"{name}.png"))
        truth = png(Path(data_dir, "SegmentationClass", f"{name}.png"))  # the generator's mask
        assert labels.shape == truth.shape, name
        assert set(np.unique(labels).tolist()) <= {0, IGNORE, *annotated_classes(data_dir, name)}, name
    np.testing.assert_array_equal(readme["pseudo_label"], png(Path(readme["label_dir"], f"{train_set.names[0]}.png")))


def test_prediction_is_the_models_own_logits(readme):
    model, image, logits, label_map = readme["model"], readme["image"], readme["logits"], readme["label_map"]
    count = len(class_names(readme["data_dir"]))
    assert image.dtype == np.uint8 and image.shape[-1] == 3
    assert logits.shape == image.shape[:2] + (count,)
    assert label_map.shape == image.shape[:2]
    assert 0 <= label_map.min() and label_map.max() < count
    np.testing.assert_allclose(logits, keras_logits(model, image), atol=1e-4)


def test_onnx_export_agrees_with_the_keras_model(readme):
    import onnxruntime

    data_dir, model = readme["data_dir"], readme["model"]
    export_dir = Path(readme["export_dir"])
    assert readme["manifest"]["classes"] == class_names(data_dir)
    session = onnxruntime.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    val_names = Path(data_dir, "ImageSets", "Segmentation", "val.txt").read_text(encoding="utf-8").split()
    for name in val_names:
        image = jpeg(Path(data_dir, "JPEGImages", f"{name}.jpg"))  # the network's size: its resize is the identity
        logits, labels = session.run(["logits", "labels"], {"image": image[None]})
        reference = keras_logits(model, image)
        np.testing.assert_allclose(logits[0], reference, atol=LOGIT_TOLERANCE, err_msg=name)
        clear = clear_pixels(reference)
        assert clear.mean() > 0.5, f"{name}: the logits are nearly tied almost everywhere; nothing to compare"
        np.testing.assert_array_equal(labels[0][clear], reference.argmax(-1)[clear], err_msg=name)
    # The README's own run, on its image: the same labels as its Keras prediction.
    clear = clear_pixels(readme["logits"])
    np.testing.assert_array_equal(readme["onnx_labels"][0][clear], readme["label_map"][clear])
    # Any size in: the graph resizes to the network's input and back.
    other = np.asarray(Image.fromarray(readme["image"]).resize((48, 80), Image.BILINEAR))
    (labels,) = session.run(["labels"], {"image": other[None]})
    assert labels.shape == (1, 80, 48) and labels.max() < len(class_names(data_dir))


def test_the_segmenter_is_the_exported_graph_in_keras_and_survives_saving(readme):
    import onnxruntime

    image, model = readme["image"], readme["model"]
    reference = keras_logits(model, image)  # the network's size: the graph's resize is the identity
    clear = clear_pixels(reference)
    assert readme["labels"].shape == (1,) + image.shape[:2] and readme["labels"].dtype == np.uint8
    np.testing.assert_array_equal(readme["labels"][0][clear], reference.argmax(-1)[clear])
    np.testing.assert_array_equal(readme["reloaded_labels"], readme["labels"])
    # The ONNX file (traced from the same graph on TensorFlow) gives those labels.
    session = onnxruntime.InferenceSession(str(Path(readme["export_dir"]) / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_labels,) = session.run(["labels"], {"image": image[None]})
    np.testing.assert_array_equal(onnx_labels[0][clear], readme["labels"][0][clear])
    # Another size: resized to the network's input inside, labels back at the image's size.
    other = np.asarray(Image.fromarray(image).resize((48, 80), Image.BILINEAR))
    labels = readme["reloaded"].predict(other[None], verbose=0)["labels"]
    (onnx_other,) = session.run(["labels"], {"image": other[None]})
    assert labels.shape == (1, 80, 48)
    assert (labels == onnx_other).mean() > 0.99
