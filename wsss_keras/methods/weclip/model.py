"""The WeCLIP model: a frozen CLIP image tower, Grad-CAM pseudo-labels, a trained decoder (see
the package)."""

import keras
import numpy as np
from keras import ops

from wsss_keras.backbones.clip.clip_model import CLIPImageEncoder
from wsss_keras.methods.base import WSSSModel
from wsss_keras.ops.cam import (
    IGNORE_INDEX,
    crop_box_mask,
    min_max_normalize,
    resize_bilinear,
)
from wsss_keras.ops.grad import value_and_gradient
from wsss_keras.ops.losses import balanced_segmentation_loss
from wsss_keras.ops.par import par_refine
from wsss_keras.ops.token_affinity import (
    box_token_mask,
    fuse_attention,
    propagate_cams,
    sinkhorn_transition,
)

_PACKAGE = "wsss_keras"

from wsss_keras.methods.weclip.decoder import WeCLIPDecoder
from wsss_keras.methods.weclip.options import WECLIP_DEFAULTS, weclip_options


def freeze(layer):
    """Make `layer` and every variable inside it non-trainable. `layer.trainable = False`
    alone is not enough for a layer deserialised with `trainable=False` in its config: the
    flag is then set before its sublayers exist, and their variables stay trainable."""
    layer.trainable = False
    for variable in layer.weights:
        variable.trainable = False


def _array_or_zeros(value):
    """A float32 array, or zeros of `value["shape"]` (a saved config's placeholder)."""
    if isinstance(value, dict):
        return np.zeros(tuple(value["shape"]), "float32")
    return np.asarray(value, "float32")


