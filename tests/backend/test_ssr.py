"""SSR's reconstructed parts on the current backend (spec methods/ssr.md §2.4-2.6, §3.2): the
CLIP-space warm-up and its switch step, TSA's and ISA's BatchNorm rows and modes, the
prototype bank's two options, the knobs of the open readings, and the projection heads'
registration next to ToCo's."""

import keras
import numpy as np
import pytest
from keras import ops

from wsss_keras.backbones.clip.clip_model import CLIPImageEncoder
from wsss_keras.backbones.vit.vit_encoder import ViTEncoder
from wsss_keras.methods import toco
from wsss_keras.methods.ssr import SSR, SSRProjectionHead
from wsss_keras.methods.weclip import WeCLIP
from wsss_keras.ops.prototypes import spherical_kmeans

CLASSES, WIDTH, BACKGROUND = 3, 8, 2
IMAGE = dict(patch_size=4, hidden_dim=16, num_layers=3, num_heads=2, mlp_dim=32, output_dim=WIDTH, pos_embed_grid=4)
SMALL = dict(decoder_width=16, decoder_layers=1, decoder_heads=2)
HEAD = dict(projection_hidden=8, projection_dim=4)


def numpy_of(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


def unit_rows(rows):
    # Absent classes pool to zero vectors: they stay zero.
    return (rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)).astype("float32")


def prompts(seed, rows):
    return unit_rows(np.random.default_rng(seed).normal(size=(rows, WIDTH)))


def tiny_ssr(dino=None, **options):
    keras.utils.set_random_seed(0)
    settings = {"logit_scale": 5.0, "cmpa_warmup_steps": 0, "prototype_refresh": 1, **HEAD, **options}
    return SSR(CLIPImageEncoder(**IMAGE), CLASSES, prompts(0, CLASSES), prompts(1, BACKGROUND), dino=dino,
               num_regions=4, options=settings, **SMALL)


def copy_weights(source, target):
    target.set_weights(source.get_weights())
    return target


def batch(seed=0, size=16, labels=((1, 0, 1), (0, 1, 0))):
    rng = np.random.default_rng(seed)
    labels = np.array(labels, "float32")
    images = rng.normal(size=(len(labels), size, size, 3)).astype("float32")
    regions = rng.integers(1, 4, size=(len(labels), size, size)).astype("int32")
    return images, labels, regions


def train_step(model, seed=0, labels=((1, 0, 1), (0, 1, 0))):
    images, labels, regions = batch(seed, labels=labels)
    return model.train_on_batch(images, {"labels": labels, "regions": regions}, return_dict=True)


