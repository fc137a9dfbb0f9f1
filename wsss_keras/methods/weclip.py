"""WeCLIP (Zhang et al., CVPR 2024, "Frozen CLIP: A Strong Backbone for Weakly Supervised
Semantic Segmentation"): the single-stage frozen-CLIP host of SSR.

A frozen CLIP image tower gives, per image,
- the residual stream of its first L−1 blocks and their head-averaged attention (one pass);
- Grad-CAMs (CLIP-ES): block L and the head are run again from block L's `ln_1` output, the
  image embedding is the mean of the projected patch tokens, and the target is the softmax of
  `logit_scale · cos(image, text)` over the present classes' prompts and the background
  prompts; the gradient flows through block L's attention branch only;
- a transition matrix from the mean attention of the last `affinity_layers` blocks, Sinkhorn
  normalised, symmetrised and squared, which propagates each class's CAM inside a mask (the
  CAM's boxes, `scoremap2bbox`; SSR replaces it);
- online pseudo-labels: min-max, bilinear to the crop, background `(1 − max)^bg_power`, PAR,
  argmax; no ignore region: the crop's padding is trained on like any pixel, as WeCLIP's
  training loop does (it loads `img_box` and never reads it); `ignore_padding` masks it with
  255 from the targets' `crop_boxes` instead, as ToCo does.
A light decoder (per-layer MLPs over the L−1 layers, a 1x1 fusion, a 3-block transformer) is
the only trained part (CE on the pseudo-labels, ToCo/WeCLIP's balanced form) and the only one
used for prediction.

A method built on the host (SSR) subclasses `WeCLIP` and overrides its steps: the Grad-CAM
feature spaces (`cam_text_features`, `cam_token_features`), `transition`, `propagation_masks`
and `extra_losses` (its loss terms), which read the loader's item maps from the targets; its
training stage plugs in through `wsss_keras.pipelines.weclip.WeCLIPPlugin`. The host never
imports such a method.

Verified in WeCLIP's code (spec methods/ssr.md §2.1-2.8, [CODE-W]/[CODE-E]); differences:
- all CLIP classes' Grad-CAMs come from one backward pass over a copy of block L per class
  (same values as one pass per class);
- WeCLIP's RFM (decoder-affinity refinement after 15k steps) and its affinity loss are not
  built: SSR's loss does not use them (spec §2.9);
- the frozen tower runs in float32 (the reference runs fp16; ~1e-3 apart).
"""

import keras
import numpy as np
from keras import ops

from wsss_keras.backbones.clip.clip_model import CLIPImageEncoder
from wsss_keras.backbones.transformer import TransformerBlock
from wsss_keras.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss_keras.methods.base import WSSSModel
from wsss_keras.methods.initializers import torch_bias_uniform, torch_uniform
from wsss_keras.ops.cam import IGNORE_INDEX, crop_box_mask, min_max_normalize, resize_bilinear
from wsss_keras.ops.grad import value_and_gradient
from wsss_keras.ops.losses import balanced_segmentation_loss
from wsss_keras.ops.par import DEFAULT_DILATIONS, par_refine
from wsss_keras.ops.token_affinity import box_token_mask, fuse_attention, propagate_cams, sinkhorn_transition

_PACKAGE = "wsss_keras"

# WeCLIP's VOC settings (configs/voc_attn_reg.yaml, clip/clip_tool.py, WeCLIP_model/PAR.py).
WECLIP_DEFAULTS = {
    "logit_scale": 100.0,             # exp(logit_scale) of OpenAI's ViT-B/16; None = the CLIP's own
    "gradcam_softmax": "present",     # "present": present classes + background prompts (CLIP-ES);
                                      # "all": every class + background prompts
    "affinity_layers": 8,             # last k attention maps averaged
    "sinkhorn_iterations": 3,
    "box_threshold": 0.4,             # 0.7 on COCO
    "bg_power": 1.0,                  # cam_bg_thres
    "par_iterations": 20,
    "par_dilations": list(DEFAULT_DILATIONS),
    "seg_weight": 1.0,
    "ignore_padding": False,          # False: padding keeps its pseudo-label (WeCLIP's code);
                                      # True: 255 outside `crop_boxes` in the seg loss (ToCo's way)
}


