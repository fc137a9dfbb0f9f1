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

    def probabilities(values):
        return np.asarray(numpy_of(model.gradcam_probabilities(ops.convert_to_tensor(values.astype("float32")), last, allowed)[0]), np.float64)

    # ∂π_c/∂A by central differences, then Grad-CAM: cam_c(p) = A_p · mean_q ∂π_c/∂A_q.
    step = 1e-2
    gradient = np.zeros((CLASSES,) + base.shape)
    for index in np.ndindex(base.shape):
        plus, minus = base.copy(), base.copy()
        plus[index] += step
        minus[index] -= step
        difference = (probabilities(plus) - probabilities(minus))[:, :CLASSES] / (2 * step)
        gradient[(slice(None), index[0]) + index[1:]] = difference[index[0]]
    weights = gradient[:, :, 1:].mean(axis=2)  # (C, B, D)
    expected = np.einsum("bnd,cbd->bnc", base[:, 1:], weights)
    present = labels.astype(bool)
    # Absent classes are out of the softmax ("present"): their CAM is zero.
    assert np.abs(cams[:, :, ~present[0]][0]).max() < 1e-6
    scale = np.abs(expected).max()
    assert scale > 1e-4
    np.testing.assert_allclose(cams, expected, atol=2e-3 * scale)


def test_gradcam_flows_through_the_attention_branch_only():
    model = tiny_weclip()
    images, labels, _ = batch()
    tokens, _ = model.frozen_pass(images)
    last = tokens[-1]
    allowed = model.softmax_allowed(labels, 2)
    normed = model.image_encoder.blocks[-1].norm1(last)
    changed = ops.convert_to_tensor(numpy_of(last) + np.random.default_rng(3).normal(size=last.shape).astype("float32"))
    # The residual input is passed separately: the probabilities change with it, but Grad-CAM
    # differentiates only `attention_input`.
    first = numpy_of(model.gradcam_probabilities(normed, last, allowed)[0])
    second = numpy_of(model.gradcam_probabilities(normed, changed, allowed)[0])
    assert np.abs(first - second).max() > 1e-4


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


def test_bad_text_features_are_named():
    with pytest.raises(ValueError, match="text_features"):
        WeCLIP(CLIPImageEncoder(**IMAGE), CLASSES, np.zeros((2, WIDTH), "float32"), **SMALL)
    with pytest.raises(ValueError, match="gradcam_softmax"):
        tiny_weclip(gradcam_softmax="sometimes")


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


def test_prototype_refresh_reaches_the_training_loop():
    """The refresh callback's prototypes are the ones the next steps train with, on every
    backend (JAX's fit holds the variables in its own state between steps)."""
    from wsss_keras.pipelines.ssr import prototype_refresh

    model = tiny_ssr(prototype_refresh=3)
    images, labels, regions = batch(count=2)

    class Loader(keras.utils.PyDataset):
        batch_size = 2

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return images, {"labels": labels, "regions": regions}

    refreshes = []
    callback = prototype_refresh({"recipe": {"name": "t"}}, model, Loader(), echo=refreshes.append)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(Loader(), epochs=2, verbose=0, callbacks=[callback])
    assert len(refreshes) == 2  # at the start and after step 3; step 4 then trains on the new ones
    assert float(numpy_of(model.prototypes_ready)) == 1.0
    prototypes = numpy_of(model.image_prototypes)
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-5)
