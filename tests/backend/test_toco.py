"""ToCo: its new losses and crop sampling against NumPy, one training step with every loss on,
and a CAM pass, on the current backend."""

import keras
import numpy as np
import pytest
from keras import ops

from wsss_keras.backbones.conv_stem import ConvStem
from wsss_keras.backbones.vit.vit_encoder import ViTEncoder
from wsss_keras.data.transforms import ToCoTrainTransform
from wsss_keras.methods.doei import DOEI
from wsss_keras.methods.toco import ToCo, gather_square_crops, sample_local_crops, uncertainty_roi
from wsss_keras.ops.losses import bilateral_affinity, contrastive_token_loss, dense_energy_loss
from wsss_keras.pipelines.inference import MultiScaleCams, MultiScaleSegmentation


def numpy_ctc(teacher, student, flags, temperature):
    """ToCo's CTCLoss_neg written as its loops, including the `for ... else` term."""
    total = 0.0
    for b in range(teacher.shape[0]):
        logits = np.exp(teacher[b] @ student[b].T / temperature)  # T, V
        negatives = logits[:, flags[b] == 0].sum(axis=1)
        loss = np.zeros(teacher.shape[1])
        positives = np.flatnonzero(flags[b])
        for j in positives:
            loss += -np.log(logits[:, j] / (logits[:, j] + negatives + 1e-4))
        loss += -np.log(1.0 / (1.0 + negatives + 1e-4))
        total += loss.sum() / 2 / (len(positives) + 1e-4)
    return total / teacher.shape[0]


def test_contrastive_token_loss_matches_the_reference_loops():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(3, 2, 8)).astype("float32") * 0.5
    student = rng.normal(size=(3, 6, 8)).astype("float32") * 0.5
    flags = np.array([[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], "float32")
    got = float(ops.convert_to_numpy(contrastive_token_loss(teacher, student, flags, 0.5)))
    assert got == pytest.approx(numpy_ctc(teacher, student, flags, 0.5), rel=1e-5)


def test_contrastive_token_loss_does_not_overflow():
    teacher = np.full((1, 2, 4), 30.0, "float32")
    student = np.full((1, 3, 4), 30.0, "float32")
    got = float(ops.convert_to_numpy(contrastive_token_loss(teacher, student, np.array([[1, 1, 0]], "float32"), 0.5)))
    assert np.isfinite(got)


def test_dense_energy_value_and_gradient_direction():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    logits = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    roi = np.ones((2, 8, 8), "float32")
    roi[1, :, 6:] = 0
    unlabelled = np.zeros((2, 8, 8), bool)
    unlabelled[0, :2] = True
    got = float(ops.convert_to_numpy(dense_energy_loss(images, probs, roi, unlabelled, 15.0, 100.0, scale=1.0)))
    # NumPy: the dense bilateral kernel over all pairs, gate from the masked probabilities.
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    xy = np.stack([rows.ravel(), cols.ravel()], -1) / 100.0
    expected = 0.0
    for b in range(2):
        rgb = images[b].reshape(-1, 3) / 15.0
        kernel = np.exp(-0.5 * (((xy[:, None] - xy[None]) ** 2).sum(-1) + ((rgb[:, None] - rgb[None]) ** 2).sum(-1)))
        masked = (probs[b] * roi[b][..., None]).reshape(-1, 3)
        gate = np.where(unlabelled[b], 1.0, roi[b] - probs[b].max(-1)).reshape(-1, 1).clip(0)
        expected -= (masked * (kernel @ masked) * gate).sum()
    assert got == pytest.approx(expected / 2, rel=1e-4)
    kernel = ops.convert_to_numpy(bilateral_affinity(images[:1, :2, :2] * 0 + 10.0, 15.0, 1.0))[0]
    np.testing.assert_allclose(np.diag(kernel), 1.0, rtol=1e-6)


def test_gather_square_crops_equals_slicing():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 12, 10, 3)).astype("float32")
    centres = np.array([[[3, 3], [6, 5]], [[8, 6], [3, 7]]], "int32")
    crops = ops.convert_to_numpy(gather_square_crops(images, centres, 5))
    for b in range(2):
        for n in range(2):
            y, x = centres[b, n]
            np.testing.assert_array_equal(crops[b, n], images[b, y - 2 : y + 3, x - 2 : x + 3])


