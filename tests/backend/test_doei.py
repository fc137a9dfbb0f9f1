"""DOEI hook: the reweighting by hand, one hooked layer against NumPy, knobs, serialisation, jit (per backend)."""

import json

import numpy as np
import pytest

import keras
from keras import ops

from wsss_keras.backbones.transformer import TransformerBlock
from wsss_keras.backbones.vit import ViTEncoder
from wsss_keras.methods.doei import DOEI, confidence_reweight

BACKEND = keras.backend.backend()
TINY = dict(patch_size=4, hidden_dim=16, num_layers=3, num_heads=2, mlp_dim=32, pos_embed_grid=4)


def _numpy(x):
    return ops.convert_to_numpy(x)


def _rgb(batch=2, height=16, width=24, seed=0):
    """Smooth-ish random colours in [0, 1] (blocks of colour, so the colour kernel is not all ~0)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(batch, height // 8 + 1, width // 8 + 1, 3))
    image = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width]
    return np.clip(image + rng.normal(scale=0.05, size=image.shape), 0, 1).astype("float32")


def _encoder(num_class_tokens=1, seed=0):
    keras.utils.set_random_seed(seed)
    encoder = ViTEncoder(**dict(TINY, num_class_tokens=num_class_tokens))
    encoder.build((None, None, None, 3))
    return encoder


def _run(encoder, rgb, doei=None, progress=None, **kwargs):
    images = ops.convert_to_tensor((rgb - 0.5) / 0.5)
    hook = None
    if doei is not None:
        hook = doei.make_hook(encoder.embed(images), ops.convert_to_tensor(rgb), TINY["patch_size"],
                              encoder.num_class_tokens, encoder.num_layers, progress=progress)
    return _numpy(encoder(images, hook=hook, **kwargs)["tokens"])


# ------------------------------------------------------------------------------------------
# NumPy reference, written from the spec (methods/doei.md §2.5), in float64
# ------------------------------------------------------------------------------------------


def _np_lab(rgb):
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6 / 29
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    lab = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)
    return lab / 100.0


def _np_reweight(m, axis, alpha, rule, tau_h, tau_l):
    q = (m - m.min(axis, keepdims=True)) / (m.max(axis, keepdims=True) - m.min(axis, keepdims=True) + 1e-6)
    if rule == "mean_std":
        tau_h = q.mean(axis, keepdims=True) + q.std(axis, keepdims=True)
        tau_l = q.mean(axis, keepdims=True) - q.std(axis, keepdims=True)
    g = np.where(q >= tau_h, 1 + alpha, np.where(q <= tau_l, 1 - alpha, 1.0))
    return q * g


def _np_layer(cfg, emb, rgb, probs, out, patch, c, block, num_layers, progress=None):
    emb, rgb, probs, out = (np.asarray(a, np.float64) for a in (emb, rgb, probs, out))
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    s = unit @ unit.transpose(0, 2, 1)
    b, height, width, _ = rgb.shape
    h, w = height // patch, width // patch
    r = rgb[:, : h * patch, : w * patch].reshape(b, h, patch, w, patch, 3).mean((2, 4)).reshape(b, h * w, 3)
    if cfg["colour_space"] == "lab":
        r = _np_lab(r)
    dist = ((r[:, :, None] - r[:, None]) ** 2).sum(-1)
    n = c + h * w
    k = np.ones((b, n, n))
    k[:, c:, c:] = np.exp(-dist / (2 * cfg["sigma_rgb"] ** 2))
    g = np.maximum(k * s if cfg["combine"] == "hadamard" else k @ s, 0)
    g_tilde = g / (g.sum(-1, keepdims=True) + 1e-6)
    lam = cfg["hybrid_weight"]
    if cfg["head_handling"] == "mean":
        a = probs.mean(1)
    else:
        a, g_tilde = probs, g_tilde[:, None]
    a_hat = (a + lam * g_tilde) / (1 + lam)
    alpha = {"depth": cfg["alpha_max"] * (block + 1) / num_layers, "constant": cfg["alpha_max"],
             "iteration": cfg["alpha_max"] * (1.0 if progress is None else progress)}[cfg["alpha_schedule"]]
    rule = (cfg["threshold_rule"], cfg["tau_high"], cfg["tau_low"])
    m_p = a_hat[..., c:, :c] + np.swapaxes(a_hat[..., :c, c:], -1, -2)
    w_p = _np_reweight(m_p, -2, alpha, *rule)
    if c > 1:
        m_c = a_hat[..., :c, :c] + np.swapaxes(a_hat[..., :c, :c], -1, -2)
        w_c = _np_reweight(m_c, -1, alpha, *rule)
    else:
        w_c = np.zeros(a_hat.shape[:-2] + (1, 1))
    if cfg["head_handling"] == "per_head":
        w_p, w_c = w_p.mean(1), w_c.mean(1)
    o_cls = out[:, :c]
    return out + cfg["injection_scale"] * np.concatenate([w_c @ o_cls, w_p @ o_cls], axis=1)


def _layer_inputs(c, batch=2, heads=2, height=16, width=24, patch=4, dim=8, seed=3):
    rng = np.random.default_rng(seed)
    n = c + (height // patch) * (width // patch)
    logits = rng.normal(scale=2.0, size=(batch, heads, n, n))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return dict(
        emb=rng.normal(size=(batch, n, dim)).astype("float32"),
        rgb=_rgb(batch, height, width, seed),
        probs=probs.astype("float32"),
        out=rng.normal(size=(batch, n, dim)).astype("float32"),
    )


# ------------------------------------------------------------------------------------------
# The reweighting R by hand
# ------------------------------------------------------------------------------------------


def test_reweighting_fixed_rule_and_depth_schedule_by_hand():
    doei = DOEI()
    hook = doei.make_hook(np.zeros((1, 5, 4), "float32"), np.zeros((1, 8, 8, 3), "float32"), 4, 1, 4)
    # alpha_l = 0.5 * l / 4 with l = block_index + 1
    assert [hook.alpha(i) for i in range(4)] == [0.125, 0.25, 0.375, 0.5]
    m = np.array([0.1, 0.4, 0.5, 0.9, 0.2], "float32")
    # q = (m - 0.1) / 0.8 = [0, .375, .5, 1, .125]; q <= .25 -> x(1 - .375), q >= .7 -> x(1 + .375)
    expected = np.array([0.0, 0.375, 0.5, 1.375, 0.125 * 0.625])
    got = _numpy(confidence_reweight(m, axis=0, alpha=hook.alpha(2)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # the candidate axis: the same vector as a column of a (5, 2) matrix (the other column is constant: q = 0)
    matrix = np.stack([m, np.full(5, 0.3, "float32")], axis=1)
    got = _numpy(confidence_reweight(matrix, axis=0, alpha=0.375))
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got[:, 1], 0.0)
    # other thresholds
    got = _numpy(confidence_reweight(m, axis=0, alpha=0.5, tau_high=0.45, tau_low=0.4))
    np.testing.assert_allclose(got, [0.0, 0.375 * 0.5, 0.5 * 1.5, 1.5, 0.125 * 0.5], rtol=1e-5, atol=1e-7)


def test_reweighting_mean_std_rule_and_schedules_by_hand():
    q = np.array([0.0, 0.05, 0.5, 0.5, 0.95, 1.0], "float32")
    # mean 0.5, std sqrt(0.905 / 6) = 0.388: high = 0.888 (0.95, 1 amplified), low = 0.112 (0, 0.05 suppressed)
    expected = np.array([0.0, 0.025, 0.5, 0.5, 1.425, 1.5])
    got = _numpy(confidence_reweight(q, axis=-1, alpha=0.5, threshold_rule="mean_std"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    emb, rgb = np.zeros((1, 5, 4), "float32"), np.zeros((1, 8, 8, 3), "float32")
    assert DOEI(alpha_schedule="constant", alpha_max=0.3).make_hook(emb, rgb, 4, 1, 4).alpha(0) == 0.3
    progress = ops.convert_to_tensor(0.4)
    hook = DOEI(alpha_schedule="iteration").make_hook(emb, rgb, 4, 1, 4, progress=progress)
    assert float(_numpy(hook.alpha(0))) == pytest.approx(0.2)
    assert DOEI(alpha_schedule="iteration").make_hook(emb, rgb, 4, 1, 4).alpha(0) == 0.5  # no progress: 1
    assert DOEI(layers=2).make_hook(emb, rgb, 4, 1, 4).blocks == {2, 3}
    assert DOEI(layers=[0, 3]).make_hook(emb, rgb, 4, 1, 4).blocks == {0, 3}


# ------------------------------------------------------------------------------------------
# One hooked layer against NumPy
# ------------------------------------------------------------------------------------------

LAYER_VARIANTS = {
    "default": {},
    "per_head_mean_std": dict(head_handling="per_head", threshold_rule="mean_std", sigma_rgb=0.3),
    "matmul_lab": dict(combine="matmul", colour_space="lab", hybrid_weight=0.5, injection_scale=0.3),
    "constant": dict(alpha_schedule="constant", alpha_max=0.9, tau_high=0.6, tau_low=0.4),
    "iteration": dict(alpha_schedule="iteration", hybrid_weight=2.0),
}


@pytest.mark.parametrize("num_class_tokens", [1, 3])
@pytest.mark.parametrize("variant", sorted(LAYER_VARIANTS))
def test_one_hooked_layer_matches_numpy(variant, num_class_tokens):
    doei = DOEI(**LAYER_VARIANTS[variant])
    cfg = doei.get_config()
    x = _layer_inputs(num_class_tokens)
    progress = 0.3 if variant == "iteration" else None
    hook = doei.make_hook(ops.convert_to_tensor(x["emb"]), ops.convert_to_tensor(x["rgb"]), 4, num_class_tokens,
                          num_layers=3, progress=None if progress is None else ops.convert_to_tensor(progress))
    probs, out = ops.convert_to_tensor(x["probs"]), ops.convert_to_tensor(x["out"])
    assert hook.attention_probs(probs, 1, None) is probs
    got = _numpy(hook.attention_output(out, 1, None))
    expected = _np_layer(cfg, x["emb"], x["rgb"], x["probs"], x["out"], 4, num_class_tokens, 1, 3, progress)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    increment = got - x["out"]
    if num_class_tokens == 1:  # CPDO skipped: the class token is untouched
        np.testing.assert_array_equal(increment[:, :1], 0.0)
    else:  # CPDO active: the class tokens move
        assert np.abs(increment[:, :num_class_tokens]).min() > 1e-4
    assert np.abs(increment[:, num_class_tokens:]).max() > 1e-3


def test_guidance_is_row_stochastic_and_class_rows_use_kernel_one():
    x = _layer_inputs(2)
    hook = DOEI().make_hook(ops.convert_to_tensor(x["emb"]), ops.convert_to_tensor(x["rgb"]), 4, 2, 3)
    guidance = _numpy(hook.guidance())
    assert guidance.shape == (2, 26, 26) and guidance.min() >= 0
    np.testing.assert_allclose(guidance.sum(-1), 1.0, atol=1e-4)
    unit = x["emb"] / np.linalg.norm(x["emb"], axis=-1, keepdims=True)
    row = np.maximum(np.einsum("bd,bnd->bn", unit[:, 0], unit), 0)  # the class token's row: K = 1
    np.testing.assert_allclose(guidance[:, 0], row / (row.sum(-1, keepdims=True) + 1e-6), atol=1e-5)


def test_block_output_injection_adds_the_increment_after_the_block():
    keras.utils.set_random_seed(1)
    block = TransformerBlock(hidden_dim=8, num_heads=2, mlp_dim=16)
    x = _layer_inputs(1)
    tokens = ops.convert_to_tensor(x["emb"])
    rgb = ops.convert_to_tensor(x["rgb"])
    plain, probs = block(tokens, block_index=0)
    doei = DOEI(inject_at="block_output")
    hooked, _ = block(tokens, hook=doei.make_hook(tokens, rgb, 4, 1, 1), block_index=0)
    output, _ = block.attend(block.norm1(tokens))
    increment = DOEI().make_hook(tokens, rgb, 4, 1, 1).increment(probs, output, 0)
    np.testing.assert_allclose(_numpy(hooked), _numpy(plain) + _numpy(increment), atol=1e-5)
    assert np.abs(_numpy(increment)).max() > 1e-3


# ------------------------------------------------------------------------------------------
# In an encoder: identity, knobs that act, MCTformer-style class tokens
# ------------------------------------------------------------------------------------------


def test_zero_weight_and_zero_scale_is_the_identity_and_knobs_act():
    encoder, rgb = _encoder(), _rgb()
    plain = _run(encoder, rgb)
    np.testing.assert_array_equal(_run(encoder, rgb, DOEI(hybrid_weight=0.0, injection_scale=0.0)), plain)
    default = _run(encoder, rgb, DOEI())
    assert np.abs(default - plain).max() > 1e-3
    assert np.abs(_run(encoder, rgb, DOEI(hybrid_weight=0.0)) - default).max() > 1e-4


VARIANTS = {
    "per_head": dict(head_handling="per_head"),
    "matmul": dict(combine="matmul"),
    "lab": dict(colour_space="lab"),
    "block_output": dict(inject_at="block_output"),
    "last_k": dict(layers=1),
    "list": dict(layers=[0, 2]),
    "iteration": dict(alpha_schedule="iteration"),
    "mean_std": dict(threshold_rule="mean_std"),
    "sigma": dict(sigma_rgb=0.3),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_runs_and_changes_the_output(variant):
    encoder, rgb = _encoder(), _rgb()
    progress = ops.convert_to_tensor(0.25) if variant == "iteration" else None
    default = _run(encoder, rgb, DOEI())
    changed = _run(encoder, rgb, DOEI(**VARIANTS[variant]), progress=progress)
    assert np.isfinite(changed).all()
    assert np.abs(changed - default).max() > 1e-4, variant
    # stop-gradient on W (the default) changes nothing in the forward pass
    assert DOEI().stop_gradient_weights
    np.testing.assert_array_equal(_run(encoder, rgb, DOEI(stop_gradient_weights=False)), default)


def test_multi_class_tokens_move_with_cpdo():
    encoder, rgb = _encoder(num_class_tokens=3), _rgb()
    images = ops.convert_to_tensor((rgb - 0.5) / 0.5)
    plain = encoder(images, num_blocks=1)["tokens"]
    hook = DOEI().make_hook(None, ops.convert_to_tensor(rgb), 4, 3, 3)  # X⁰ taken from block 0's input
    hooked = encoder(images, hook=hook, num_blocks=1)["tokens"]
    moved = np.abs(_numpy(hooked) - _numpy(plain))
    assert moved[:, :3].min(axis=-1).max() > 0 and moved[:, :3].max() > 1e-3
    assert moved.shape == (2, 3 + 24, 16)


def _grad(fn, x):
    """d sum(fn(x)) / dx with the backend's own autodiff (test-only)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return tape.gradient(y, x).numpy()
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(fn)(jax.numpy.asarray(x)))
    import torch

    x = torch.tensor(x, requires_grad=True)
    fn(x).backward()
    return x.grad.numpy()


