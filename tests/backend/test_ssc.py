"""SSC on the current backend: superpixel pooling, DRS, erosion, the self-modulation target, the
decoder and the perceptual loss, the two-group optimiser, one training step and a round trip
(spec methods/ssc.md §2.2-2.5, §3.1)."""

import cv2
import keras
import numpy as np
import pytest
from keras import ops

from wsss_keras.backbones.resnet import build
from wsss_keras.methods.ssc import (
    SSC, PerceptualLoss, ReconstructionDecoder, SampleLayerNorm, binary_erosion, drs, self_modulation_target,
)
from wsss_keras.ops.grad import value_and_gradient
from wsss_keras.ops.superpixels import superpixel_average
from wsss_keras.training.optimizers import GroupedSGDWithAdam

TINY = {"block_counts": (1, 1, 1, 1), "base_width": 8, "output_stride": 8, "frozen_batchnorm": "none"}


def numpy_of(tensor):
    return ops.convert_to_numpy(tensor)


def tiny_ssc(**overrides):
    options = dict(
        frozen_stages=0, decoder_widths=(16, 16, 8, 8), loss_network_width=0.0625, num_superpixels=20,
        self_modulation_start=0,
    )
    options.update(overrides)
    return SSC(build("resnet50", name="ssc_backbone", **TINY), 3, **options)