def weclip_options(overrides=None, defaults=None, source="weclip"):
    """`defaults` (WeCLIP's) with `overrides`; unknown keys raise a ValueError naming them."""
    defaults = dict(WECLIP_DEFAULTS if defaults is None else defaults)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"[{source}] unknown setting(s) {unknown}; known: {sorted(defaults)}.")
    options = {**defaults, **overrides}
    if options["gradcam_softmax"] not in ("present", "all"):
        raise ValueError(f"[{source}] gradcam_softmax = {options['gradcam_softmax']!r}; choose 'present' or 'all'.")
    if int(options["affinity_layers"]) < 1:
        raise ValueError(f"[{source}] affinity_layers = {options['affinity_layers']}; give at least 1.")
    if not isinstance(options["ignore_padding"], bool):
        raise ValueError(f"[{source}] ignore_padding = {options['ignore_padding']!r}; give true or false.")
    return options


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


def _unit(x, axis=-1):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeCLIPDecoder(keras.layers.Layer):
    """WeCLIP's decoder (`SegFormerHead` + `DecoderTransformer`): per input layer a token MLP
    (Linear → ReLU → Linear), concatenation, a 1x1 fusion with bias, channel dropout, then
    CLIP-style pre-LN blocks without positions, and a 1x1 classifier.

    Args:
        num_classes: output channels (foreground classes + background).
        num_inputs: how many token maps come in (WeCLIP: the 11 frozen layers).
        width: channels of the MLPs, the fusion and the transformer (256).
        num_layers: transformer blocks (3).
        num_heads: attention heads (8).
        dropout: `SpatialDropout2D` rate after the fusion (0.1).

    Call arguments:
        token_maps: list of `num_inputs` maps `(B, h, w, D)`.

    Returns:
        `(logits (B, h, w, num_classes), fused (B, h, w, width))`.

    Example:
    >>> decoder = WeCLIPDecoder(3, num_inputs=2, width=16, num_layers=1, num_heads=2)
    >>> logits, fused = decoder([np.zeros((1, 4, 4, 8), "float32")] * 2)
    >>> tuple(logits.shape), tuple(fused.shape)
    ((1, 4, 4, 3), (1, 4, 4, 16))
    """

    def __init__(self, num_classes, num_inputs, width=256, num_layers=3, num_heads=8, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.num_inputs, self.width = int(num_classes), int(num_inputs), int(width)
        self.num_layers, self.num_heads, self.dropout_rate = int(num_layers), int(num_heads), float(dropout)
        self.mlps = []
        for index in range(self.num_inputs):
            self.mlps.append((
                keras.layers.Dense(self.width, activation="relu", name=f"mlp{index}_fc1"),
                keras.layers.Dense(self.width, name=f"mlp{index}_fc2"),
            ))
        self.fuse = keras.layers.Dense(self.width, name="fuse")
        self.dropout = keras.layers.SpatialDropout2D(self.dropout_rate)
        self.blocks = [
            TransformerBlock(self.width, self.num_heads, 4 * self.width, activation="quick_gelu",
                             layer_norm_epsilon=1e-5, name=f"block{index}")
            for index in range(self.num_layers)
        ]
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier")

    def build(self, input_shape):
        shapes = list(input_shape)
        if len(shapes) != self.num_inputs:
            raise ValueError(f"{self.name}: built for {self.num_inputs} token maps, given {len(shapes)}.")
        for (fc1, fc2), shape in zip(self.mlps, shapes):
            depth = shape[-1]
            # PyTorch's nn.Linear / nn.Conv2d defaults, as the reference trains them.
            for layer, fan_in in ((fc1, depth), (fc2, self.width)):
                layer.kernel_initializer, layer.bias_initializer = torch_uniform(fan_in), torch_bias_uniform(fan_in)
            fc1.build((None, depth))
            fc2.build((None, self.width))
        fan_in = self.width * self.num_inputs
        self.fuse.kernel_initializer, self.fuse.bias_initializer = torch_uniform(fan_in), torch_bias_uniform(fan_in)
        self.fuse.build((None, fan_in))
        for block in self.blocks:
            block.build((None, None, self.width))
        self.classifier.kernel_initializer = torch_uniform(self.width)
        self.classifier.bias_initializer = torch_bias_uniform(self.width)
        self.classifier.build((None, self.width))
        self.built = True

    def call(self, token_maps, training=None):
        maps = [fc2(fc1(tokens)) for (fc1, fc2), tokens in zip(self.mlps, token_maps)]
        fused = self.dropout(self.fuse(ops.concatenate(maps, axis=-1)), training=training)
        batch, height, width = ops.shape(fused)[0], fused.shape[1], fused.shape[2]
        tokens = ops.reshape(fused, (batch, -1, self.width))
        for block in self.blocks:
            tokens, _ = block(tokens)
        logits = self.classifier(ops.reshape(tokens, (batch, height, width, self.width)))
        return logits, fused

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_inputs=self.num_inputs, width=self.width,
                      num_layers=self.num_layers, num_heads=self.num_heads, dropout=self.dropout_rate)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeCLIP(keras.Model, WSSSModel):
    """WeCLIP: frozen CLIP image tower, Grad-CAM pseudo-labels, trained decoder.

    Args:
        image_encoder: a `CLIPImageEncoder` (or its config), with its weights; it is frozen.
        num_classes: foreground classes C.
        text_features: `(C, E)` class-prompt embeddings from the CLIP text tower (unit rows;
            `wsss_keras.backbones.clip.embed_class_prompts`).
        background_features: `(M, E)` background-prompt embeddings, or None (M = 0).
        options: dict of `WECLIP_DEFAULTS` overrides.
        decoder_width, decoder_layers, decoder_heads: the decoder's size (256, 3, 8).
        class_names, image_mean, image_std, recipe: saved with the model (`WSSSModel`);
            WeCLIP feeds ImageNet-normalised images to CLIP.

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
                 decoder_width=256, decoder_layers=3, decoder_heads=8, class_names=None, image_mean=IMAGENET_MEAN,
                 image_std=IMAGENET_STD, recipe=None, **kwargs):
        super().__init__(**kwargs)
        self._init_wsss(class_names, image_mean, image_std, recipe)
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
        return _unit(ops.concatenate([self.text_features, self.background_features], axis=0))

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
        else:
            allowed = ops.convert_to_tensor(labels) > 0
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
        image = _unit(ops.mean(features, axis=1))
        logits = self._logit_scale() * ops.matmul(image, ops.transpose(self.cam_text_features()))
        logits = ops.where(allowed, logits, -1e4)
        return ops.softmax(logits, axis=-1), ops.mean(probs, axis=1), projected

    def grad_cams(self, last_input, labels=None):
        """Grad-CAM of every class from block L's `ln_1` output (spec §2.4).

        Args:
            last_input: `(B, 1 + N, D)`, block L's input (the frozen pass's last layer).
            labels: `(B, C)` multi-hot, or None; with `gradcam_softmax = "present"` only the
                labelled classes (and the background prompts) enter the softmax.

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
        # One copy of block L per class, stacked on the batch axis (copy c = rows c·B..c·B+B−1):
        # the gradient of Σ_c π_c(copy c) is then every class's own gradient in one pass.
        repeated_input = ops.tile(last_input, (classes, 1, 1))
        repeated_allowed = ops.tile(allowed, (classes, 1))
        targets = ops.repeat(ops.eye(classes + background)[:classes], batch, axis=0)

        def class_probabilities(attention_input):
            probabilities, attention, projected = self.gradcam_probabilities(attention_input, repeated_input, repeated_allowed)
            return ops.sum(probabilities * targets), (attention[:batch], projected[:batch])

        (_, (attention, projected)), gradient = value_and_gradient(
            class_probabilities, ops.tile(normed, (classes, 1, 1)))
        gradient = ops.reshape(gradient, (classes, batch) + tuple(gradient.shape[1:]))
        weights = ops.mean(gradient[:, :, 1:], axis=2)  # (C, B, D)
        cams = ops.einsum("bnd,cbd->bnc", normed[:, 1:], weights)
        return ops.stop_gradient(cams), ops.stop_gradient(attention), ops.stop_gradient(projected)

    def cam_maps(self, images, labels=None):
        """Raw Grad-CAMs `(B, h, w, C)` before ReLU and normalisation."""
        tokens, _ = self.frozen_pass(images)
        cams, _, _ = self.grad_cams(tokens[-1], labels)
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
        cams, last_attention, projected = self.grad_cams(tokens[-1], labels)
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
            **self._wsss_config(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