def test_stop_gradient_weights_cuts_only_the_reweighting_path():
    x = _layer_inputs(3)
    rgb, probs, out = (ops.convert_to_tensor(x[k]) for k in ("rgb", "probs", "out"))

    def through_weights(stop):
        def fn(emb):
            hook = DOEI(stop_gradient_weights=stop).make_hook(emb, rgb, 4, 3, 3)
            return ops.sum(hook.increment(probs, out, 2)) + 0.0 * ops.sum(emb)
        return _grad(fn, x["emb"])

    assert np.abs(through_weights(False)).max() > 1e-6
    np.testing.assert_array_equal(through_weights(True), 0.0)


class _HookedModel(keras.Model):
    def __init__(self, doei, num_class_tokens=1, use_embed=False, num_layers=2):
        super().__init__(name="hooked_model")
        self.doei, self.use_embed = doei, use_embed
        self.encoder = ViTEncoder(**dict(TINY, num_class_tokens=num_class_tokens, num_layers=num_layers))
        self.encoder.build((None, None, None, 3))
        self.progress = self.add_weight(shape=(), initializer="zeros", trainable=False, name="progress")
        self.progress.assign(0.6)

    def call(self, rgb):
        images = (rgb - 0.5) / 0.5
        embeddings = self.encoder.embed(images) if self.use_embed else None
        hook = self.doei.make_hook(embeddings, rgb, TINY["patch_size"], self.encoder.num_class_tokens,
                                   self.encoder.num_layers, progress=self.progress)
        return ops.mean(self.encoder(images, hook=hook)["class_tokens"], axis=1)


