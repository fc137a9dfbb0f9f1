"""`wsss cams`, `pseudo-labels` and `predict` end to end on a tiny model and dataset (default backend).

The model is a fixed 1x1 convolution of the image pooled to stride 4, saved as a `.keras` file
and loaded back by the commands, so every stage runs as a user runs it.
"""

import os
import shutil
import sys

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import ops

from helpers import tiny_synthetic
from wsss_keras.cli import cli
from wsss_keras.data import VocDataset
from wsss_keras.data.imageio import read_label_map
from wsss_keras.data.transforms import normalize
from wsss_keras.evaluation.cams import load_cams, save_cams
from wsss_keras.methods.base import WSSSModel
from wsss_keras.pipelines.cams import run_per_image

NUM_CLASSES = 6  # foreground classes of tiny_synthetic
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@keras.saving.register_keras_serializable(package="wsss_tests")
class TinyPipelineModel(WSSSModel):
    """CAMs and segmentation logits: 1x1 convolutions of the image average-pooled to stride 4."""

    def __init__(self, num_classes, segmentation=True, image_mean=MEAN, image_std=STD, **kwargs):
        super().__init__(image_mean=image_mean, image_std=image_std, **kwargs)
        self.num_classes, self.segmentation = num_classes, segmentation
        self.pool = keras.layers.AveragePooling2D(4)
        self.cam_head = keras.layers.Conv2D(num_classes, 1, kernel_initializer=keras.initializers.RandomNormal(seed=1))
        self.seg_head = keras.layers.Conv2D(num_classes + 1, 1, kernel_initializer=keras.initializers.RandomNormal(seed=2))

    def call(self, images):
        pooled = self.pool(images)
        self.seg_head(pooled)  # builds the segmentation head too
        return ops.mean(self.cam_head(pooled), axis=(1, 2))

    def cam_maps(self, images):
        return self.cam_head(self.pool(images))

    def segment_logits(self, images):
        if not self.segmentation:
            return super().segment_logits(images)
        return self.seg_head(self.pool(images))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "segmentation": self.segmentation}


def save_model(path, num_classes=NUM_CLASSES, segmentation=True):
    model = TinyPipelineModel(num_classes, segmentation, class_names=["background"] + [f"c{i}" for i in range(num_classes)])
    model(np.zeros((1, 16, 16, 3), "float32"))
    model.save(path)
    return str(path)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0 and not isinstance(result.exception, (AssertionError, TypeError, AttributeError)), result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny dataset, the saved model, and the CAMs of the train split written by `wsss cams`."""
    base = tmp_path_factory.mktemp("pipelines")
    root = tiny_synthetic(base / "data", n_train=4, n_val=3, size=64)
    model_path = save_model(base / "model.keras")
    cam_dir = base / "cams"
    assert_ok(invoke("cams", model_path, "--data", root, "--out", cam_dir, "--scales", "1.0,0.5"))
    return {"base": base, "root": root, "model": model_path, "cams": str(cam_dir), "train": VocDataset(root, "train")}


def expected_cams(model, image, scales, flip=True):
    """The CAMs the pipeline should write, from the model directly (NumPy fusion, bilinear resizes)."""
    height, width = image.shape[:2]
    x = normalize(image, MEAN, STD)[None]
    total = 0
    for scale in scales:
        view = ops.image.resize(x, (int(scale * height), int(scale * width)), antialias=False)
        cams = ops.image.resize(model.cam_maps(view), (height, width), antialias=False)
        if flip:
            mirrored = ops.image.resize(model.cam_maps(ops.flip(view, axis=2)), (height, width), antialias=False)
            cams = ops.maximum(cams, ops.flip(mirrored, axis=2))
        total = total + np.maximum(ops.convert_to_numpy(cams)[0], 0)
    total = total - total.min(axis=(0, 1))
    return total / (total.max(axis=(0, 1)) + 1e-5)


def test_cams_have_the_image_size_present_classes_and_unit_range(setup):
    dataset = setup["train"]
    model = keras.saving.load_model(setup["model"])
    for index, name in enumerate(dataset.names):
        cams, classes = load_cams(os.path.join(setup["cams"], f"{name}.npz"))
        image = dataset.load_image(index)
        np.testing.assert_array_equal(classes, np.flatnonzero(dataset.labels[index]) + 1)
        assert cams.shape == image.shape[:2] + (classes.size,)
        assert cams.min() >= 0 and cams.max() <= 1
        assert np.all(cams.max(axis=(0, 1)) > 0.95)  # min-max normalised per class
        want = expected_cams(model, image, (1.0, 0.5))[..., classes - 1]
        np.testing.assert_allclose(cams, want, atol=2e-3)


def test_cams_resize_option_still_saves_at_the_image_size(setup, tmp_path):
    assert_ok(invoke("cams", setup["model"], "--data", setup["root"], "--split", "val", "--out", tmp_path, "--resize", "48", "--no-flip", "--scales", "1.0"))
    val = VocDataset(setup["root"], "val")
    for index, name in enumerate(val.names):
        cams, classes = load_cams(os.path.join(tmp_path, f"{name}.npz"))
        assert cams.shape == val.load_image(index).shape[:2] + (classes.size,)


def test_cams_resume_skips_existing_files_and_overwrite_rewrites(setup, tmp_path):
    out = tmp_path / "cams"
    shutil.copytree(setup["cams"], out)
    files = sorted(out.iterdir())
    os.remove(files[0])
    for path in files[1:]:
        os.utime(path, (1_000_000, 1_000_000))
    result = assert_ok(invoke("cams", setup["model"], "--data", setup["root"], "--out", out, "--scales", "1.0,0.5"))
    assert "of 1 images" in result.stdout and "3 already there" in result.stdout
    assert files[0].exists() and all(os.path.getmtime(path) == 1_000_000 for path in files[1:])
    assert_ok(invoke("cams", setup["model"], "--data", setup["root"], "--out", out, "--scales", "1.0,0.5", "--overwrite"))
    assert all(os.path.getmtime(path) != 1_000_000 for path in files[1:])


def write_hand_made_cams(dataset, folder, seed=0):
    """CAMs of random values (plus a map of an absent class, set to 1) for every image."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(dataset.names):
        present = np.flatnonzero(dataset.labels[index]) + 1
        absent = next(c for c in range(1, dataset.num_classes) if c not in present)
        size = dataset.load_image(index).shape[:2]
        cams = np.concatenate([rng.choice([0.1, 0.25, 0.5, 0.75, 0.9], size=size + (present.size,)), np.ones(size + (1,))], -1)
        save_cams(os.path.join(folder, f"{name}.npz"), cams, np.append(present, absent))