def test_superpixel_average_equals_a_numpy_loop():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 6, 7, 3)).astype("float32")
    ids = rng.integers(0, 5, size=(2, 6, 7)).astype("int32")
    ids[1] = np.where(ids[1] == 3, 4, ids[1])  # an id absent from one image
    got = numpy_of(superpixel_average(values, ids, 5))
    expected = np.zeros_like(values)
    for b in range(2):
        for y in range(6):
            for x in range(7):
                members = ids[b] == ids[b, y, x]
                expected[b, y, x] = values[b][members].mean(axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_drs_on_a_known_tensor_with_and_without_relu():
    x = np.array([[-3.0, 1.0], [4.0, 2.0]], "float32")[None, :, :, None]
    x = np.concatenate([x, -x], axis=-1)  # channel 2: max 3, so δ·max = 1.65
    plain = numpy_of(drs(x, 0.55))
    np.testing.assert_allclose(plain[0, ..., 0], [[-3.0, 1.0], [2.2, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(plain[0, ..., 1], [[1.65, -1.0], [-4.0, -2.0]], rtol=1e-6)
    rectified = numpy_of(drs(x, 0.55, relu=True))
    np.testing.assert_allclose(rectified[0, ..., 0], [[0.0, 1.0], [2.2, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(rectified[0, ..., 1], [[1.65, 0.0], [0.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("size", [2, 3, 8])
def test_binary_erosion_matches_opencv(size):
    mask = (np.random.default_rng(size).random((1, 19, 23, 2)) > 0.2).astype("float32")
    got = numpy_of(binary_erosion(mask, size))
    kernel = np.ones((size, size), np.uint8)
    for channel in range(2):
        expected = cv2.erode(mask[0, ..., channel].astype(np.uint8), kernel, iterations=1)
        np.testing.assert_array_equal(got[0, ..., channel], expected)


def hand_made_case():
    """One image, two classes (only class 0 present), 4 x 6, two superpixels (left and right).

    Left: all 3 (mean 3). Right: a 2 x 2 core of 6 (the max) at rows 1-2, cols 4-5, else 0
    (mean 2). O = M / 6: left 0.5, core 1. Ā: left 1, right 2/3. Reliable = erode(O > 0.3, 2x2):
    the left half and the core's bottom-right pixel. T = max(Ā, O·reliable): left 1, right 2/3
    except 1 at (2, 5).
    """
    maps = np.zeros((1, 4, 6, 2), "float32")
    maps[0, :, :3, 0] = 3.0
    maps[0, 1:3, 4:6, 0] = 6.0
    maps[0, ..., 1] = 5.0  # an absent class: must not count
    segments = np.ones((1, 4, 6), "int32")
    segments[0, :, 3:] = 2
    target = np.full((4, 6), 2.0 / 3.0)
    target[:, :3] = 1.0
    target[2, 5] = 1.0
    return maps, segments, target


def test_self_modulation_target_on_a_hand_made_cam():
    maps, segments, target = hand_made_case()
    present = maps * np.array([1.0, 0.0], "float32")
    normalized, got = self_modulation_target(present, segments, 3, threshold=0.3, erosion_size=2)
    np.testing.assert_allclose(numpy_of(normalized)[0, ..., 0], maps[0, ..., 0] / 6.0, rtol=1e-4)
    np.testing.assert_allclose(numpy_of(got)[0, ..., 0], target, rtol=1e-4)
    assert np.abs(numpy_of(got)[0, ..., 1]).max() == 0.0


def test_self_modulation_loss_counts_present_classes_only():
    maps, segments, target = hand_made_case()
    model = tiny_ssc(reconstruction_weight=0.0, self_modulation_stride=1, self_modulation_threshold=0.3, erosion_size=2)
    loss = float(numpy_of(model.self_modulation_loss(maps, np.array([[1.0, 0.0, 0.0]], "float32")[:, :2], segments)))
    expected = np.mean((maps[0, ..., 0] / 6.0 - target) ** 2)  # 62 / 216
    assert loss == pytest.approx(expected, rel=1e-4) and expected == pytest.approx(62 / 216)


def test_sample_layer_norm_uses_the_unbiased_std_plus_eps():
    x = np.random.default_rng(3).normal(2.0, 3.0, size=(2, 3, 4, 5)).astype("float32")
    layer = SampleLayerNorm()
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, 5).astype("float32"))
    layer.beta.assign(np.full(5, 0.25, "float32"))
    flat = x.reshape(2, -1)
    mean, std = flat.mean(axis=1), flat.std(axis=1, ddof=1)
    expected = (x - mean[:, None, None, None]) / (std[:, None, None, None] + 1e-5) * np.linspace(0.5, 1.5, 5) + 0.25
    np.testing.assert_allclose(numpy_of(layer(x)), expected, rtol=1e-4, atol=1e-5)


def test_decoder_shape_range_and_ssc_parameter_count():
    decoder = ReconstructionDecoder((16, 16, 8, 8))
    out = numpy_of(decoder(np.random.default_rng(0).normal(0, 5, size=(2, 3, 4, 20)).astype("float32")))
    assert out.shape == (2, 24, 32, 3) and np.abs(out).max() <= 1.0 and out.std() > 0
    full = ReconstructionDecoder()
    full.build((None, None, None, 20))
    widths = (256, 256, 128, 64, 32)
    expected = 20 * 256 * 9 + 2 * 256 + 2 * (256 * 256 * 9 + 256 + 2 * 256)
    for width, out_width in zip(widths[:-1], widths[1:]):
        expected += width * width * 16 + width * out_width * 9 + out_width + 2 * out_width
    expected += 32 * 3 * 9 + 3
    assert full.count_params() == expected and abs(expected - 4.63e6) < 0.01e6  # spec §2.3: about 4.63 M


def test_perceptual_loss_is_zero_for_identical_images_and_its_gradient_reaches_the_cam_logits():
    loss = PerceptualLoss(width_multiplier=0.0625)
    image = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype("float32")
    assert float(numpy_of(loss(image, image))) == 0.0
    assert float(numpy_of(loss(np.tanh(image), image))) > 0.0
    decoder = ReconstructionDecoder((8, 8, 8))
    logits = np.random.default_rng(2).normal(size=(1, 8, 8, 3)).astype("float32")
    (value, _), gradient = value_and_gradient(lambda cams: (loss(decoder(cams), image), cams), logits)
    gradient = numpy_of(gradient)
    assert float(numpy_of(value)) > 0 and gradient.shape == logits.shape
    assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0


def test_training_hooks_detach_the_frozen_stages_and_cams_skip_the_stage2_clip():
    model = SSC(build("resnet50", name="ssc_backbone", **TINY), 3, reconstruction_weight=0.0, self_modulation_weight=0.0)
    trainable = {v.path for v in model.trainable_weights}
    assert not any("layer1_" in path or "layer2_" in path or "stem" in path for path in trainable)
    assert any("layer3_" in path for path in trainable) and any("ssc_classifier" in path for path in trainable)
    assert model.training_hooks.get(2, 0, "output") is not None and model.cam_hooks.get(2, 0, "output") is None
    assert model.cam_hooks.get(4, 0, "output") is not None


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    labels = np.array([[1, 0, 1], [0, 1, 0]], "float32")
    superpixels = rng.integers(0, 20, size=(2, 32, 32)).astype("int32")
    return images, {"labels": labels, "superpixels": superpixels}


def test_one_training_step_moves_network_and_decoder():
    keras.utils.set_random_seed(0)
    model = tiny_ssc()
    optimizer = GroupedSGDWithAdam(
        0.01, lr_multipliers=model.lr_multipliers, weight_decay=1e-4, adam_paths=model.decoder_paths, adam_learning_rate=1e-3,
    )
    model.compile(optimizer=optimizer)
    before = {v.path: numpy_of(v).copy() for v in model.trainable_weights}
    images, targets = make_batch()
    history = model.fit(images, targets, batch_size=2, epochs=1, verbose=0)
    logs = {key: values[-1] for key, values in history.history.items()}
    assert all(np.isfinite(value) for value in logs.values()) and {"cls", "reconstruction", "self_modulation"} <= set(logs)
    moved = {v.path for v in model.trainable_weights if not np.allclose(before[v.path], numpy_of(v))}
    assert any("reconstruction_decoder" in path for path in moved) and any("ssc_classifier" in path for path in moved)
    assert any("ssc_backbone" in path for path in moved)
    assert not any("vgg19" in v.path for v in model.trainable_weights)
    assert int(numpy_of(model.train_steps)) == 1


def test_adam_group_follows_torch_adam_and_sgd_group_plain_sgd():
    variables = [keras.Variable(np.array([1.0, -2.0], "float32"), name="kernel"),
                 keras.Variable(np.array([0.5, 0.5], "float32"), name="decoder_kernel")]
    optimizer = GroupedSGDWithAdam(0.1, adam_paths=("decoder",), adam_learning_rate=0.01, adam_beta_1=0.5)
    gradients = [np.array([0.2, -0.4], "float32"), np.array([1.0, -3.0], "float32")]
    first, second = np.zeros(2), np.zeros(2)
    expected_decoder, expected_plain = np.array([0.5, 0.5]), np.array([1.0, -2.0])
    for step in range(1, 4):
        optimizer.apply([ops.convert_to_tensor(g) for g in gradients], variables)
        first = 0.5 * first + 0.5 * gradients[1]
        second = 0.999 * second + 0.001 * gradients[1] ** 2
        expected_decoder = expected_decoder - 0.01 * (first / (1 - 0.5**step)) / (np.sqrt(second / (1 - 0.999**step)) + 1e-8)
        expected_plain = expected_plain - 0.1 * gradients[0]
    np.testing.assert_allclose(numpy_of(variables[1]), expected_decoder, rtol=1e-5)
    np.testing.assert_allclose(numpy_of(variables[0]), expected_plain, rtol=1e-5)


def test_round_trip_keeps_cams_and_settings(tmp_path):
    keras.utils.set_random_seed(1)
    model = tiny_ssc(drs_delta=0.6, erosion_size=3)
    images, _ = make_batch(1)
    path = str(tmp_path / "ssc.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SSC) and loaded.drs_delta == 0.6 and loaded.erosion_size == 3
    np.testing.assert_allclose(numpy_of(loaded.cam_maps(images)), numpy_of(model.cam_maps(images)), rtol=1e-5, atol=1e-5)


def test_mismatched_decoder_depth_is_a_clear_error():
    model = tiny_ssc(decoder_widths=(16, 16, 8), self_modulation_weight=0.0)
    images, targets = make_batch()
    with pytest.raises(ValueError, match="decoder_widths"):
        model.reconstruction_loss(model(images, training=True)["maps"], images)
