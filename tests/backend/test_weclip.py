"""WeCLIP and SSR on the current backend: Grad-CAM against finite differences, the decoder,
online pseudo-labels, SGC's masks in the model, CMPA's loss and prototypes, one training step,
the tiny CLIP's caption training, and `.keras` round trips (spec methods/ssr.md §2.2-2.8)."""

import keras
import numpy as np
import pytest
from keras import ops

from wsss_keras.backbones.clip.clip_model import CLIP, CLIPImageEncoder
from wsss_keras.backbones.clip.word_tokenizer import WordTokenizer
from wsss_keras.methods.clip_pretrain import CaptionCLIP, caption_for
from wsss_keras.methods.ssr import SSR, refresh_prototypes
from wsss_keras.methods.weclip import WeCLIP, WeCLIPDecoder
from wsss_keras.ops.prototypes import PrototypeBank

CLASSES, WIDTH = 3, 8
IMAGE = dict(patch_size=4, hidden_dim=16, num_layers=3, num_heads=2, mlp_dim=32, output_dim=WIDTH, pos_embed_grid=4)
SMALL = dict(decoder_width=16, decoder_layers=1, decoder_heads=2)


def numpy_of(tensor):
    return ops.convert_to_numpy(tensor)


def unit_rows(rows):
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("float32")


def text_features(seed=0, rows=CLASSES):
    return unit_rows(np.random.default_rng(seed).normal(size=(rows, WIDTH)))


def tiny_weclip(**options):
    keras.utils.set_random_seed(0)
    return WeCLIP(CLIPImageEncoder(**IMAGE), CLASSES, text_features(), text_features(1, 2),
                  options={"logit_scale": 5.0, **options}, **SMALL)


def tiny_ssr(**options):
    keras.utils.set_random_seed(0)
    settings = {"logit_scale": 5.0, "projection_hidden": 8, "projection_dim": 4, "prototype_refresh": 1, **options}
    return SSR(CLIPImageEncoder(**IMAGE), CLASSES, text_features(), text_features(1, 2), num_regions=4,
               options=settings, **SMALL)


def batch(seed=0, size=16, count=2):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, size, size, 3)).astype("float32")
    labels = np.array([[1, 0, 1], [0, 1, 0]][:count], "float32")
    regions = rng.integers(1, 4, size=(count, size, size)).astype("int32")
    regions[:, :, -2:] = 0  # padding, never a target
    return images, labels, regions


def test_gradcam_equals_finite_differences():
    model = tiny_weclip(gradcam_softmax="present")
    images, labels, _ = batch()
    tokens, _ = model.frozen_pass(images)
    last = tokens[-1]
    cams = numpy_of(model.grad_cams(last, labels)[0])
    normed = model.image_encoder.blocks[-1].norm1(last)
    allowed = model.softmax_allowed(labels, 2)
    base = np.asarray(numpy_of(normed), np.float64)

    # ∂π_c/∂A by central differences, then Grad-CAM: cam_c(p) = A_p · mean_q ∂π_c/∂A_q. Every
    # perturbed copy of the batch (one element ±step) goes through one call, stacked on the batch axis.
    step = 1e-2
    indices = list(np.ndindex(base.shape))
    shifted = np.repeat(base[None], 2 * len(indices), axis=0)  # (2E, B, 1 + N, D): +step then -step
    for e, index in enumerate(indices):
        shifted[(e,) + index] += step
        shifted[(len(indices) + e,) + index] -= step
    copies = shifted.shape[0]
    outputs = model.gradcam_probabilities(
        ops.convert_to_tensor(shifted.reshape((-1,) + base.shape[1:]).astype("float32")),
        ops.tile(last, (copies, 1, 1)), ops.tile(allowed, (copies, 1)))[0]
    outputs = np.asarray(numpy_of(outputs), np.float64).reshape(2, len(indices), base.shape[0], -1)
    differences = (outputs[0] - outputs[1])[..., :CLASSES] / (2 * step)  # (E, B, C)
    gradient = np.zeros((CLASSES,) + base.shape)
    for e, index in enumerate(indices):
        gradient[(slice(None), index[0]) + index[1:]] = differences[e, index[0]]
    weights = gradient[:, :, 1:].mean(axis=2)  # (C, B, D)
    expected = np.einsum("bnd,cbd->bnc", base[:, 1:], weights)
    present = labels.astype(bool)
    # Absent classes are out of the softmax ("present"): their CAM is zero.
    assert np.abs(cams[:, :, ~present[0]][0]).max() < 1e-6
    scale = np.abs(expected).max()
    assert scale > 1e-4
    np.testing.assert_allclose(cams, expected, atol=2e-3 * scale)