def test_threshold_mode_matches_a_hand_computation(setup, tmp_path):
    dataset = setup["train"]
    write_hand_made_cams(dataset, tmp_path / "cams")
    assert_ok(invoke("pseudo-labels", "--data", setup["root"], "--cams", tmp_path / "cams", "--out", tmp_path / "labels", "--mode", "threshold", "--high", "0.7", "--low", "0.25"))
    for index, name in enumerate(dataset.names):
        cams, classes = load_cams(tmp_path / "cams" / f"{name}.npz")
        cams, classes = cams[..., :-1], classes[:-1]  # the absent class's map must not count
        strongest = cams.max(-1)
        want = np.full(strongest.shape, 255, np.uint8)
        want[strongest > 0.7] = classes[cams.argmax(-1)][strongest > 0.7]
        want[strongest <= 0.25] = 0
        got = read_label_map(str(tmp_path / "labels" / f"{name}.png"))
        np.testing.assert_array_equal(got, want)
        assert {0, 255} <= set(np.unique(got))


def noisy_cams_from_truth(dataset, folder, seed=0):
    """CAMs 0.8 on each present class's true pixels, plus speckle noise up to 0.6."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(dataset.names):
        truth = dataset.load_label_map(index)
        present = np.flatnonzero(dataset.labels[index]) + 1
        cams = np.stack([0.8 * (truth == c) for c in present], -1) + rng.uniform(0, 0.6, truth.shape + (present.size,)) * (rng.random(truth.shape + (present.size,)) < 0.15)
        save_cams(os.path.join(folder, f"{name}.npz"), np.clip(cams, 0, 1), present)


def accuracy(folder, dataset):
    """Share of pixels labelled (not 255) and the accuracy on them, against the true label maps."""
    labelled = correct = total = 0
    for index, name in enumerate(dataset.names):
        got, truth = read_label_map(os.path.join(folder, f"{name}.png")), dataset.load_label_map(index)
        keep = (got != 255) & (truth != 255)
        labelled, correct, total = labelled + keep.sum(), correct + (got[keep] == truth[keep]).sum(), total + got.size
        assert set(np.unique(got)) <= {0, 255} | set(np.flatnonzero(dataset.labels[index]) + 1)
    return labelled / total, correct / labelled


def test_par_mode_cleans_speckle_that_thresholds_keep(setup, tmp_path):
    dataset = setup["train"]
    noisy_cams_from_truth(dataset, tmp_path / "cams")
    for mode in ("threshold", "par"):
        assert_ok(invoke("pseudo-labels", "--data", setup["root"], "--cams", tmp_path / "cams", "--out", tmp_path / mode, "--mode", mode))
    labelled_threshold, accuracy_threshold = accuracy(tmp_path / "threshold", dataset)
    labelled_par, accuracy_par = accuracy(tmp_path / "par", dataset)
    assert labelled_par > labelled_threshold  # speckle in the ignore band is resolved
    assert accuracy_par > 0.9 and accuracy_threshold > 0.9


def test_par_mode_runs_on_the_models_cams(setup, tmp_path):
    assert_ok(invoke("pseudo-labels", "--data", setup["root"], "--cams", setup["cams"], "--out", tmp_path, "--mode", "par"))
    dataset = setup["train"]
    for index, name in enumerate(dataset.names):
        got = read_label_map(str(tmp_path / f"{name}.png"))
        assert got.shape == dataset.load_image(index).shape[:2]
        assert set(np.unique(got)) <= {0, 255} | set(np.flatnonzero(dataset.labels[index]) + 1)


def test_crf_mode_follows_the_true_masks(setup, tmp_path):
    dataset = setup["train"]
    noisy_cams_from_truth(dataset, tmp_path / "cams")
    args = ("pseudo-labels", "--data", setup["root"], "--cams", tmp_path / "cams", "--out", tmp_path / "crf", "--mode", "crf")
    assert_ok(invoke(*args))
    labelled, correct = accuracy(tmp_path / "crf", dataset)
    assert labelled > 0.5 and correct > 0.9


def test_crf_mode_without_pydensecrf_is_a_one_line_error(setup, tmp_path, monkeypatch):
    # pydensecrf is in the dev extra; None in sys.modules makes its import fail as without the extra.
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    args = ("pseudo-labels", "--data", setup["root"], "--cams", setup["cams"], "--out", tmp_path, "--mode", "crf")
    assert_one_line_error(invoke(*args), "wsss-keras[crf]")
    args = ("predict", setup["model"], "--data", setup["root"], "--out", tmp_path / "p", "--scales", "1.0", "--crf", "deeplab")
    assert_one_line_error(invoke(*args), "wsss-keras[crf]")


def test_pseudo_labels_resume_and_missing_cams_name_the_image(setup, tmp_path):
    out = tmp_path / "labels"
    args = ["pseudo-labels", "--data", setup["root"], "--cams", tmp_path / "cams", "--out", out, "--mode", "threshold"]
    shutil.copytree(setup["cams"], tmp_path / "cams")
    assert_ok(invoke(*args))
    png = out / f"{setup['train'].names[0]}.png"
    os.utime(png, (1_000_000, 1_000_000))
    os.remove(tmp_path / "cams" / f"{setup['train'].names[0]}.npz")  # its label is done: not needed
    assert "4 already there" in assert_ok(invoke(*args)).stdout and os.path.getmtime(png) == 1_000_000
    missing = setup["train"].names[1]
    os.remove(tmp_path / "cams" / f"{missing}.npz")
    os.remove(out / f"{missing}.png")
    assert_one_line_error(invoke(*args), f"{missing}.npz", "1 image(s)", "wsss cams")
    assert_one_line_error(invoke(*args, "--overwrite"), "2 image(s)")
    assert os.path.getmtime(png) == 1_000_000  # nothing written before the check


def model_argmax(model, image, scales, flip):
    """The label map computed directly from the model's logits (ToCo's fusion)."""
    height, width = image.shape[:2]
    x = normalize(image, MEAN, STD)[None]
    fused = None
    for scale in scales:
        view = ops.image.resize(x, (int(scale * height), int(scale * width)), antialias=False)
        logits = ops.convert_to_numpy(ops.image.resize(model.segment_logits(view), (height, width), antialias=False))[0]
        if flip:
            mirrored = model.segment_logits(ops.flip(view, axis=2))
            logits = logits + ops.convert_to_numpy(ops.image.resize(mirrored, (height, width), antialias=False))[0, :, ::-1]
        fused = logits if fused is None else np.maximum(fused, logits)
    return fused.argmax(-1)


@pytest.mark.parametrize("scales,flip", [((1.0,), False), ((1.0, 1.5), True)])
def test_predict_writes_the_argmax_of_the_logits_and_overlays(setup, tmp_path, scales, flip):
    model = keras.saving.load_model(setup["model"])
    val = VocDataset(setup["root"], "val")
    scale_text = ",".join(map(str, scales))
    assert_ok(invoke("predict", setup["model"], "--data", setup["root"], "--out", tmp_path, "--scales", scale_text, "--flip" if flip else "--no-flip"))
    for index, name in enumerate(val.names):
        image = val.load_image(index)
        got = read_label_map(str(tmp_path / f"{name}.png"))
        np.testing.assert_array_equal(got, model_argmax(model, image, scales, flip))
        overlay = keras.utils.img_to_array(keras.utils.load_img(str(tmp_path / "overlays" / f"{name}.jpg")))
        assert overlay.shape == image.shape


def test_predict_with_crf_refines_the_argmax(setup, tmp_path):
    args = ("predict", setup["model"], "--data", setup["root"], "--out", tmp_path / "crf", "--scales", "1.0", "--no-flip", "--crf", "deeplab")
    assert_ok(invoke(*args))
    assert_ok(invoke("predict", setup["model"], "--data", setup["root"], "--out", tmp_path / "plain", "--scales", "1.0", "--no-flip"))
    val = VocDataset(setup["root"], "val")
    plain = [read_label_map(str(tmp_path / "plain" / f"{name}.png")) for name in val.names]
    refined = [read_label_map(str(tmp_path / "crf" / f"{name}.png")) for name in val.names]
    assert all(r.shape == p.shape and r.max() < val.num_classes for r, p in zip(refined, plain))
    # The CRF smooths the random 1x1-conv labels: fewer label changes between neighbouring pixels.
    edges = lambda m: (m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum()  # noqa: E731
    assert sum(map(edges, refined)) < sum(map(edges, plain))


def test_predict_on_an_image_folder_resumes_and_skips_overlays(setup, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    val = VocDataset(setup["root"], "val")
    for path in val.image_paths:
        shutil.copy(path, images)
    out = tmp_path / "out"
    result = assert_ok(invoke("predict", setup["model"], "--images", images, "--out", out, "--no-overlay", "--scales", "1.0"))
    assert sorted(os.listdir(out)) == sorted(f"{name}.png" for name in val.names)
    assert "of 3 images" in result.stdout
    for path in out.iterdir():
        os.utime(path, (1_000_000, 1_000_000))
    assert "3 already there" in assert_ok(invoke("predict", setup["model"], "--images", images, "--out", out, "--no-overlay")).stdout
    assert all(os.path.getmtime(path) == 1_000_000 for path in out.iterdir())
    assert_ok(invoke("predict", setup["model"], "--images", images, "--out", out, "--no-overlay", "--overwrite"))
    assert all(os.path.getmtime(path) != 1_000_000 for path in out.iterdir() if path.is_file())


def test_bad_models_give_one_line_errors(setup, tmp_path):
    missing = tmp_path / "nowhere.keras"
    assert_one_line_error(invoke("cams", missing, "--data", setup["root"], "--out", tmp_path / "o"), str(missing), "not found")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip archive")
    assert_one_line_error(invoke("predict", corrupt, "--data", setup["root"], "--out", tmp_path / "o"), str(corrupt), "not a Keras model archive")
    cut = tmp_path / "cut.keras"  # a real archive cut short: a zip header, then nothing Keras can read
    cut.write_bytes(open(setup["model"], "rb").read()[:200])
    assert_one_line_error(invoke("predict", cut, "--data", setup["root"], "--out", tmp_path / "o"), str(cut))
    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 1)]).save(plain)
    assert_one_line_error(invoke("cams", plain, "--data", setup["root"], "--out", tmp_path / "o"), str(plain), "WSSSModel")
    no_head = save_model(tmp_path / "no_head.keras", segmentation=False)
    assert_one_line_error(invoke("predict", no_head, "--data", setup["root"], "--out", tmp_path / "o"), "no segmentation head", "pseudo-labels")
    other_classes = save_model(tmp_path / "three.keras", num_classes=3)
    assert_one_line_error(invoke("cams", other_classes, "--data", setup["root"], "--out", tmp_path / "o"), "3 foreground classes")


def test_bad_options_are_usage_errors(setup, tmp_path):
    assert invoke("predict", setup["model"], "--out", tmp_path).exit_code == 2  # neither --data nor --images
    assert invoke("cams", setup["model"], "--data", setup["root"], "--out", tmp_path, "--scales", "1,-2").exit_code == 2
    assert invoke("pseudo-labels", "--data", setup["root"], "--cams", setup["cams"], "--out", tmp_path, "--high", "0.2", "--low", "0.5").exit_code == 2


def test_an_interrupted_image_leaves_no_file(tmp_path):
    def work(index, paths):
        with open(paths[0], "w") as handle:
            handle.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_per_image(["a"], lambda name: [str(tmp_path / f"{name}.png")], work)
    assert os.listdir(tmp_path) == []


def test_crf_without_pydensecrf_says_how_to_install(monkeypatch):
    import sys

    from wsss_keras.errors import WSSSError
    from wsss_keras.ops.crf import dense_crf

    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(WSSSError, match=r"pip install 'wsss-keras\[crf\]'"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 2), 0.5, np.float32))
