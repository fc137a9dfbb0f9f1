"""DeepLab-v2 (the final segmentation network of the multi-stage methods): ASPP against separate
convs, the MSC loss against NumPy with PIL-resized labels, one GroupedSGD step, and a .keras
round trip, on the current backend."""

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from wsss_keras.backbones.resnet import build
from wsss_keras.methods.segmenter import ASPPSum, DeepLabV2, build_deeplab_v2, resize_labels_nearest
from wsss_keras.ops.cam import resize_bilinear
from wsss_keras.training.optimizers import GroupedSGD
from wsss_keras.training.schedules import PolyWarmup

TINY = {"block_counts": (1, 1, 1, 1), "base_width": 8}


def tiny_model(**kwargs):
    keras.utils.set_random_seed(0)
    return build_deeplab_v2(4, backbone_kwargs=TINY, **kwargs)


def batch(height=33, width=41, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, height, width, 3)).astype("float32")
    labels = rng.integers(0, 4, size=(2, height, width)).astype("int32")
    labels[rng.random(labels.shape) < 0.2] = 255
    return images, labels


def numpy_ce(logits, labels):
    """torch's CrossEntropyLoss(ignore_index=255): mean over labelled pixels."""
    logits = logits.astype("float64")
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    valid = labels != 255
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -picked[valid].mean()


def pil_nearest(labels, height, width):
    """deeplab-pytorch's resize_labels: PIL NEAREST per image."""
    resized = [Image.fromarray(m.astype("uint8")).resize((width, height), Image.NEAREST) for m in labels]
    return np.stack([np.asarray(m) for m in resized])


def test_aspp_sum_shape_init_and_branch_sum():
    keras.utils.set_random_seed(0)
    aspp = ASPPSum(5, rates=(1, 2, 3), name="aspp")
    features = np.random.default_rng(0).normal(size=(2, 6, 7, 16)).astype("float32")
    aspp.build(features.shape)
    kernels = [ops.convert_to_numpy(k) for k in aspp.kernels]
    assert all(abs(k.std() - 0.01) < 0.002 for k in kernels) and not np.allclose(kernels[0], kernels[1])
    assert all(np.all(ops.convert_to_numpy(b) == 0) for b in aspp.biases)
    for bias in aspp.biases:
        bias.assign(np.random.default_rng(1).normal(size=(5,)).astype("float32"))
    output = ops.convert_to_numpy(aspp(features))
    assert output.shape == (2, 6, 7, 5)
    expected = 0.0
    for rate, kernel, bias in zip(aspp.rates, aspp.kernels, aspp.biases):
        conv = keras.layers.Conv2D(5, 3, dilation_rate=rate, padding="same")
        conv.build(features.shape)
        conv.set_weights([ops.convert_to_numpy(kernel), ops.convert_to_numpy(bias)])
        expected = expected + ops.convert_to_numpy(conv(features))
    np.testing.assert_allclose(output, expected, atol=1e-5)
    paths = [w.path for w in aspp.weights]
    assert sum("aspp/bias" in p for p in paths) == 3 and sum("aspp/kernel" in p for p in paths) == 3
    assert ASPPSum.from_config(aspp.get_config()).rates == (1, 2, 3)


def test_default_aspp_on_a_small_map():
    aspp = ASPPSum(3)  # rates 6..24 exceed the 5x6 map: the taps fall on padding
    assert tuple(aspp(np.ones((1, 5, 6, 8), "float32")).shape) == (1, 5, 6, 3)


@pytest.mark.parametrize("sizes", [((33, 41), (5, 6)), ((17, 12), (9, 30)), ((8, 8), (8, 8))])
def test_nearest_label_resize_is_pils(sizes):
    (height, width), (new_height, new_width) = sizes
    labels = np.random.default_rng(3).integers(0, 256, size=(2, height, width)).astype("int32")
    got = ops.convert_to_numpy(resize_labels_nearest(labels, (new_height, new_width)))
    np.testing.assert_array_equal(got, pil_nearest(labels, new_height, new_width))


def test_logits_shape_at_output_stride_8():
    model = tiny_model()
    images, _ = batch()
    assert model.output_stride == 8
    assert tuple(model.segment_logits(images).shape) == (2, 5, 6, 4)  # ceil(33 / 8), ceil(41 / 8)
    outputs = model(images, training=True)
    assert [tuple(t.shape) for t in outputs["scale_logits"]] == [(2, 5, 6, 4), (2, 2, 3, 4), (2, 3, 4, 4)]