def test_local_crops_centre_on_uncertain_pixels_and_flag_negatives():
    cams = np.zeros((2, 16, 16, 1), "float32")
    cams[0, 8:, :] = 1.0  # image 0: bottom half certain foreground (ROI 2), top half background
    cams[1] = 0.5  # image 1: all uncertain (ROI 1)
    labels = np.ones((2, 1), "float32")
    roi = ops.convert_to_numpy(uncertainty_roi(cams, labels, 0.7, 0.25))
    assert set(np.unique(roi[0])) == {0.0, 2.0} and set(np.unique(roi[1])) == {1.0}
    images = np.broadcast_to(np.arange(256, dtype="float32").reshape(1, 16, 16, 1), (2, 16, 16, 1))
    crops, positive = sample_local_crops(images, roi, count=3, size=4, negative_ratio=0.2, seed=keras.random.SeedGenerator(0))
    crops, positive = ops.convert_to_numpy(crops), ops.convert_to_numpy(positive)
    centres = crops[..., 2, 2, 0].astype(int)  # the pixel at the crop centre, by its value
    rows, cols = centres // 16, centres % 16
    assert np.all((rows >= 2) & (rows < 14) & (cols >= 2) & (cols < 14))
    assert np.all(rows[0] < 8)  # image 0: only background pixels (ROI 0) qualify
    assert len(set(centres[0])) == 3  # distinct picks
    crop_roi = np.array([[roi[b, r - 2 : r + 2, c - 2 : c + 2].mean() for r, c in zip(rows[b], cols[b])] for b in range(2)])
    np.testing.assert_array_equal(positive, (crop_roi > 0.2).astype("float32"))
    assert positive[1].all()


def tiny_toco(doei=None, losses=None, stem=True, pooling="max"):
    stem_layer = ConvStem((8, 16), convs_per_stage=1) if stem else None
    encoder = ViTEncoder(
        patch_size=4 if stem else 8, hidden_dim=32, num_layers=3, num_heads=2, mlp_dim=64, pos_embed_grid=4,
        image_channels=16 if stem else 3,
    )
    settings = dict(cam_scales=[1.0, 0.5], local_crops=2, local_crop_size=16, seg_start=0, reg_start=0, ptc_box="scaled")
    settings.update(losses or {})
    return ToCo(encoder, 3, stem=stem_layer, decoder_channels=8, decoder_dilation=2, projection=(16, 8, 16),
                losses=settings, doei=doei, max_steps=10, pooling=pooling, class_names=["background", "a", "b", "c"],
                seed=0)


def toco_batch(batch=2, size=32):
    rng = np.random.default_rng(0)
    transform = ToCoTrainTransform(crop_size=size, scale_range=(0.8, 1.2))
    images, boxes, extras = [], [], {"global_view": [], "local_source": []}
    for index in range(batch):
        image = rng.integers(0, 255, size=(28, 36, 3)).astype(np.uint8)
        image[8:20, 10:24] = (220, 40, 40)
        normalised, _, box, extra = transform(np.random.default_rng(index), image)
        images.append(normalised)
        boxes.append(box)
        for key in extras:
            extras[key].append(extra[key])
    targets = {"labels": np.array([[1, 0, 1], [0, 1, 0]][:batch], "float32"), "crop_boxes": np.array(boxes, "int32")}
    targets.update({key: np.stack(value) for key, value in extras.items()})
    return np.stack(images), targets


