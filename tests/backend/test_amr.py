"""AMR on the current backend: the Gaussian projection and its stop-gradient, the AMM's gates on
hand-set weights, per-image CAMs (each image's gates see only it and its mirror, as in the
reference's CAM pass), the cross-branch loss in both pairings, which parts train, and .keras
round trips (spec methods/amr.md §2.3-2.5, §3.2, §4.1)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from wsss_keras.backbones.resnet import build
from wsss_keras.methods.amr import AMM, AMR, BatchStatNorm, CamNetwork, SpatialGate, gaussian_projection
from wsss_keras.pipelines.inference import MultiScaleCams
from wsss_keras.training.optimizers import GroupedSGD, path_multiplier

TINY = {"block_counts": (1, 1, 1, 1), "base_width": 8, "output_stride": 8}


def numpy_gaussian(values):
    values = np.asarray(values, np.float64)
    mean, std = values.mean(), values.std(ddof=1)
    return np.exp(-((values - mean) ** 2) / (2 * std**2)) / (math.sqrt(2 * math.pi) * std)


def gradient(function, value):
    """d sum(function(x)) / dx at `value`, with the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(value)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(function(x))
        return tape.gradient(total, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda x: function(x).sum())(value))
    import torch

    x = torch.tensor(value, requires_grad=True)
    function(x).sum().backward()
    return x.grad.numpy()


def test_gaussian_projection_is_the_density_with_unbiased_batch_statistics():
    values = np.random.default_rng(0).normal(1.0, 2.0, size=(3, 7)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(gaussian_projection(values)), numpy_gaussian(values), rtol=1e-5)


def test_gaussian_projection_treats_mean_and_std_as_constants():
    values = np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    weights = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    got = gradient(lambda x: ops.multiply(gaussian_projection(x), ops.convert_to_tensor(weights)), values)
    # With mu and sigma held constant, dG/da = -(a - mu) / sigma^2 * G(a).
    mean, std = values.mean(), values.std(ddof=1)
    expected = weights * -(values - mean) / std**2 * numpy_gaussian(values)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # Through mu and sigma the gradient would differ: the full derivative is not this one.
    assert np.abs(expected.sum()) > 1e-3


def test_amm_gates_on_hand_set_weights():
    x = np.array(
        [[[[1.0, 2.0], [0.5, 0.0]], [[3.0, 1.0], [2.0, 2.0]]], [[[0.0, 1.0], [1.0, 4.0]], [[2.0, 0.5], [1.5, 1.0]]]],
        "float32",
    )  # (B=2, H=2, W=2, C=2)
    amm = AMM(2, reduction=1, kernel_size=3)
    amm.build(x.shape)
    gate = amm.channel_gate
    gate.squeeze.set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    gate.excite.set_weights([np.array([[1.0, 0.5], [0.0, 1.0]], "float32"), np.array([0.1, -0.2], "float32")])
    kernel = np.zeros((3, 3, 2, 1), "float32")
    kernel[1, 1, 0, 0], kernel[1, 1, 1, 0], kernel[1, 2, 0, 0] = 1.0, -0.5, 0.25  # centre max, centre mean, right max
    amm.spatial_gate.conv.set_weights([kernel])
    amm.spatial_gate.norm.set_weights([np.array([2.0], "float32"), np.array([0.3], "float32")])

    # Channel gate by hand: GAP -> ReLU(I x) -> W2 x + b -> density over the 2 x 2 logits.
    pooled = x.mean(axis=(1, 2))
    logits = np.maximum(pooled, 0) @ np.array([[1.0, 0.5], [0.0, 1.0]]) + np.array([0.1, -0.2])
    x1 = x * numpy_gaussian(logits)[:, None, None, :]
    # Spatial gate: conv of [max, mean] (zero padding), batch-statistics norm, density over B*H*W.
    maximum, mean = x1.max(-1), x1.mean(-1)
    padded = np.pad(maximum, ((0, 0), (0, 0), (0, 1)))
    conv = maximum - 0.5 * mean + 0.25 * padded[:, :, 1:]
    normed = 2.0 * (conv - conv.mean()) / np.sqrt(conv.var() + 1e-5) + 0.3
    expected = x1 * numpy_gaussian(normed)[..., None]
    np.testing.assert_allclose(ops.convert_to_numpy(amm(x)), expected, rtol=1e-4, atol=1e-6)