def test_fit_one_step_with_stop_gradient_weights():
    keras.utils.set_random_seed(0)
    model = _HookedModel(DOEI(stop_gradient_weights=True), num_layers=1)
    rgb = _rgb(batch=4)
    model(rgb[:1])
    before = _numpy(model.encoder.patch_embed.kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    targets = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    history = model.fit(rgb, targets, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.abs(_numpy(model.encoder.patch_embed.kernel) - before).max() > 1e-6


@pytest.mark.parametrize("setting", ["default_lazy_x0", "mct_per_head_iteration"])
def test_compiled_predict_equals_eager(setting):
    keras.utils.set_random_seed(0)
    if setting == "default_lazy_x0":
        model = _HookedModel(DOEI())
    else:
        doei = DOEI(head_handling="per_head", alpha_schedule="iteration", combine="matmul", colour_space="lab")
        model = _HookedModel(doei, num_class_tokens=3, use_embed=True)
    model.compile(jit_compile=BACKEND != "torch")
    # a second size makes TensorFlow retrace with relaxed (unknown) spatial shapes
    sizes = ((16, 24), (24, 20)) if BACKEND == "tensorflow" else ((16, 24),)
    for height, width in sizes:
        rgb = _rgb(batch=3, height=height, width=width, seed=height)
        eager = _numpy(model(rgb))
        np.testing.assert_allclose(model.predict(rgb, batch_size=3, verbose=0), eager, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------


def test_config_round_trip():
    doei = DOEI(layers=[1, 3], sigma_rgb=0.2, colour_space="lab", combine="matmul", hybrid_weight=0.5,
                threshold_rule="mean_std", tau_high=0.8, tau_low=0.1, alpha_max=0.3, alpha_schedule="iteration",
                injection_scale=0.4, head_handling="per_head", inject_at="block_output",
                stop_gradient_weights=False, in_crop_passes=False)
    config = json.loads(json.dumps(doei.get_config()))
    assert DOEI.from_config(config).get_config() == doei.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(doei))
    assert isinstance(restored, DOEI) and restored.get_config() == doei.get_config()
    assert DOEI(layers=4).get_config()["layers"] == 4 and DOEI().get_config()["layers"] == "all"
    assert "sigma_rgb=0.2" in repr(doei)


@pytest.mark.parametrize("knob, value", [
    ("layers", 0), ("layers", "last"), ("layers", [1, 1]), ("layers", [-1]), ("layers", True), ("layers", []),
    ("sigma_rgb", 0.0), ("sigma_rgb", "0.1"), ("colour_space", "hsv"), ("combine", "add"),
    ("hybrid_weight", -1.0), ("hybrid_weight", float("nan")), ("threshold_rule", "topk"), ("tau_high", 1.5),
    ("tau_low", -0.1), ("alpha_max", 1.2), ("alpha_schedule", "cosine"), ("injection_scale", -0.5),
    ("head_handling", "max"), ("inject_at", "mlp"), ("stop_gradient_weights", 1), ("in_crop_passes", "yes"),
])
def test_bad_knob_values_name_the_knob(knob, value):
    with pytest.raises(ValueError, match=knob):
        DOEI(**{knob: value})


def test_bad_thresholds_and_hook_arguments():
    with pytest.raises(ValueError, match="tau_low"):
        DOEI(tau_high=0.3, tau_low=0.5)
    emb, rgb = np.zeros((1, 5, 4), "float32"), np.zeros((1, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="layers"):
        DOEI(layers=5).make_hook(emb, rgb, 4, 1, 4)
    with pytest.raises(ValueError, match="layers"):
        DOEI(layers=[4]).make_hook(emb, rgb, 4, 1, 4)
    with pytest.raises(ValueError, match="num_class_tokens"):
        DOEI().make_hook(emb, rgb, 4, 0, 4)
    hook = DOEI().make_hook(ops.convert_to_tensor(emb), ops.convert_to_tensor(rgb), 2, 1, 4)  # 16 patches, not 4
    with pytest.raises(ValueError, match="patches"):
        hook.guidance()


def test_colour_kernel_against_pairwise_numpy():
    from wsss_keras.methods.doei import colour_kernel

    rng = np.random.default_rng(3)
    colours = rng.random((2, 6, 3)).astype("float32")
    sigma = 0.1
    distance = ((colours[:, :, None, :] - colours[:, None, :, :]) ** 2).sum(-1)
    expected = np.pad(np.exp(-distance / (2 * sigma * sigma)), [(0, 0), (2, 0), (2, 0)], constant_values=1.0)
    kernel = ops.convert_to_numpy(colour_kernel(colours, sigma, num_class_tokens=2))
    np.testing.assert_allclose(kernel, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.diagonal(kernel, axis1=1, axis2=2), 1.0, atol=1e-5)  # rounding only