def unit_normalize(x, axis=-1):
    """`x` scaled to unit L2 norm along `axis` (zero vectors stay finite)."""
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeCLIP(WSSSModel):
    """WeCLIP: frozen CLIP image tower, Grad-CAM pseudo-labels, trained decoder.

    Args:
        image_encoder: a `CLIPImageEncoder` (or its config), with its weights; it is frozen.
        num_classes: foreground classes C.
        text_features: `(C, E)` class-prompt embeddings from the CLIP text tower (unit rows;
            `wsss_keras.backbones.clip.embed_class_prompts`).
        background_features: `(M, E)` background-prompt embeddings, or None (M = 0).
        options: dict of `WECLIP_DEFAULTS` overrides.
        decoder_width, decoder_layers, decoder_heads: the decoder's size (256, 3, 8).
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe` (saved
            with the model) and `keras.Model`'s arguments. WeCLIP feeds
            ImageNet-normalised images to CLIP (the default).

    Call arguments:
        images: `(B, H, W, 3)` normalised.

    Returns:
        dict with `"logits"`, the decoder's `(B, h, w, C + 1)`; in training also the frozen
        pass's `"tokens"` (last frozen layer) and `"attention"` (list of head-averaged maps).

    Example:
    >>> encoder = CLIPImageEncoder(patch_size=4, hidden_dim=16, num_layers=2, num_heads=2,
    ...                            mlp_dim=32, output_dim=8, pos_embed_grid=4)
    >>> text = np.eye(3, 8, dtype="float32")
    >>> model = WeCLIP(encoder, 3, text, decoder_width=16, decoder_layers=1, decoder_heads=2)
    >>> tuple(model.segment_logits(np.zeros((1, 16, 16, 3), "float32")).shape)
    (1, 4, 4, 4)
    """

    def __init__(self, image_encoder, num_classes, text_features, background_features=None, options=None,
                 decoder_width=256, decoder_layers=3, decoder_heads=8, **kwargs):
        super().__init__(**kwargs)
        if isinstance(image_encoder, dict):
            image_encoder = keras.saving.deserialize_keras_object(image_encoder)
        if not isinstance(image_encoder, CLIPImageEncoder):
            raise ValueError(f"WeCLIP needs a CLIPImageEncoder, got {type(image_encoder).__name__}.")
        if image_encoder.num_layers < 2:
            raise ValueError("WeCLIP runs the first L-1 blocks frozen and block L for Grad-CAM: the tower needs 2+ blocks.")
        self.image_encoder = image_encoder
        self.num_classes = int(num_classes)
        # A saved model's config holds only the shapes; the values come back with the weights.
        text_features = _array_or_zeros(text_features)
        background = np.zeros((0, text_features.shape[-1]), "float32") if background_features is None else (
            _array_or_zeros(background_features))
        if text_features.shape != (self.num_classes, image_encoder.output_dim):
            raise ValueError(
                f"text_features {text_features.shape}: expected ({self.num_classes}, {image_encoder.output_dim}), "
                "one prompt embedding per foreground class in the CLIP's joint space."
            )
        if background.ndim != 2 or background.shape[1] != image_encoder.output_dim:
            raise ValueError(f"background_features {background.shape}: expected (M, {image_encoder.output_dim}).")
        self.num_background = int(background.shape[0])
        self.options = weclip_options(options, self.default_options(), self.options_section)
        self.decoder_width, self.decoder_layers, self.decoder_heads = int(decoder_width), int(decoder_layers), int(decoder_heads)
        self.image_encoder.build((None, None, None, 3))
        freeze(self.image_encoder)
        self.text_features = self.add_weight(shape=text_features.shape, initializer="zeros", trainable=False,
                                             name="text_features")
        self.text_features.assign(text_features)
        self.background_features = self.add_weight(shape=background.shape, initializer="zeros", trainable=False,
                                                    name="background_features")
        if self.num_background:
            self.background_features.assign(background)
        self.decoder = WeCLIPDecoder(self.num_classes + 1, image_encoder.num_layers - 1, self.decoder_width,
                                     self.decoder_layers, self.decoder_heads, name="weclip_decoder")
        self.decoder.build([(None, None, None, image_encoder.hidden_dim)] * (image_encoder.num_layers - 1))
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}
        # The most classes an image of the data at hand has (set by the stages that compute
        # labelled Grad-CAMs, not saved): block L is copied that many times, not C.
        self.max_labels_per_image = None
        self.built = True

    options_section = "weclip"
    loss_names = ("seg",)
    cams_need_labels = True  # Grad-CAM's softmax runs over the image's classes

    @classmethod
    def default_options(cls):
        return WECLIP_DEFAULTS

    def build_from_config(self, config):
        self.built = True

    @property
    def lr_multipliers(self):
        """WeCLIP puts every trained parameter in its 10x group (spec §3.2)."""
        return {"weclip_decoder/": 10.0}

    # The frozen tower ---------------------------------------------------------------------------
    def frozen_pass(self, images):
        """Blocks 1..L−1: (list of raw residual streams `(B, 1 + N, D)`, list of head-averaged
        attention maps `(B, 1 + N, 1 + N)`), without gradients."""
        encoder = self.image_encoder
        outputs = encoder(images, num_blocks=encoder.num_layers - 1, return_all_tokens=True, return_attention=True)
        tokens = [ops.stop_gradient(t) for t in outputs["all_tokens"]]
        attention = [ops.stop_gradient(a) for a in outputs["attention"]]
        return tokens, attention

    def token_maps(self, tokens, grid):
        """Patch tokens of each frozen layer as `(B, h, w, D)` maps for the decoder."""
        batch = ops.shape(tokens[0])[0]
        return [ops.reshape(t[:, 1:], (batch, grid[0], grid[1], t.shape[-1])) for t in tokens]

    # Grad-CAM ----------------------------------------------------------------------------------
    def cam_text_features(self):
        """`(C + M, E')` unit text rows the Grad-CAM softmax compares with (SSR: TSA-projected)."""
        return unit_normalize(ops.concatenate([self.text_features, self.background_features], axis=0))

    def cam_token_features(self, projected):
        """Per-token image features `(B', N, E')` Grad-CAM pools (SSR: ISA, inference mode)."""
        return projected

    def _logit_scale(self):
        scale = self.options["logit_scale"]
        return 100.0 if scale is None else float(scale)

    def softmax_allowed(self, labels, batch):
        """`(B, C + M)` bool: the text rows in each image's Grad-CAM softmax."""
        classes, background = self.num_classes, self.num_background
        if labels is None or self.options["gradcam_softmax"] == "all":
            allowed = ops.ones((batch, classes), "bool")
        else:  # one row of labels may stand for every view of one image (flips, `cam_maps`)
            allowed = ops.broadcast_to(ops.convert_to_tensor(labels) > 0, (batch, classes))
        return ops.concatenate([allowed, ops.ones((batch, background), "bool")], axis=-1)

    def gradcam_probabilities(self, attention_input, last_input, allowed):
        """The softmax Grad-CAM differentiates, from block L's `ln_1` output.

        Args:
            attention_input: `(B, 1 + N, D)`, block L's `ln_1` output (the differentiated input).
            last_input: `(B, 1 + N, D)`, block L's input X_{L−1}, a constant in the residual.
            allowed: `(B, C + M)` bool, `softmax_allowed`.

        Returns:
            (probabilities `(B, C + M)`, block L's head-averaged attention, the projected
            tokens `ln_post(Z) @ proj` `(B, 1 + N, E)`).
        """
        encoder = self.image_encoder
        block = encoder.blocks[-1]
        branch, probs = block.attend(attention_input)
        mid = last_input + branch  # the residual X_{L-1} is a constant: only the attention branch
        out = mid + block.mlp(block.norm2(mid))
        projected = encoder.project(out)
        features = self.cam_token_features(projected[:, 1:])
        image = unit_normalize(ops.mean(features, axis=1))
        logits = self._logit_scale() * ops.matmul(image, ops.transpose(self.cam_text_features()))
        logits = ops.where(allowed, logits, -1e4)
        return ops.softmax(logits, axis=-1), ops.mean(probs, axis=1), projected

    def grad_cams(self, last_input, labels=None, classes_per_image=None):
        """Grad-CAM of every class from block L's `ln_1` output (spec §2.4).

        Args:
            last_input: `(B, 1 + N, D)`, block L's input (the frozen pass's last layer).
            labels: `(B, C)` multi-hot, or None; with `gradcam_softmax = "present"` only the
                labelled classes (and the background prompts) enter the softmax.
            classes_per_image: with `labels`, compute only each image's first K labelled
                classes (K at least its number of labels; the others' CAMs are returned as 0,
                which is what the callers multiply them by): block L is copied K times
                instead of C, so COCO's 80 classes cost what an image's few labels do. None:
                every class.

        Returns:
            (cams `(B, N, C)` = A_p · mean_p ∂π_c/∂A_p before ReLU, block L's head-averaged
            attention `(B, 1 + N, 1 + N)`, the projected tokens `ln_post(Z) @ proj`
            `(B, 1 + N, E)`), all without gradients.
        """
        block = self.image_encoder.blocks[-1]
        classes, background = self.num_classes, self.num_background
        last_input = ops.stop_gradient(last_input)
        batch = ops.shape(last_input)[0]
        normed = block.norm1(last_input)
        allowed = self.softmax_allowed(labels, batch)
        chosen = None  # (B, K) class ids of the copies, when fewer than C
        copies = classes
        if labels is not None and classes_per_image is not None and int(classes_per_image) < classes:
            copies = max(int(classes_per_image), 1)
            # One row of labels may stand for every view of one image (flips, `cam_maps`).
            labels = ops.broadcast_to(ops.cast(labels, "float32"), (batch, classes))
            # The labelled classes first (ties by class id): top-k of labels minus a small ramp.
            ranked = labels - ops.arange(classes, dtype="float32")[None, :] / (2.0 * classes)
            chosen = ops.top_k(ranked, copies)[1]
        # One copy of block L per class, stacked on the batch axis (copy c = rows c·B..c·B+B−1):
        # the gradient of Σ_c π_c(copy c) is then every class's own gradient in one pass.
        repeated_input = ops.tile(last_input, (copies, 1, 1))
        repeated_allowed = ops.tile(allowed, (copies, 1))
        if chosen is None:
            targets = ops.repeat(ops.eye(classes + background)[:classes], batch, axis=0)
        else:
            targets = ops.one_hot(ops.reshape(ops.transpose(chosen), (-1,)), classes + background)

        def class_probabilities(attention_input):
            probabilities, attention, projected = self.gradcam_probabilities(attention_input, repeated_input, repeated_allowed)
            return ops.sum(probabilities * targets), (attention[:batch], projected[:batch])

        (_, (attention, projected)), gradient = value_and_gradient(
            class_probabilities, ops.tile(normed, (copies, 1, 1)))
        gradient = ops.reshape(gradient, (copies, batch) + tuple(gradient.shape[1:]))
        weights = ops.mean(gradient[:, :, 1:], axis=2)  # (copies, B, D)
        cams = ops.einsum("bnd,cbd->bnc", normed[:, 1:], weights)
        if chosen is not None:  # copy k of image b back to class chosen[b, k]; unlabelled classes 0
            labelled = ops.cast(labels > 0, cams.dtype)
            cams = ops.einsum("bnk,bkc->bnc", cams, ops.one_hot(chosen, classes)) * labelled[:, None, :]
        return ops.stop_gradient(cams), ops.stop_gradient(attention), ops.stop_gradient(projected)

    def cam_maps(self, images, labels=None):
        """Raw Grad-CAMs `(B, h, w, C)` before ReLU and normalisation."""
        tokens, _ = self.frozen_pass(images)
        cams, _, _ = self.grad_cams(tokens[-1], labels, self.max_labels_per_image)
        grid = self.image_encoder.patch_grid(images)
        return ops.reshape(cams, (ops.shape(cams)[0], grid[0], grid[1], self.num_classes))

    # Affinity and pseudo-labels ----------------------------------------------------------------
    def affinity_attention(self, images, attention):
        """The patch-to-patch attention `(B, N, N)` the affinity starts from: the mean of the
        last `affinity_layers` maps (SSR mixes DINO's in)."""
        layers = attention[-int(self.options["affinity_layers"]):]
        return fuse_attention([a[:, 1:, 1:] for a in layers])

    def transition(self, images, attention):
        """Sinkhorn-normalised `(B, N, N)` transition from `affinity_attention`."""
        return sinkhorn_transition(self.affinity_attention(images, attention), int(self.options["sinkhorn_iterations"]))

    def propagation_masks(self, token_cams, labels, targets):
        """Token masks `(B, h, w, C)` of the tokens each class may gather from (WeCLIP: boxes)."""
        return box_token_mask(token_cams, float(self.options["box_threshold"]))

    def refined_cams(self, images, labels, targets=None, frozen=None, propagate=True):
        """Affinity-refined token CAMs `(B, h, w, C)` in [0, 1], absent classes zero, and the
        initial (normalised) ones, as `(refined, initial, projected tokens)` (refined is None
        without `propagate`)."""
        tokens, attention = frozen if frozen is not None else self.frozen_pass(images)
        cams, last_attention, projected = self.grad_cams(tokens[-1], labels, self.max_labels_per_image)
        grid = self.image_encoder.patch_grid(images)
        batch = ops.shape(cams)[0]
        present = ops.cast(labels, "float32")[:, None, None, :]
        initial = min_max_normalize(ops.reshape(ops.relu(cams), (batch, grid[0], grid[1], self.num_classes))) * present
        if not propagate:
            return None, initial, projected
        transition = self.transition(images, list(attention) + [last_attention])
        masks = self.propagation_masks(initial, labels, targets)
        refined = propagate_cams(transition, initial, masks)
        refined = min_max_normalize(ops.relu(refined)) * present
        return refined, initial, projected

    def pseudo_labels_from_cams(self, images, cams, labels):
        """(B, H, W) int labels: CAMs bilinear to the image, background (1 − max)^p, PAR, argmax."""
        size = (images.shape[1], images.shape[2])
        cams = resize_bilinear(cams, size)
        background = ops.power(1.0 - ops.max(cams, axis=-1, keepdims=True), float(self.options["bg_power"]))
        scores = ops.concatenate([background, cams], axis=-1)
        scores = par_refine(images, scores, tuple(self.options["par_dilations"]), int(self.options["par_iterations"]))
        present = ops.concatenate([ops.ones_like(labels[:, :1]), labels], axis=-1)
        scores = ops.where(ops.cast(present, "bool")[:, None, None, :], scores, -1.0)
        return ops.argmax(scores, axis=-1)

    def online_pseudo_labels(self, images, labels, targets=None):
        """The pseudo-labels the decoder learns from, `(B, H, W)` int (no ignore region)."""
        refined, _, _ = self.refined_cams(images, ops.cast(labels, "float32"), targets)
        return ops.stop_gradient(self.pseudo_labels_from_cams(images, refined, ops.cast(labels, "float32")))

    # Segmentation ------------------------------------------------------------------------------
    def segment_logits(self, images, frozen=None, training=False):
        tokens, _ = frozen if frozen is not None else self.frozen_pass(images)
        logits, _ = self.decoder(self.token_maps(tokens, self.image_encoder.patch_grid(images)), training=training)
        return logits

    def call(self, images, training=None):
        frozen = self.frozen_pass(images)
        logits = self.segment_logits(images, frozen, training=training)
        if not training:
            return {"logits": logits}
        return {"logits": logits, "tokens": frozen[0], "attention": frozen[1]}

    def extra_losses(self, images, labels, targets, frozen, initial, projected):
        """Method-specific loss terms (SSR: CMPA's prototype loss); WeCLIP has none."""
        return {}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict) or "tokens" not in y_pred:
            y_pred = self(x, training=True)
        targets = y if isinstance(y, dict) else {"labels": y}
        labels = ops.cast(targets["labels"], "float32")
        frozen = (y_pred["tokens"], y_pred["attention"])
        refined, initial, projected = self.refined_cams(x, labels, targets, frozen)
        pseudo = ops.stop_gradient(self.pseudo_labels_from_cams(x, refined, labels))
        boxes = targets.get("crop_boxes")
        if self.options["ignore_padding"] and boxes is not None:
            inside = crop_box_mask(boxes, x.shape[1], x.shape[2])
            pseudo = ops.where(inside, ops.cast(pseudo, "int32"), IGNORE_INDEX)
        logits = resize_bilinear(y_pred["logits"], (x.shape[1], x.shape[2]))
        terms = {"seg": balanced_segmentation_loss(logits, pseudo)}
        total = float(self.options["seg_weight"]) * terms["seg"]
        for name, (weight, value) in self.extra_losses(x, labels, targets, frozen, initial, projected).items():
            terms[name] = value
            total = total + weight * value
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            image_encoder=keras.saving.serialize_keras_object(self.image_encoder),
            num_classes=self.num_classes,
            text_features={"shape": list(self.text_features.shape)},
            background_features={"shape": list(self.background_features.shape)},
            options=dict(self.options),
            decoder_width=self.decoder_width,
            decoder_layers=self.decoder_layers,
            decoder_heads=self.decoder_heads,
        )
        return config