def test_msc_loss_is_the_sum_of_four_cross_entropies():
    model = tiny_model()  # all BatchNorm frozen: training and inference passes agree
    images, labels = batch()
    outputs = model(images, training=True)
    scale_logits = [ops.convert_to_numpy(t) for t in outputs["scale_logits"]]
    fused = ops.convert_to_numpy(outputs["logits"])
    upsampled = [ops.convert_to_numpy(resize_bilinear(ops.convert_to_tensor(t), (5, 6))) for t in scale_logits[1:]]
    np.testing.assert_allclose(fused, np.maximum(scale_logits[0], np.maximum(*upsampled)), atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(model.segment_logits(images)), fused, atol=1e-5)
    expected = sum(numpy_ce(t, pil_nearest(labels, t.shape[1], t.shape[2])) for t in scale_logits + [fused])
    loss = model.compute_loss(images, {"label_maps": labels}, outputs)
    assert float(ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-5)


def test_without_msc_the_loss_is_plain_cross_entropy():
    model = tiny_model(msc_scales=())
    images, labels = batch()
    outputs = model(images, training=True)
    assert len(outputs["scale_logits"]) == 1
    logits = ops.convert_to_numpy(outputs["logits"])
    loss = float(ops.convert_to_numpy(model.compute_loss(images, {"label_maps": labels}, outputs)))
    assert loss == pytest.approx(numpy_ce(logits, pil_nearest(labels, 5, 6)), rel=1e-5)

    upsampling = tiny_model(msc_scales=(), loss_resolution="labels")
    logits = upsampling(images, training=True)
    full = ops.convert_to_numpy(resize_bilinear(logits["logits"], (33, 41)))
    loss = float(ops.convert_to_numpy(upsampling.compute_loss(images, labels, logits)))
    assert loss == pytest.approx(numpy_ce(full, labels), rel=1e-5)


def test_one_grouped_sgd_step_trains_aspp_and_backbone():
    model = tiny_model()
    optimizer = GroupedSGD(
        PolyWarmup(0.01, 0, 100), lr_multipliers=model.lr_multipliers, momentum=0.9, weight_decay=5e-4,
        weight_decay_multipliers=model.weight_decay_multipliers,
    )
    model.compile(optimizer=optimizer)
    images, labels = batch()
    trainable = {w.path: ops.convert_to_numpy(w).copy() for w in model.trainable_weights}
    frozen = {w.path: ops.convert_to_numpy(w).copy() for w in model.non_trainable_weights}
    assert any("stem_conv" in path for path in trainable) and any("aspp/bias" in path for path in trainable)
    assert not any("_bn" in path or "/bn" in path for path in trainable)  # all BatchNorm frozen
    logs = model.train_on_batch(images, {"label_maps": labels}, return_dict=True)
    assert np.isfinite(logs["loss"])
    for weight in model.trainable_weights:
        assert not np.allclose(trainable[weight.path], ops.convert_to_numpy(weight)), weight.path
    for weight in model.non_trainable_weights:
        np.testing.assert_array_equal(frozen[weight.path], ops.convert_to_numpy(weight))
    multipliers = {w.path: optimizer.multiplier_for(w) for w in model.trainable_weights}
    assert {m for p, m in multipliers.items() if "aspp/bias" in p} == {20.0}
    assert {m for p, m in multipliers.items() if "aspp/kernel" in p} == {10.0}
    assert {m for p, m in multipliers.items() if "aspp" not in p} == {1.0}
    decays = {w.path: optimizer.weight_decay_for(w) for w in model.trainable_weights}
    assert {d for p, d in decays.items() if "aspp/bias" in p} == {0.0}
    assert {d for p, d in decays.items() if "aspp/bias" not in p} == {5e-4}


def test_save_and_load_give_identical_logits(tmp_path):
    model = tiny_model(class_names=["background", "a", "b", "c"], recipe={"method": "deeplab_v2"})
    images, _ = batch(24, 24)
    before = ops.convert_to_numpy(model.segment_logits(images))
    path = tmp_path / "deeplab.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DeepLabV2)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.segment_logits(images)), before)
    assert loaded.class_names == ["background", "a", "b", "c"] and loaded.recipe == {"method": "deeplab_v2"}
    assert loaded.msc_scales == (0.5, 0.75) and loaded.backbone.frozen_batchnorm == "all"
    optimizer = GroupedSGD(1e-3, lr_multipliers=loaded.lr_multipliers)
    assert optimizer.multiplier_for(loaded.aspp.biases[0]) == 20.0


def test_bad_arguments_name_the_fix():
    backbone = build("resnet50", **TINY, output_stride=8, dilation="uniform")
    with pytest.raises(ValueError, match="exclude 1.0"):
        DeepLabV2(backbone, 4, msc_scales=(1.0, 0.5))
    with pytest.raises(ValueError, match="loss_resolution='pixels'"):
        DeepLabV2(backbone, 4, loss_resolution="pixels")
    with pytest.raises(ValueError, match="counts background"):
        DeepLabV2(backbone, 4, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct positive"):
        ASPPSum(4, rates=(6, 6))
    model = DeepLabV2(backbone, 4, msc_scales=())
    images, _ = batch()
    with pytest.raises(ValueError, match="label_maps"):
        model.compute_loss(images, {"labels": np.zeros((2, 3))}, model(images, training=True))