def test_spatial_gate_amplitude_is_set_by_gamma_alone():
    # Spec §2.5: with batch statistics, s ≈ exp(-z²/2) / (sqrt(2π)|γ|), z the standardised conv.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 24, 24, 6)).astype("float32")  # large: the unbiased std differs by 1/(2N)
    gate = SpatialGate()
    gate.build(x.shape)
    gate.norm.set_weights([np.array([1.7], "float32"), np.array([5.0], "float32")])
    pooled = np.concatenate([x.max(-1, keepdims=True), x.mean(-1, keepdims=True)], -1)
    conv = ops.convert_to_numpy(gate.conv(pooled))
    z = (conv - conv.mean()) / np.sqrt(conv.var() + 1e-5)
    expected = x * np.exp(-(z**2) / 2) / (math.sqrt(2 * math.pi) * 1.7)
    np.testing.assert_allclose(ops.convert_to_numpy(gate(x)), expected, rtol=1e-3, atol=1e-5)


def test_paired_statistics_are_each_image_and_its_mirror_alone():
    # Rows i and B + i (an image and its mirror) share statistics computed from those two rows only.
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(6, 5)).astype("float32")  # B = 3 pairs of channel-gate logits
    expected = np.empty_like(logits)
    for i in range(3):
        expected[[i, i + 3]] = numpy_gaussian(logits[[i, i + 3]])
    np.testing.assert_allclose(ops.convert_to_numpy(gaussian_projection(logits, paired=True)), expected, rtol=1e-5)

    maps = rng.normal(size=(4, 3, 5, 1)).astype("float32")  # B = 2 pairs of spatial-gate maps
    norm = BatchStatNorm()
    norm.build(maps.shape)
    norm.set_weights([np.array([1.5], "float32"), np.array([-0.2], "float32")])
    expected = np.empty_like(maps)
    for i in range(2):
        pair = maps[[i, i + 2]]
        expected[[i, i + 2]] = 1.5 * (pair - pair.mean()) / np.sqrt(pair.var() + 1e-5) - 0.2
    np.testing.assert_allclose(ops.convert_to_numpy(norm(maps, paired=True)), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="even batch"):
        gaussian_projection(logits[:5], paired=True)


def make_amr(**kwargs):
    keras.utils.set_random_seed(0)
    spotlight = CamNetwork(build("resnet50", name="cam_backbone", frozen_batchnorm="none", **TINY), 3)
    backbone = build("resnet50", name="compensation_backbone", frozen_batchnorm="statistics", **TINY)
    return AMR(spotlight, backbone, 3, amm_reduction=4, **kwargs)


def test_cps_per_image_is_the_mean_absolute_difference():
    model = make_amr()
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 3, 4, 5, 3)).astype("float32")
    expected = np.abs(np.maximum(a, 0) - np.maximum(b, 0)).mean()
    np.testing.assert_allclose(float(model.cps_loss(a, b)), expected, rtol=1e-5)


def test_cps_code_mode_pairs_image_0_with_mirrored_image_1_only():
    model = make_amr(cps_mode="code")
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 4, 3, 5, 3)).astype("float32")
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    merged_a, merged_b = relu(a[0]) + relu(a[1])[:, ::-1], relu(b[0]) + relu(b[1])[:, ::-1]
    base = float(model.cps_loss(a, b))
    np.testing.assert_allclose(base, np.abs(merged_a - merged_b).mean(), rtol=1e-5)
    changed = a.copy()
    changed[2:] += 10.0
    assert float(model.cps_loss(changed, b)) == pytest.approx(base, rel=1e-6)
    changed = a.copy()
    changed[1] += 10.0
    assert abs(float(model.cps_loss(changed, b)) - base) > 1.0
    with pytest.raises(ValueError, match="batches of 2"):
        model.cps_loss(a[:1], b[:1])