def numpy_head(head, rows, mask=None, statistics="batch"):
    """SSRProjectionHead in NumPy: Linear → BN (this input's statistics or the running ones) →
    ReLU → Linear."""
    w1, b1 = numpy_of(head.fc1.kernel), numpy_of(head.fc1.bias)
    w2, b2 = numpy_of(head.fc2.kernel), numpy_of(head.fc2.bias)
    gamma, beta = numpy_of(head.norm.gamma), numpy_of(head.norm.beta)
    hidden = rows.astype("float64") @ w1 + b1
    flat = hidden.reshape(-1, hidden.shape[-1])
    if statistics == "batch":
        keep = np.ones(len(flat), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
        mean, variance = flat[keep].mean(axis=0), flat[keep].var(axis=0)
    else:
        mean, variance = numpy_of(head.norm.moving_mean), numpy_of(head.norm.moving_variance)
    hidden = (hidden - mean) / np.sqrt(variance + head.norm.epsilon) * gamma + beta
    return np.maximum(hidden, 0.0) @ w2 + b2


def numpy_label_loss(features, labels, prototypes, scale):
    """L_proto with the label as the positive, over the C prototypes."""
    f, p = unit_rows(features), unit_rows(prototypes)
    total, count = 0.0, 0
    for b, c in zip(*np.nonzero(labels)):
        z = scale * (p @ f[b, c])
        total += np.log(np.exp(z).sum()) - z[c]
        count += 1
    return total / count


# Item 5: TSA normalises the same rows in the loss and at CAM time ----------------------------
def test_tsa_rows_at_cam_time_and_in_the_loss_are_the_class_and_background_prompts():
    model = tiny_ssr(pos_idx_mode="label")
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    for step in range(2):  # the running statistics move and BN's scale and shift train
        train_step(model, seed=step)
    prompt_rows = np.concatenate([prompts(0, CLASSES), prompts(1, BACKGROUND)])
    expected = numpy_head(model.text_head, prompt_rows)  # BN over exactly the C + M prompt rows
    np.testing.assert_allclose(numpy_of(model.cam_text_features()), unit_rows(expected), atol=1e-5)
    # The running statistics (which the CAM pass used before) would give other rows.
    running = unit_rows(numpy_head(model.text_head, prompt_rows, statistics="running"))
    assert np.abs(running - unit_rows(expected)).max() > 1e-3

    # The loss's text prototypes are the class rows of that same normalisation.
    images, labels, regions = batch(3)
    _, initial, projected = model.refined_cams(images, labels, {"regions": regions}, propagate=False)
    features = numpy_of(model.foreground_features(projected, initial, labels, batch_statistics=True))
    terms = model.extra_losses(images, labels, {}, None, initial, projected)
    scale = float(np.exp(numpy_of(model.log_inverse_temperature)))
    np.testing.assert_allclose(float(numpy_of(terms["proto"][1])),
                               numpy_label_loss(features, labels, expected[:CLASSES], scale), rtol=1e-4)
    # C class rows alone (the old training-time normalisation) give another loss.
    alone = numpy_head(model.text_head, prompts(0, CLASSES))
    assert abs(numpy_label_loss(features, labels, alone, scale) - float(numpy_of(terms["proto"][1]))) > 1e-3


def test_head_batch_statistics_equal_keras_training_mode_and_leave_running_statistics():
    keras.utils.set_random_seed(1)
    head = SSRProjectionHead(8, 4)
    rows = np.random.default_rng(0).normal(size=(2, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
    head.build(rows.shape)
    for variable in (head.norm.gamma, head.norm.beta):
        variable.assign(np.random.default_rng(2).normal(size=variable.shape).astype("float32"))
    for m in (None, mask):
        running = [numpy_of(v).copy() for v in (head.norm.moving_mean, head.norm.moving_variance)]
        own = numpy_of(head(rows, mask=m, batch_statistics=True))
        for before, variable in zip(running, (head.norm.moving_mean, head.norm.moving_variance)):
            np.testing.assert_array_equal(numpy_of(variable), before)  # untouched
        np.testing.assert_allclose(own, numpy_head(head, rows, m), atol=1e-4)
        np.testing.assert_allclose(own, numpy_of(head(rows, training=True, mask=m)), atol=1e-5)


# Item 5: the warm-up in CLIP space and its switch step -------------------------------------
def test_gradcam_space_switches_after_the_warmup_steps():
    model = tiny_ssr(cmpa_warmup_steps=2)
    aligned = tiny_ssr(cmpa_warmup_steps=0)  # gets the model's weights before each comparison
    keras.utils.set_random_seed(0)
    clip = WeCLIP(CLIPImageEncoder(**IMAGE), CLASSES, prompts(0, CLASSES), prompts(1, BACKGROUND),
                  options={"logit_scale": 5.0}, **SMALL)
    clip.image_encoder.set_weights(model.image_encoder.get_weights())
    images, labels, _ = batch(5)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))

    def space():
        cams = numpy_of(model.cam_maps(images, labels))
        in_clip = np.abs(cams - numpy_of(clip.cam_maps(images, labels))).max()
        in_aligned = np.abs(cams - numpy_of(copy_weights(model, aligned).cam_maps(images, labels))).max()
        assert min(in_clip, in_aligned) < 1e-5 and max(in_clip, in_aligned) > 1e-4
        return "clip" if in_clip < in_aligned else "aligned"

    seen = [space()]
    for step in range(3):
        train_step(model, seed=step)
        seen.append(space())
    assert seen == ["clip", "clip", "aligned", "aligned"]  # steps 0 and 1 in CLIP space, step 2 aligned
    assert float(numpy_of(model.cmpa_step)) == 3.0


def test_warmup_clock_advances_inside_fit_and_survives_a_round_trip(tmp_path):
    model = tiny_ssr(cmpa_warmup_steps=2)
    images, labels, regions = batch()

    class Loader(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return images, {"labels": labels, "regions": regions}

    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(Loader(), epochs=1, verbose=0)
    assert float(numpy_of(model.cmpa_step)) == 3.0
    model.save(tmp_path / "ssr.keras")
    loaded = keras.saving.load_model(tmp_path / "ssr.keras")
    assert float(numpy_of(loaded.cmpa_step)) == 3.0
    np.testing.assert_allclose(numpy_of(loaded.cam_maps(images, labels)), numpy_of(model.cam_maps(images, labels)), atol=1e-5)


# Item 9: the bank's features use the loss's BatchNorm mode ---------------------------------
def test_bank_features_are_the_loss_features_and_leave_isa_running_statistics():
    model = tiny_ssr()
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    train_step(model)
    images, labels, regions = batch(2)
    norm = model.image_head.norm
    running = [numpy_of(v).copy() for v in (norm.moving_mean, norm.moving_variance)]
    bank = numpy_of(model.prototype_features(images, labels))
    for before, variable in zip(running, (norm.moving_mean, norm.moving_variance)):
        np.testing.assert_array_equal(numpy_of(variable), before)
    _, initial, projected = model.refined_cams(images, labels, {"regions": regions}, propagate=False)
    tokens = numpy_of(projected)[:, 1:]
    cams = numpy_of(initial).reshape(len(images), -1, CLASSES)
    per_token = numpy_head(model.image_head, tokens)  # batch statistics over the B·N tokens
    expected = np.einsum("bpc,bpd->bcd", cams, per_token) / (cams.sum(axis=1)[:, :, None] + 1e-5)
    np.testing.assert_allclose(bank, expected, atol=1e-4)
    loss_features = numpy_of(model.foreground_features(projected, initial, labels, training=True))
    np.testing.assert_allclose(bank, loss_features, atol=1e-5)


# Item 9: the two prototype banks -----------------------------------------------------------
def test_recent_bank_keeps_the_loss_features_of_the_last_refresh_interval():
    model = tiny_ssr(prototype_bank="recent", prototype_bank_size=3, prototype_refresh=2)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    steps = [(0, ((1, 0, 1), (0, 1, 0))), (1, ((1, 1, 0), (0, 0, 1))), (2, ((1, 0, 0), (1, 0, 1)))]
    written = []
    for seed, labels in steps:
        images, labels_array, regions = batch(seed, labels=labels)
        # The features this step's loss pools (same weights, same batch statistics).
        features = unit_rows(numpy_of(model.prototype_features(images, labels_array)))
        written.append([(c, features[b, c]) for b, c in zip(*np.nonzero(labels_array))])
        train_step(model, seed=seed, labels=labels)
    features, classes = model.recent_samples()
    # Steps 1 and 2 only (the last 2); class 0 has three samples there, the ring keeps 3.
    expected = sorted(((c, tuple(np.round(f, 4))) for step in written[1:] for c, f in step))
    got = sorted((int(c), tuple(np.round(f, 4))) for c, f in zip(classes, features))
    assert [c for c, _ in got] == [c for c, _ in expected]
    np.testing.assert_allclose(np.array([f for _, f in got]), np.array([f for _, f in expected]), atol=2e-3)

    # A ring of one keeps each class's newest sample: in step 2, class 0's second image.
    small = tiny_ssr(prototype_bank="recent", prototype_bank_size=1, prototype_refresh=100)
    small.compile(optimizer=keras.optimizers.AdamW(1e-2))
    for seed, labels in steps:
        newest = unit_rows(numpy_of(small.prototype_features(*batch(seed, labels=labels)[:2])))
        train_step(small, seed=seed, labels=labels)
    features, classes = small.recent_samples()
    assert sorted(classes.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(features[classes == 0][0], newest[1, 0], atol=2e-3)
    np.testing.assert_allclose(features[classes == 2][0], newest[1, 2], atol=2e-3)


def fit_with_refresh(model, loader_batches, epochs=1):
    from wsss_keras.pipelines.ssr import prototype_refresh

    class Loader(keras.utils.PyDataset):
        def __len__(self):
            return len(loader_batches)

        def __getitem__(self, index):
            images, labels, regions = loader_batches[index]
            return images, {"labels": labels, "regions": regions}

    lines = []
    callback = prototype_refresh({"recipe": {"name": "t"}}, model, Loader(), echo=lines.append)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(Loader(), epochs=epochs, verbose=0, callbacks=[callback])
    return lines


def test_recent_bank_refreshes_from_memory_and_epoch_bank_from_every_batch():
    batches = [batch(seed) for seed in range(3)]
    recent = tiny_ssr(prototype_bank="recent", prototype_refresh=2)
    lines = fit_with_refresh(recent, batches[:2])
    assert len(lines) == 1 and "at step 2" in lines[0]  # nothing at step 0: the memory is empty
    # The prototypes are the K-means of what the memory holds at step 2 (steps 0 and 1).
    features, classes = recent.recent_samples()
    assert len(features) == int(batches[0][1].sum() + batches[1][1].sum())
    np.testing.assert_allclose(numpy_of(recent.image_prototypes),
                               spherical_kmeans(features, classes, CLASSES, iterations=20), atol=1e-4)

    whole = tiny_ssr(prototype_bank="epoch", prototype_refresh=100)
    lines = fit_with_refresh(whole, batches)
    present = int(sum(labels.sum() for _, labels, _ in batches))
    assert lines == [f"[train] CMPA image prototypes refreshed at step 0 from {present} features (6 images)"]


# Item 9: each open reading is a knob that changes the computation ---------------------------
def test_aligned_logit_scale_knob():
    images, labels, _ = batch()
    by_tau = tiny_ssr(aligned_logit_scale="inverse_temperature", temperature=0.05)  # 1/τ = 20
    by_clip_20 = tiny_ssr(logit_scale=20.0)
    by_clip_5 = tiny_ssr(logit_scale=5.0)
    np.testing.assert_allclose(numpy_of(by_tau.cam_maps(images, labels)), numpy_of(by_clip_20.cam_maps(images, labels)),
                               atol=1e-5)
    assert np.abs(numpy_of(by_tau.cam_maps(images, labels)) - numpy_of(by_clip_5.cam_maps(images, labels))).max() > 1e-4


def test_isa_input_knob_moves_isa_after_the_pooling():
    tokens_model, pooled_model = tiny_ssr(), tiny_ssr(isa_input="pooled")
    projected = np.random.default_rng(0).normal(size=(2, 6, WIDTH)).astype("float32")
    pooled = numpy_of(pooled_model.cam_token_features(projected))
    np.testing.assert_allclose(pooled[:, 0], numpy_head(pooled_model.image_head, projected.mean(axis=1), statistics="running"),
                               atol=1e-5)
    per_token = numpy_of(tokens_model.cam_token_features(projected)).mean(axis=1)
    assert np.abs(per_token - pooled[:, 0]).max() > 1e-4
    # The loss's features: ISA on the CAM-pooled feature, BN over the present samples only.
    images, labels, regions = batch()
    _, initial, projected = pooled_model.refined_cams(images, labels, {"regions": regions}, propagate=False)
    tokens = numpy_of(projected)[:, 1:]
    cams = numpy_of(initial).reshape(len(images), -1, CLASSES)
    pooled_tokens = np.einsum("bpc,bpd->bcd", cams, tokens) / (cams.sum(axis=1)[:, :, None] + 1e-5)
    features = numpy_of(pooled_model.foreground_features(projected, initial, labels, batch_statistics=True))
    np.testing.assert_allclose(features, numpy_head(pooled_model.image_head, pooled_tokens, labels > 0), atol=1e-4)


def test_background_negatives_and_t2i_knobs():
    images, labels, regions = batch()
    plain, negatives = tiny_ssr(pos_idx_mode="label"), tiny_ssr(pos_idx_mode="label", background_negatives=True)
    _, initial, projected = plain.refined_cams(images, labels, {"regions": regions}, propagate=False)
    features = numpy_of(plain.foreground_features(projected, initial, labels, batch_statistics=True))
    rows = numpy_head(plain.text_head, np.concatenate([prompts(0, CLASSES), prompts(1, BACKGROUND)]))
    scale = 20.0
    f, p = unit_rows(features), unit_rows(rows)
    expected = np.mean([np.log(np.exp(scale * (p @ f[b, c])).sum()) - scale * (p[c] @ f[b, c])
                        for b, c in zip(*np.nonzero(labels))])
    got = float(numpy_of(negatives.extra_losses(images, labels, {}, None, initial, projected)["proto"][1]))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    without = float(numpy_of(plain.extra_losses(images, labels, {}, None, initial, projected)["proto"][1]))
    assert abs(got - without) > 1e-4  # the rows differ by ~1e-3 here: well above float32 noise

    model = tiny_ssr(t2i_weight=0.5)
    assert "t2i" not in plain.extra_losses(images, labels, {}, None, initial, projected)
    logs = fit_with_refresh(model, [batch()])  # refreshed at step 0, so the term is live
    assert logs
    terms = model.extra_losses(images, labels, {}, None, initial, projected)
    weight, value = terms["t2i"]
    text = unit_rows(numpy_head(model.text_head, np.concatenate([prompts(0, CLASSES), prompts(1, BACKGROUND)]))[:CLASSES])
    z = float(np.exp(numpy_of(model.log_inverse_temperature))) * text @ unit_rows(numpy_of(model.image_prototypes)).T
    expected = np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z))
    assert weight == 0.5
    np.testing.assert_allclose(float(numpy_of(value)), expected, rtol=1e-4)


def tiny_dino():
    keras.utils.set_random_seed(3)
    return ViTEncoder(patch_size=4, hidden_dim=12, num_layers=3, num_heads=2, mlp_dim=24, pos_embed_grid=4)


def numpy_sinkhorn(attention, iterations, finish=True):
    t = attention.astype("float64")
    for _ in range(iterations):
        t = t / np.maximum(t.sum(axis=1, keepdims=True), 1e-8)
        t = t / np.maximum(t.sum(axis=2, keepdims=True), 1e-8)
    if finish:
        t = (t + np.swapaxes(t, 1, 2)) / 2
        t = t @ t
    return t


def test_dino_layers_and_affinity_fusion_knobs():
    images, _, _ = batch()
    model = tiny_ssr(dino=tiny_dino(), dino_layers=2, affinity_fusion="after_sinkhorn")
    blocks = [numpy_of(a).mean(axis=1)[:, 1:, 1:] for a in model.dino(images, return_attention=True)["attention"]]
    dino = (blocks[-1] + blocks[-2]) / 2
    np.testing.assert_allclose(numpy_of(model.dino_attention(images)), dino, atol=1e-6)
    last_only = tiny_ssr(dino=tiny_dino(), dino_layers=1)
    np.testing.assert_allclose(numpy_of(last_only.dino_attention(images)), blocks[-1], atol=1e-6)

    tokens, attention = model.frozen_pass(images)
    _, last, _ = model.grad_cams(tokens[-1], np.ones((2, CLASSES), "float32"))
    maps = list(attention) + [last]
    clip = np.mean([numpy_of(a)[:, 1:, 1:] for a in maps[-8:]], axis=0)
    mixed = 0.4 * numpy_sinkhorn(clip, 3, finish=False) + 0.6 * numpy_sinkhorn(dino, 3, finish=False)
    after = numpy_of(model.transition(images, maps))
    np.testing.assert_allclose(after, numpy_sinkhorn(mixed, 0), atol=1e-5)
    before = tiny_ssr(dino=tiny_dino(), dino_layers=2)
    np.testing.assert_allclose(numpy_of(before.transition(images, maps)), numpy_sinkhorn(0.4 * clip + 0.6 * dino, 3),
                               atol=1e-5)
    assert np.abs(after - numpy_of(before.transition(images, maps))).max() > 1e-6


def test_knob_values_are_checked():
    for options, fragment in (({"prototype_bank": "all"}, "prototype_bank"), ({"isa_input": "cls"}, "isa_input"),
                              ({"affinity_fusion": "concat"}, "affinity_fusion"), ({"cmpa_warmup_steps": -1}, "cmpa_warmup_steps"),
                              ({"prototype_images": 4}, "prototype_images")):
        with pytest.raises(ValueError, match=fragment):
            tiny_ssr(**options)


# Item 7: SSR's head is registered under its own name ---------------------------------------
def test_projection_heads_of_toco_and_ssr_load_back_as_their_own_classes(tmp_path):
    assert keras.saving.get_registered_object("wsss_keras>ProjectionHead") is toco.ProjectionHead
    assert keras.saving.get_registered_object("wsss_keras>SSRProjectionHead") is SSRProjectionHead
    for head in (toco.ProjectionHead(16, 8, 16), SSRProjectionHead(8, 4)):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
        assert type(again) is type(head)

    keras.utils.set_random_seed(0)
    encoder = ViTEncoder(patch_size=8, hidden_dim=32, num_layers=3, num_heads=2, mlp_dim=64, pos_embed_grid=4)
    encoder.build((None, None, None, 3))
    toco_model = toco.ToCo(encoder, 3, decoder_channels=8, decoder_dilation=2, projection=(16, 8, 16), max_steps=10,
                           class_names=["background", "a", "b", "c"], seed=0)
    toco_model.cam_maps(np.zeros((1, 32, 32, 3), "float32"))
    ssr_model = tiny_ssr()
    toco_model.save(tmp_path / "toco.keras")
    ssr_model.save(tmp_path / "ssr.keras")
    toco_loaded = keras.saving.load_model(tmp_path / "toco.keras")
    ssr_loaded = keras.saving.load_model(tmp_path / "ssr.keras")
    assert type(toco_loaded.projection_head) is toco.ProjectionHead
    assert type(ssr_loaded.image_head) is SSRProjectionHead and type(ssr_loaded.text_head) is SSRProjectionHead
    for layer_before, layer_after in ((toco_model.projection_head, toco_loaded.projection_head),
                                      (ssr_model.text_head, ssr_loaded.text_head)):
        for before, after in zip(layer_before.weights, layer_after.weights):
            np.testing.assert_array_equal(numpy_of(after), numpy_of(before))