@pytest.mark.parametrize("with_doei", [False, True])
def test_one_training_step_with_every_loss(with_doei):
    keras.utils.set_random_seed(0)
    model = tiny_toco(DOEI() if with_doei else None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = toco_batch()
    model(images)
    before = [ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    teacher_before = ops.convert_to_numpy(model.teacher_head.fc1.kernel).copy()
    logs = model.train_on_batch(images, targets, return_dict=True)
    assert {"cls_loss", "aux_loss", "ptc_loss", "ctc_loss", "seg_loss", "reg_loss"} <= set(logs)
    assert all(np.isfinite(value) for value in logs.values()), logs
    assert int(ops.convert_to_numpy(model.train_steps)) == 1
    changed = [not np.allclose(b, ops.convert_to_numpy(w)) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), [w.path for w, c in zip(model.trainable_weights, changed) if not c]
    # The teacher head is not trained, only moved toward the student by the EMA (momentum 0.9)
    # before each step's teacher pass: after step 1 it still equals its start (= the student's).
    assert "teacher_head" not in " ".join(w.path for w in model.trainable_weights)
    np.testing.assert_allclose(teacher_before, ops.convert_to_numpy(model.teacher_head.fc1.kernel), atol=1e-8)
    student = ops.convert_to_numpy(model.projection_head.fc1.kernel).copy()
    model.train_on_batch(images, targets)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.teacher_head.fc1.kernel), 0.9 * teacher_before + 0.1 * student, atol=1e-7
    )


def test_evaluate_leaves_the_teacher_and_the_step_counter_alone():
    keras.utils.set_random_seed(0)
    model = tiny_toco()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = toco_batch()
    model(images)
    model.train_on_batch(images, targets)  # the student moves, so an EMA step would move the teacher

    def training_state():
        teacher = [ops.convert_to_numpy(weight).copy() for weight in model.teacher_head.weights]
        return teacher, int(ops.convert_to_numpy(model.train_steps)), ops.convert_to_numpy(model.crop_seed.state).copy()

    teacher, steps, crop_state = training_state()
    first = model.evaluate(images, targets, batch_size=2, verbose=0, return_dict=True)
    second = model.evaluate(images, targets, batch_size=2, verbose=0, return_dict=True)
    after_teacher, after_steps, after_crop_state = training_state()
    for weight, before, after in zip(model.teacher_head.weights, teacher, after_teacher):
        np.testing.assert_array_equal(after, before, err_msg=weight.path)
    assert after_steps == steps == 1
    np.testing.assert_array_equal(after_crop_state, crop_state)
    # Nothing moved, and evaluation's crops come from a fixed seed: the same loss twice.
    assert second["ctc_loss"] == pytest.approx(first["ctc_loss"], rel=1e-6)

    model.train_on_batch(images, targets)
    moved_teacher, moved_steps, moved_crop_state = training_state()
    moved = [not np.allclose(before, after) for before, after in zip(teacher, moved_teacher)]
    assert all(moved), [weight.path for weight, flag in zip(model.teacher_head.weights, moved) if not flag]
    assert moved_steps == 2
    assert not np.array_equal(moved_crop_state, crop_state)


def torch_bilinear(images, size):
    """NumPy bilinear resize of NHWC arrays as PyTorch's align_corners=False does it (half-pixel
    centres, source index clamped at 0, no antialiasing), one interpolation matrix per axis."""

    def matrix(source, target):
        position = np.maximum((np.arange(target) + 0.5) * source / target - 0.5, 0.0)
        low = np.minimum(np.floor(position).astype(int), source - 1)
        high = np.minimum(low + 1, source - 1)
        fraction = position - low
        weights = np.zeros((target, source))
        np.add.at(weights, (np.arange(target), low), 1.0 - fraction)
        np.add.at(weights, (np.arange(target), high), fraction)
        return weights

    rows, cols = matrix(images.shape[1], size[0]), matrix(images.shape[2], size[1])
    return np.einsum("yh,bhwc,xw->byxc", rows, np.asarray(images, "float64"), cols)


def numpy_multiscale_cams(single_scale, images, scales, flip):
    """ToCo's `multi_scale_cam2` from single-scale CAM passes: per scale the CAM of the resized
    image and the un-mirrored CAM of its mirror, each resized to the image, max, ReLU; the sum
    over scales, minus its minimum, over its maximum + 1e-5, per image and class."""
    height, width = images.shape[1:3]
    total = 0.0
    for scale in scales:
        view = images if scale == 1.0 else torch_bilinear(images, (int(scale * height), int(scale * width)))
        cams = torch_bilinear(single_scale(view), (height, width))
        if flip:
            cams = np.maximum(cams, torch_bilinear(single_scale(view[:, :, ::-1]), (height, width))[:, :, ::-1])
        total = total + np.maximum(cams, 0.0)
    total = total - total.min(axis=(1, 2), keepdims=True)
    return total / (total.max(axis=(1, 2), keepdims=True) + 1e-5)