def test_an_images_cam_is_the_same_alone_and_inside_a_batch_of_8():
    model = make_amr()
    images = np.random.default_rng(11).normal(size=(8, 32, 40, 3)).astype("float32")
    images[5] *= 3.0  # an outlier image: whole-batch statistics would move every other image's CAM
    k = 2
    alone = images[k : k + 1]

    # The reference's CAM pass: the image and its mirror as a batch of 2, gates on that batch's
    # statistics (the whole-batch path, which training uses).
    pair = np.concatenate([alone, alone[:, :, ::-1]])
    reference = ops.convert_to_numpy(model._compensation_maps(pair, training=False))[:1]
    spotlight_alone, compensation_alone = (ops.convert_to_numpy(m) for m in model.branch_cam_maps(alone))
    np.testing.assert_allclose(compensation_alone, reference, atol=1e-5)
    spotlight_batch, compensation_batch = (ops.convert_to_numpy(m) for m in model.branch_cam_maps(images))
    np.testing.assert_allclose(compensation_batch[k : k + 1], reference, atol=1e-5)
    np.testing.assert_allclose(spotlight_batch[k : k + 1], spotlight_alone, atol=1e-5)
    # The batch does matter to gates on whole-batch statistics: the check above has teeth.
    whole_batch = ops.convert_to_numpy(model._compensation_maps(images, training=False))
    assert np.abs(whole_batch[k : k + 1] - reference).max() > 1e-3

    # The fused CAM (what an export runs), and `wsss cams`' views, whose mirrors pair up in place.
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.cam_maps(images))[k : k + 1], ops.convert_to_numpy(model.cam_maps(alone)), atol=1e-5
    )
    runner = MultiScaleCams(model, scales=(1.0, 0.5), flip=True)
    in_batch = ops.convert_to_numpy(runner.predict_on_batch(images))[k : k + 1]
    np.testing.assert_allclose(in_batch, ops.convert_to_numpy(runner.predict_on_batch(alone)), atol=1e-5)


def test_exported_amr_cams_do_not_depend_on_the_batch(tmp_path):
    from wsss_keras.export import artifact_runner, export_model

    model = make_amr()
    path = str(tmp_path / "amr.keras")
    model.save(path)
    manifest, = export_model(path, str(tmp_path / "onnx"), formats=["onnx"], input_size=(32, 32), output="cams",
                             echo=lambda line: None)
    assert manifest["check"]["passed"] and [o["name"] for o in manifest["outputs"]] == ["cams"]
    run = artifact_runner(str(tmp_path / "onnx" / manifest["artifact"]["file"]), "onnx")
    images = np.random.default_rng(12).integers(0, 256, size=(8, 36, 44, 3), dtype=np.uint8)
    images[5] = 255 - images[5] // 8  # a bright outlier
    batch = run(images)["cams"]
    assert batch.shape == (8, 36, 44, 3)
    for k in (0, 2, 7):
        np.testing.assert_allclose(batch[k : k + 1], run(images[k : k + 1])["cams"], atol=1e-5)


def snapshot(layers):
    return [ops.convert_to_numpy(w).copy() for layer in layers for w in layer.weights]


def changed(before, layers):
    return any(not np.allclose(b, a) for b, a in zip(before, snapshot(layers)))


@pytest.mark.parametrize("cps_weight", [0.05, 0.0])
def test_only_the_reference_trainable_parts_move(cps_weight):
    model = make_amr(cps_weight=cps_weight)
    model.compile(optimizer=GroupedSGD(0.5, lr_multipliers=model.lr_multipliers, momentum=0.0, weight_decay=0.0))
    rng = np.random.default_rng(6)
    images = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    labels = (rng.random((4, 3)) < 0.5).astype("float32")
    compensation = model.compensation
    groups = {
        "spotlight backbone": [model.spotlight.backbone],
        "spotlight classifier": [model.spotlight.classifier],
        "compensation stem and stage 1": [compensation.stem_conv, compensation.stem_bn, *compensation.stages[0], model.amms[0]],
        "compensation stage 2": [*compensation.stages[1], model.amms[1]],
        "compensation classifier": [model.classifier],
    }
    before = {name: snapshot(layers) for name, layers in groups.items()}
    history = model.fit(images, {"labels": labels}, batch_size=2, epochs=1, verbose=0)
    assert {"cls_spotlight", "cls_compensation", "cps"} <= set(history.history)
    moved = {name: changed(before[name], layers) for name, layers in groups.items()}
    assert moved == {
        "spotlight backbone": False,
        "spotlight classifier": cps_weight > 0,  # learns through L_cps only
        "compensation stem and stage 1": False,
        "compensation stage 2": True,
        "compensation classifier": True,
    }