def clip_head_probabilities(model, tokens, labels):
    """The Grad-CAM softmax from block L's output tokens, written here from the encoder's parts:
    the projected patch tokens' mean against the class and background prompts, over the
    present classes and the background prompts."""
    projected = model.image_encoder.project(tokens)[:, 1:]
    image = ops.mean(projected, axis=1)
    image = image / ops.sqrt(ops.sum(ops.square(image), axis=-1, keepdims=True))
    text = unit_rows(np.concatenate([text_features(), text_features(1, 2)]))
    logits = 5.0 * ops.matmul(image, ops.convert_to_tensor(text.T))
    allowed = np.concatenate([labels > 0, np.ones((len(labels), 2), bool)], axis=1)
    return ops.softmax(ops.where(allowed, logits, -1e9), axis=-1)


def test_gradcam_flows_through_the_attention_branch_only():
    """CLIP-ES differentiates block L's `ln_1` output, which feeds only the attention branch:
    the code's gradient, taken back through `ln_1` to the block input X, equals ∂π/∂X with the
    residual X held fixed (stop_gradient), and differs from the full ∂π/∂X."""
    from wsss_keras.ops.grad import value_and_gradient

    model = tiny_weclip()
    images, labels, _ = batch()
    tokens, _ = model.frozen_pass(images)
    last = tokens[-1]
    block = model.image_encoder.blocks[-1]
    normed = block.norm1(last)

    def held_block(x):
        branch, _ = block.attend(block.norm1(x))
        mid = ops.stop_gradient(x) + branch
        return mid + block.mlp(block.norm2(mid))

    # Same forward values: stop_gradient changes only the gradient.
    np.testing.assert_allclose(numpy_of(held_block(last)), numpy_of(block(last)[0]), atol=1e-5)
    allowed = model.softmax_allowed(labels, 2)
    np.testing.assert_allclose(numpy_of(model.gradcam_probabilities(normed, last, allowed)[0]),
                               numpy_of(clip_head_probabilities(model, block(last)[0], labels)), atol=1e-5)

    # One target, a fixed mix of the classes' probabilities: gradients are linear in it, so the
    # mix checks every class at once (one compiled gradient per path on JAX).
    mix_values = np.array([0.5, -1.0, 2.0], "float32")
    mix = ops.convert_to_tensor(mix_values)

    def code_target(a):
        return ops.sum(model.gradcam_probabilities(a, last, allowed)[0][:, :CLASSES] * mix), ops.zeros(())

    def held_target(x):
        return ops.sum(clip_head_probabilities(model, held_block(x), labels)[:, :CLASSES] * mix), ops.zeros(())

    def full_target(x):
        return ops.sum(clip_head_probabilities(model, block(x)[0], labels)[:, :CLASSES] * mix), ops.zeros(())

    _, code_gradient = value_and_gradient(code_target, normed)  # ∂π/∂A, A = ln_1(X)
    # Back through ln_1 to X: the vector-Jacobian product of ln_1 with the code's gradient.
    _, code_through_norm = value_and_gradient(lambda x: (ops.sum(block.norm1(x) * code_gradient), ops.zeros(())), last)
    _, held = value_and_gradient(held_target, last)
    _, full = value_and_gradient(full_target, last)
    code_through_norm, held, full = numpy_of(code_through_norm), numpy_of(held), numpy_of(full)
    scale = np.abs(held).max()
    assert scale > 1e-4
    np.testing.assert_allclose(code_through_norm, held, atol=1e-3 * scale)
    # The residual path carries a gradient of its own: holding it fixed is not a no-op.
    assert np.abs(full - held).max() > 0.1 * scale
    # And this gradient is the one grad_cams weights its CAMs with (CAMs are linear in it).
    weights = numpy_of(code_gradient)[:, 1:].mean(axis=1)  # (B, D)
    expected = np.einsum("bnd,bd->bn", numpy_of(normed)[:, 1:], weights)
    mixed_cams = numpy_of(model.grad_cams(last, labels)[0]) @ mix_values
    np.testing.assert_allclose(mixed_cams, expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("softmax", ["present", "all"])
def test_gradcams_of_each_images_labelled_classes_only_equal_every_classs(softmax):
    # The training step copies block L once per labelled class of the busiest image (COCO: a
    # few of 80), not once per class: the labelled classes' CAMs must not change.
    model = tiny_weclip(gradcam_softmax=softmax)
    images, labels, _ = batch()
    last = model.frozen_pass(images)[0][-1]
    every = numpy_of(model.grad_cams(last, labels)[0])
    labelled = numpy_of(model.grad_cams(last, labels, classes_per_image=2)[0])
    present = labels.astype(bool)
    scale = np.abs(every).max()
    for b in range(len(labels)):
        np.testing.assert_allclose(labelled[b][:, present[b]], every[b][:, present[b]], atol=1e-5 * scale)
        assert not labelled[b][:, ~present[b]].any()


def test_the_stages_grad_cams_of_labelled_classes_only_change_nothing_they_use():
    # Online pseudo-labels and CAMs (also one row of labels for an image and its flip, as the
    # CAMs stage passes them) with block L copied twice instead of three times.
    model = tiny_weclip(gradcam_softmax="present")
    images, labels, _ = batch()
    present = labels.astype(bool)
    model.max_labels_per_image = 2
    fewer = (numpy_of(model.online_pseudo_labels(images, labels)), numpy_of(model.cam_maps(images, labels)))
    model.max_labels_per_image = None
    np.testing.assert_array_equal(fewer[0], numpy_of(model.online_pseudo_labels(images, labels)))
    every_map = numpy_of(model.cam_maps(images, labels))
    scale = np.abs(every_map).max()
    for b in range(len(labels)):
        np.testing.assert_allclose(fewer[1][b][..., present[b]], every_map[b][..., present[b]], atol=1e-5 * scale)
    # One row of labels for two views of one image (an image and its flip, as the CAMs stage runs).
    views = np.concatenate([images[:1], images[:1, :, ::-1]])
    model.max_labels_per_image = 2
    one_row = numpy_of(model.cam_maps(views, labels[:1]))
    model.max_labels_per_image = None
    every_view = numpy_of(model.cam_maps(views, labels[:1]))
    np.testing.assert_allclose(one_row[..., present[0]], every_view[..., present[0]], atol=1e-5 * scale)
    assert not one_row[..., ~present[0]].any()


def test_decoder_shapes_and_fused_features():
    decoder = WeCLIPDecoder(4, num_inputs=2, width=16, num_layers=1, num_heads=2)
    logits, fused = decoder([np.ones((2, 3, 5, 8), "float32"), np.zeros((2, 3, 5, 8), "float32")])
    assert tuple(logits.shape) == (2, 3, 5, 4) and tuple(fused.shape) == (2, 3, 5, 16)
    with pytest.raises(ValueError, match="built for 2 token maps"):
        WeCLIPDecoder(4, num_inputs=2, width=16).build([(None, 3, 5, 8)] * 3)


def test_online_pseudo_labels_use_only_present_classes():
    model = tiny_weclip()
    images, labels, _ = batch()
    pseudo = numpy_of(model.online_pseudo_labels(images, labels))
    assert pseudo.shape == (2, 16, 16)
    for row, present in zip(pseudo, labels):
        allowed = {0} | {int(c) + 1 for c in np.flatnonzero(present)}
        assert set(np.unique(row).tolist()) <= allowed
    cams = numpy_of(model.cam_maps(images, labels))
    assert cams.shape == (2, 4, 4, CLASSES) and np.isfinite(cams).all()


def numpy_balanced_cross_entropy(logits, label_map, valid):
    """0.5 · (mean CE over valid background pixels + mean CE over valid foreground pixels)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    losses = -np.take_along_axis(log_probs, label_map[..., None].astype(np.int64), axis=-1)[..., 0]
    return 0.5 * (losses[valid & (label_map == 0)].mean() + losses[valid & (label_map > 0)].mean())


@pytest.mark.parametrize("ignore_padding", [False, True])
def test_seg_loss_and_the_crop_padding(ignore_padding):
    """WeCLIP's training loop loads `img_box` and never reads it: by default padded pixels are
    trained on with their pseudo-labels; `ignore_padding` leaves out every pixel outside
    `crop_boxes`, so the decoder's outputs there cannot change the loss."""
    model = tiny_weclip(ignore_padding=ignore_padding)
    images, labels, _ = batch()
    boxes = np.array([[0, 12, 0, 10], [2, 16, 0, 16]], "int32")  # (y0, y1, x0, x1) of the real pixels
    inside = np.zeros((2, 16, 16), bool)
    for mask, (y0, y1, x0, x1) in zip(inside, boxes):
        mask[y0:y1, x0:x1] = True
    images = np.where(inside[..., None], images, 0.0).astype("float32")  # padding: the mean colour
    targets = {"labels": labels, "crop_boxes": boxes}
    y_pred = model(images, training=True)
    pseudo = numpy_of(model.online_pseudo_labels(images, labels, targets))
    rng = np.random.default_rng(5)
    # Logits at the crop's size, so the loss's bilinear resize is the identity.
    logits = rng.normal(size=(2, 16, 16, CLASSES + 1)).astype("float32")
    changed = np.where(inside[..., None], logits, logits + 3.0 * rng.normal(size=logits.shape)).astype("float32")

    def loss(values):
        return float(numpy_of(model.compute_loss(images, targets, {**y_pred, "logits": ops.convert_to_tensor(values)})))

    valid = inside if ignore_padding else np.ones_like(inside)
    assert (pseudo[valid] == 0).any() and (pseudo[valid] > 0).any()  # both halves of the loss hold pixels
    for values in (logits, changed):
        np.testing.assert_allclose(loss(values), numpy_balanced_cross_entropy(values, pseudo, valid), rtol=1e-5)
    if ignore_padding:
        assert abs(loss(changed) - loss(logits)) < 1e-6
    else:
        assert abs(loss(changed) - loss(logits)) > 1e-2


def test_bad_text_features_are_named():
    with pytest.raises(ValueError, match="text_features"):
        WeCLIP(CLIPImageEncoder(**IMAGE), CLASSES, np.zeros((2, WIDTH), "float32"), **SMALL)
    with pytest.raises(ValueError, match="gradcam_softmax"):
        tiny_weclip(gradcam_softmax="sometimes")
    with pytest.raises(ValueError, match="ignore_padding"):
        tiny_weclip(ignore_padding="yes")


@pytest.mark.parametrize("build", [tiny_weclip, tiny_ssr])
def test_one_training_step_and_round_trip(build, tmp_path):
    model = build()
    images, labels, regions = batch()
    targets = {"labels": labels, "regions": regions}
    frozen = [numpy_of(v).copy() for v in model.image_encoder.weights]
    decoder = numpy_of(model.decoder.classifier.kernel).copy()
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    logs = model.train_on_batch(images, targets, return_dict=True)
    assert np.isfinite(logs["loss"]) and "seg" in logs
    if isinstance(model, SSR):
        assert "proto" in logs and np.isfinite(logs["proto"])
    assert np.abs(numpy_of(model.decoder.classifier.kernel) - decoder).max() > 0
    for before, variable in zip(frozen, model.image_encoder.weights):
        np.testing.assert_array_equal(numpy_of(variable), before)  # CLIP stays frozen
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and len(loaded.trainable_variables) == len(model.trainable_variables)
    np.testing.assert_allclose(numpy_of(loaded.segment_logits(images)), numpy_of(model.segment_logits(images)), atol=1e-5)
    np.testing.assert_allclose(numpy_of(loaded.cam_maps(images, labels)), numpy_of(model.cam_maps(images, labels)), atol=1e-5)


def test_ssr_superpixel_mask_follows_the_regions():
    model = tiny_ssr(region_high=0.5, region_ratio=0.5, mask_fallback="none")
    cams = np.zeros((1, 4, 4, CLASSES), "float32")
    cams[0, :2, :, 0] = 1.0  # class 0 lives in the top half
    regions = np.ones((1, 16, 16), "int32")
    regions[0, 8:] = 2
    masks = numpy_of(model.propagation_masks(ops.convert_to_tensor(cams), np.ones((1, CLASSES), "float32"), {"regions": regions}))
    np.testing.assert_array_equal(masks[0, :, :, 0], np.repeat([[1.0], [1.0], [0.0], [0.0]], 4, axis=1))
    with pytest.raises(ValueError, match="regions"):
        model.propagation_masks(ops.convert_to_tensor(cams), np.ones((1, CLASSES), "float32"), {})


def test_ssr_cam_space_and_prototypes():
    aligned, plain = tiny_ssr(), tiny_ssr(cam_space="clip")
    images, labels, regions = batch()
    assert aligned.cam_text_features().shape[-1] == 4 and plain.cam_text_features().shape[-1] == WIDTH
    bank = PrototypeBank(CLASSES, per_class=8)
    prototypes = refresh_prototypes(aligned, bank, [(images, labels)])
    assert prototypes.shape == (CLASSES, 4) and float(numpy_of(aligned.prototypes_ready)) == 1.0
    np.testing.assert_allclose(numpy_of(aligned.image_prototypes), prototypes, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-5)
    # An image whose CAM is all zero pools to a zero feature: the loss stays finite.
    tokens, _ = aligned.frozen_pass(images)
    _, initial, projected = aligned.refined_cams(images, labels, {"regions": regions}, propagate=False)
    terms = aligned.extra_losses(images, labels, {}, None, initial * 0.0, projected)
    assert np.isfinite(float(numpy_of(terms["proto"][1])))
    with pytest.raises(ValueError, match="num_regions"):
        SSR(CLIPImageEncoder(**IMAGE), CLASSES, text_features(), **SMALL)


def test_caption_clip_trains_and_captions_name_the_classes():
    rng = np.random.default_rng(0)
    caption = caption_for(["boat", "car"], rng)
    assert caption in ("a photo of a boat and a car.", "a photo of a car and a boat.")
    names = ["boat", "car", "train"]
    tokenizer = WordTokenizer.from_texts([f"a photo of a {n}." for n in names] + [caption_for(names)], context_length=16)
    assert tokenizer(["a photo of a train."])[0].argmax() == 7  # EOT is the largest id, where the tower pools
    with pytest.raises(ValueError, match="not in the tokenizer"):
        tokenizer(["a photo of a zebra."])
    keras.utils.set_random_seed(0)
    clip = CLIP(image=IMAGE, text=dict(vocabulary_size=tokenizer.vocabulary_size, context_length=16, hidden_dim=16,
                                       num_layers=1, num_heads=2, mlp_dim=32, output_dim=WIDTH))
    model = CaptionCLIP(clip, tokenizer([f"a photo of a {n}." for n in names]), token_weight=1.0, residual_drop=0.5, seed=0)
    images, labels, _ = batch()
    captions = tokenizer([caption_for([names[c] for c in np.flatnonzero(row)]) for row in labels])
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    first = model.train_on_batch(images, {"labels": labels, "captions": captions}, return_dict=True)
    for _ in range(4):
        last = model.train_on_batch(images, {"labels": labels, "captions": captions}, return_dict=True)
    assert {"caption", "prompt", "token"} <= set(first) and last["loss"] < first["loss"]


def numpy_class_prototypes(features, labels):
    """Per class, the unit mean of the unit foreground features of the images labelled with it
    (the bank's prototypes before any K-means step)."""
    means = []
    for k in range(labels.shape[1]):
        rows = features[labels[:, k] > 0, k]
        means.append((rows / np.linalg.norm(rows, axis=-1, keepdims=True)).mean(axis=0))
    means = np.stack(means)
    return means / np.linalg.norm(means, axis=-1, keepdims=True)


def test_prototype_refresh_reaches_the_training_loop():
    """The image prototypes CMPA's loss reads in each training step are those of the last
    refresh, computed here in NumPy from the same pass's foreground features, on every backend
    (JAX's fit holds the variables in its own state between steps)."""
    from wsss_keras.pipelines.ssr import prototype_refresh

    probe = np.random.default_rng(7).normal(size=(CLASSES, 4)).astype("float32")

    class ProbedSSR(SSR):
        # A zero-weight term logs a fingerprint of the prototypes the train step reads.
        loss_names = SSR.loss_names + ("probe",)

        def extra_losses(self, *args):
            terms = super().extra_losses(*args)
            terms["probe"] = (0.0, ops.sum(self.image_prototypes * ops.convert_to_tensor(probe)))
            return terms

    keras.utils.set_random_seed(0)
    # No K-means step: the prototypes are the class means of the bank.
    model = ProbedSSR(CLIPImageEncoder(**IMAGE), CLASSES, text_features(), text_features(1, 2), num_regions=4,
                      options={"logit_scale": 5.0, "projection_hidden": 8, "projection_dim": 4,
                               "prototype_refresh": 3, "kmeans_iterations": 0}, **SMALL)
    batches = [batch(seed=index) for index in range(3)]

    class Loader(keras.utils.PyDataset):
        batch_size = 2

        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            images, labels, regions = batches[index]
            return images, {"labels": labels, "regions": regions}

    class Recorder(keras.callbacks.Callback):
        """Runs after the refresh: the expected prototypes from the weights the refresh read,
        and each step's logged fingerprint."""

        def __init__(self):
            super().__init__()
            self.expected, self.logged, self.steps, self.running_mean = [], [], 0, 0.0

        def expect(self):
            features = np.concatenate([numpy_of(model.prototype_features(images, labels)) for images, labels, _ in batches])
            labels = np.concatenate([labels for _, labels, _ in batches])
            self.expected.append(numpy_class_prototypes(features.astype(np.float64), labels))

        def on_train_begin(self, logs=None):
            self.expect()

        def on_train_batch_end(self, index, logs=None):
            # The tracker logs the epoch's running mean (reset each epoch): undo it to get this
            # step's value.
            mean = float(logs["probe"])
            self.logged.append((index + 1) * mean - index * self.running_mean)
            self.running_mean = mean
            self.steps += 1
            if self.steps % 3 == 0:
                self.expect()

    refreshes, recorder = [], Recorder()
    callback = prototype_refresh({"recipe": {"name": "t"}}, model, Loader(), echo=refreshes.append)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(Loader(), epochs=2, verbose=0, callbacks=[callback, recorder])
    assert len(refreshes) == 3  # at the start, after step 3 and after step 6
    fingerprints = [float(np.sum(prototypes * probe)) for prototypes in recorder.expected]
    # Training between refreshes moved the features: a stale bank would show.
    assert abs(fingerprints[1] - fingerprints[0]) > 1e-3
    np.testing.assert_allclose(recorder.logged, [fingerprints[0]] * 3 + [fingerprints[1]] * 3, atol=1e-4)
    np.testing.assert_allclose(numpy_of(model.image_prototypes), recorder.expected[2], atol=1e-5)