def test_multiscale_cams_match_an_independent_fusion_of_single_scale_passes():
    from wsss_keras.ops.cam import multiscale_cams

    keras.utils.set_random_seed(0)
    model = tiny_toco(stem=False)
    images = np.random.default_rng(3).normal(size=(2, 32, 48, 3)).astype("float32")
    model(images)
    scales = (1.0, 0.5, 1.5)

    def final_cams(view):
        return ops.convert_to_numpy(model.cam_maps(np.ascontiguousarray(view, "float32")))

    def aux_cams(view):
        return ops.convert_to_numpy(model.cam_pair(np.ascontiguousarray(view, "float32"))[1])

    expected = numpy_multiscale_cams(final_cams, images, scales, flip=True)
    assert expected.max() > 0.9 and (expected.std(axis=(1, 2)) > 0.05).all()  # not a flat map
    inference = np.asarray(MultiScaleCams(model, scales=scales, flip=True).predict_on_batch(images))
    np.testing.assert_allclose(inference, expected, atol=2e-4)
    # The training pass's online CAMs (both heads, the tuple path of compute_loss).
    online, online_aux = multiscale_cams(lambda view: model.cam_pair(view), images, scales, True)
    np.testing.assert_allclose(ops.convert_to_numpy(online), expected, atol=2e-4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(online_aux), numpy_multiscale_cams(aux_cams, images, scales, flip=True), atol=2e-4
    )


@pytest.mark.parametrize("weights_from", ["toco_voc", "distinct"])
def test_logged_total_is_the_weighted_sum_of_the_logged_terms(weights_from):
    from wsss_keras.recipes import load_recipe

    if weights_from == "toco_voc":
        weights = {key: value for key, value in load_recipe("toco_voc")["losses"].items() if key.endswith("_weight")}
    else:  # all different, so a swapped or missing weight shows
        weights = dict(cls_weight=0.3, aux_weight=0.7, ptc_weight=0.4, ctc_weight=0.9, seg_weight=0.6, reg_weight=2.0)
    keras.utils.set_random_seed(0)
    # CTC starts later: its term is logged from step 0 but weighs nothing in the total yet.
    model = tiny_toco(losses={**weights, "ctc_start": 5})
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = toco_batch()
    logs = model.train_on_batch(images, targets, return_dict=True)
    active = ("cls", "aux", "ptc", "seg", "reg")
    assert all(logs[f"{name}_loss"] != 0.0 for name in active + ("ctc",)), logs
    expected = sum(weights[f"{name}_weight"] * logs[f"{name}_loss"] for name in active)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_seg_and_reg_are_skipped_until_their_start_step():
    keras.utils.set_random_seed(0)
    model = tiny_toco(losses={"seg_start": 1, "reg_start": 2, "ctc_weight": 0.0, "cam_scales": [1.0], "cam_flip": False})
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = toco_batch()
    model(images)
    decoder_before = [ops.convert_to_numpy(w).copy() for w in model.decoder.weights]
    first = model.train_on_batch(images, targets, return_dict=True)
    # Step 0: neither term computed, so the decoder gets no gradient and stays as it was.
    assert first["seg_loss"] == 0.0 and first["reg_loss"] == 0.0
    for before, weight in zip(decoder_before, model.decoder.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(weight), before)
    model.reset_metrics()
    second = model.train_on_batch(images, targets, return_dict=True)
    # Step 1: both computed (the seg loss is weighted in, reg still weighs zero until step 2).
    assert second["seg_loss"] > 0.0 and second["reg_loss"] != 0.0


def test_ctc_needs_the_extra_views():
    model = tiny_toco()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = toco_batch()
    del targets["global_view"]
    with pytest.raises(ValueError, match="ToCoTrainTransform"):
        model.train_on_batch(images, targets)