def test_learning_rate_groups_are_inverted_as_in_the_reference():
    model = make_amr()
    multipliers = {v.path: path_multiplier(model.lr_multipliers, v) for v in model.trainable_weights}
    assert {m for path, m in multipliers.items() if path.startswith("compensation_backbone/")} == {10.0}
    assert {m for path, m in multipliers.items() if path.startswith("compensation_amm_")} == {10.0}
    assert multipliers["compensation_classifier/kernel"] == 1.0 and multipliers["cam_classifier/kernel"] == 1.0
    assert not any(path.startswith(("cam_backbone/", "compensation_amm_1_")) for path in multipliers)


def test_resnet_cam_and_amr_survive_a_keras_round_trip(tmp_path):
    model = make_amr()
    images = np.random.default_rng(7).normal(size=(2, 40, 48, 3)).astype("float32")
    labels = np.array([[1, 0, 1], [0, 1, 0]], "float32")
    model.spotlight.compile(optimizer=GroupedSGD(0.01, lr_multipliers=model.spotlight.lr_multipliers))
    model.spotlight.fit(images, {"labels": labels}, batch_size=2, verbose=0)
    model.spotlight.save(tmp_path / "cam.keras")
    cam = keras.saving.load_model(tmp_path / "cam.keras")
    np.testing.assert_allclose(
        ops.convert_to_numpy(cam.cam_maps(images)), ops.convert_to_numpy(model.spotlight.cam_maps(images)), atol=1e-5
    )
    model.save(tmp_path / "amr.keras")
    loaded = keras.saving.load_model(tmp_path / "amr.keras")
    assert loaded.cps_mode == "per_image" and loaded.lr_multipliers == model.lr_multipliers
    for ours, theirs in zip(model.branch_cam_maps(images), loaded.branch_cam_maps(images)):
        assert tuple(ours.shape) == (2, 5, 6, 3)
        np.testing.assert_allclose(ops.convert_to_numpy(theirs), ops.convert_to_numpy(ours), atol=1e-5)
    fused = ops.convert_to_numpy(loaded.cam_maps(images))
    assert fused.min() >= 0 and fused.max() <= 1.0 + 1e-5


def test_amr_on_vit_patch_grids_gates_every_block_and_round_trips(tmp_path):
    from wsss_keras.backbones.vit.vit_encoder import ViTEncoder

    keras.utils.set_random_seed(0)
    vit = {"patch_size": 8, "hidden_dim": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64, "pos_embed_grid": 4}
    spotlight = CamNetwork(ViTEncoder(name="cam_vit", **vit), 3)
    model = AMR(spotlight, ViTEncoder(name="compensation_vit", **vit), 3, amm_reduction=4)
    assert [amm.name for amm in model.amms] == ["compensation_amm_block0", "compensation_amm_block1"]
    images = np.random.default_rng(8).normal(size=(4, 32, 40, 3)).astype("float32")
    labels = (np.random.default_rng(9).random((4, 3)) < 0.5).astype("float32")
    spotlight_maps, compensation_maps = model.branch_cam_maps(images)
    assert tuple(spotlight_maps.shape) == tuple(compensation_maps.shape) == (4, 4, 5, 3)

    # Training reaches the AMMs through the attention hook and leaves the frozen spotlight alone.
    ungated = ops.convert_to_numpy(model._compensation_maps(images))
    before, spotlight_before = snapshot(model.amms), snapshot([spotlight.backbone])
    assert spotlight_before and before
    model.compile(optimizer=GroupedSGD(0.1, lr_multipliers=model.lr_multipliers, momentum=0.0, weight_decay=0.0))
    model.fit(images, {"labels": labels}, batch_size=2, verbose=0)
    assert changed(before, model.amms)
    assert not changed(spotlight_before, [spotlight.backbone])
    assert not np.allclose(ungated, ops.convert_to_numpy(model._compensation_maps(images)))
    multipliers = {v.path.split("/")[0]: path_multiplier(model.lr_multipliers, v) for v in model.trainable_weights}
    assert multipliers["compensation_vit"] == multipliers["compensation_amm_block1"] == 10.0
    assert multipliers["compensation_classifier"] == multipliers["cam_classifier"] == 1.0

    model.save(tmp_path / "amr_vit.keras")
    loaded = keras.saving.load_model(tmp_path / "amr_vit.keras")
    for ours, theirs in zip(model.branch_cam_maps(images), loaded.branch_cam_maps(images)):
        np.testing.assert_allclose(ops.convert_to_numpy(theirs), ops.convert_to_numpy(ours), atol=1e-5)