def test_local_crops_larger_than_the_training_crop_are_named():
    model = tiny_toco(losses={"local_crop_size": 32})  # the batch's crops are 32 x 32: no centre fits
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, targets = toco_batch()
    with pytest.raises(ValueError, match="local_crop_size=32"):
        model.train_on_batch(images, targets)


def test_cam_pass_and_outputs():
    model = tiny_toco(DOEI(), stem=False)
    images, _ = toco_batch()
    outputs = model(images)
    assert tuple(outputs["logits"].shape) == (2, 3)
    assert tuple(outputs["seg_logits"].shape) == (2, 4, 4, 4)
    cams = np.asarray(MultiScaleCams(model, scales=(1.0, 0.5), flip=True).predict_on_batch(images))
    assert cams.shape == (2, 32, 32, 3)
    assert cams.min() >= 0.0 and cams.max() < 1.0 and cams.max() > 0.9
    eager = ops.convert_to_numpy(model.cam_maps(images))
    assert eager.shape == (2, 4, 4, 3)


def test_inference_wrappers_take_images_of_many_sizes():
    # TensorFlow relaxes a function retraced for a third size to shape None; the wrappers keep
    # one compiled function per shape instead, so every size keeps static shapes.
    model = tiny_toco(stem=False)
    model(np.zeros((1, 32, 32, 3), "float32"))
    segmentation = MultiScaleSegmentation(model, scales=(1.0, 0.5), flip=True)
    cams = MultiScaleCams(model, scales=(1.0, 0.5), flip=True)
    rng = np.random.default_rng(0)
    first = None
    for height, width in ((32, 32), (40, 48), (48, 40), (56, 64), (32, 32)):
        images = rng.normal(size=(1, height, width, 3)).astype("float32")
        logits = np.asarray(segmentation.predict_on_batch(images))
        assert logits.shape == (1, height, width, 4)
        assert np.asarray(cams.predict_on_batch(images)).shape == (1, height, width, 3)
        if first is None:
            first = (images, logits)
    np.testing.assert_allclose(np.asarray(segmentation.predict_on_batch(first[0])), first[1], atol=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown ToCo loss setting"):
        tiny_toco(losses={"ptc_wieght": 0.1})
    with pytest.raises(ValueError, match="ptc_box"):
        tiny_toco(losses={"ptc_box": "both"})


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_image_logits_pool_the_cam(pooling):
    model = tiny_toco(pooling=pooling)
    images, _ = toco_batch()
    outputs = model(images)
    # ToCo pools the features, then classifies (for "avg" that is also the mean of the CAM).
    features = ops.convert_to_numpy(outputs["features"])
    pooled = features.max(axis=(1, 2)) if pooling == "max" else features.mean(axis=(1, 2))
    kernel = ops.convert_to_numpy(model.classifier.kernel)
    np.testing.assert_allclose(ops.convert_to_numpy(outputs["logits"]), pooled @ kernel, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        tiny_toco(pooling="lse")


def test_refined_pseudo_labels_combine_the_two_backgrounds():
    from wsss_keras.ops.cam import refine_pseudo_labels

    # Without PAR iterations and at full size the refinement is the softmax alone, so the labels
    # follow from the CAM values: > 0.7 class, between the two backgrounds ignore, < 0.25 background.
    cams = np.zeros((1, 2, 3, 2), "float32")
    cams[0, 0, :, 0] = [0.9, 0.5, 0.1]
    cams[0, 1, :, 1] = [0.95, 0.95, 0.95]  # class 2 is not in the image: never labelled
    cams[0, 1, :, 0] = [0.3, 0.8, 0.0]
    labels = np.array([[1, 0]], "float32")
    images = np.zeros((1, 2, 3, 3), "float32")
    out = ops.convert_to_numpy(refine_pseudo_labels(images, cams, labels, 0.7, 0.25, down_scale=1, num_iter=0))
    np.testing.assert_array_equal(out[0], [[1, 255, 0], [255, 1, 0]])
    boxed = refine_pseudo_labels(images, cams, labels, 0.7, 0.25, crop_boxes=np.array([[0, 2, 0, 2]]), down_scale=1, num_iter=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(boxed)[0], [[1, 255, 255], [255, 1, 255]])
