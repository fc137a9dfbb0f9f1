"""SSR (Bi et al., AAAI 2026, "SSR: Semantic and Spatial Rectification for CLIP-based Weakly
Supervised Segmentation") on the WeCLIP host.

SSR has no public code: everything below beyond WeCLIP is the paper read through the spec
(methods/ssr.md §2.4-2.6, tags [PAPER] / [INTERP] / [UNSPEC]); each interpretation is a knob
in `SSR_DEFAULTS`, whose defaults are the spec's, never the paper's numbers.

- CMPA (Cross-Modal Prototype Alignment, §2.5): two projection heads, ISA for image tokens and
  TSA for text features (Linear → BN → ReLU → Linear [UNSPEC sizes 512 → 256]). Foreground
  features are the CAM-weighted means of ISA(tokens) per present class [INTERP: soft
  weights]; the loss is a cross-entropy over cos(feature, TSA(text_c)) / τ with τ learnable
  from 0.05 [PAPER], the positive class being the nearest image prototype ("cluster", paper)
  or the label ("label"); image prototypes are K-means centroids of a feature bank refreshed
  every 5,000 steps [PAPER] (`wsss_keras.pipelines.ssr.prototype_refresh`), from a pass over
  the whole training set (paper) or a memory of the last refresh interval's loss features.
  Grad-CAM then runs in the aligned space (`cam_space = "aligned"` [INTERP]): ISA on every
  projected token (inference mode), TSA on the class and background prompts, logit scale kept
  at 100; for the first `cmpa_warmup_steps` it runs in CLIP's space while the heads learn
  (the spec's suggested deviation, §3.2: freshly initialised heads are a random projection).
- BatchNorm modes: ISA's loss features and the bank's use batch statistics over their batch's
  tokens (the bank's pass without touching the running statistics); ISA at CAM time uses the
  running ones (one image at a time, spec §7.8). TSA only ever sees one fixed set of rows, the
  C class + M background prompts, so it always normalises exactly those rows with their own
  statistics, in the loss and at CAM time alike (the background rows enter Grad-CAM's softmax,
  so they are normalised with the statistics they take part in).
- SGC (Superpixel-Guided Correction, §2.6.2-2.6.3): the propagation affinity mixes CLIP's
  last-8 mean attention and DINO ViT-S/16's last-block attention 0.4 : 0.6 [PAPER] before the
  Sinkhorn normalisation [INTERP: fuse first]; the box mask is replaced by colour regions of
  SLIC superpixels (the loader's `regions`) whose share of confident activation passes a
  threshold [UNSPEC 0.4 / 0.5], pooled to tokens; propagation is column-masked by it.
- Loss: L = L_proto + 0.1 · L_seg [PAPER].

Not built: WeCLIP's RFM and affinity loss (SSR does not use them, spec §2.9).
"""

import math

import keras
import numpy as np
from keras import ops

from wsss_keras.backbones.token_dense import TokenDense
from wsss_keras.methods.weclip import WECLIP_DEFAULTS, WeCLIP, freeze, unit_normalize
from wsss_keras.ops.cam import resize_bilinear
from wsss_keras.ops.prototypes import (
    MAX_INVERSE_TEMPERATURE,
    masked_average_pool,
    prototype_contrastive_loss,
    text_to_image_loss,
)
from wsss_keras.ops.region_masks import (
    correction_mask,
    pixel_to_token_mask,
    target_region_mask,
)
from wsss_keras.ops.token_affinity import (
    box_token_mask,
    fuse_attention,
    sinkhorn_transition,
)
from wsss_keras.step_counts import SSR_STEP_KNOBS

_PACKAGE = "wsss_keras"

SSR_DEFAULTS = {
    **WECLIP_DEFAULTS,
    "seg_weight": 0.1,                # γ [PAPER]
    "proto_weight": 1.0,
    "projection_hidden": 512,         # ISA/TSA Linear → BN → ReLU → Linear [UNSPEC]
    "projection_dim": 256,            # d2 [UNSPEC]
    "temperature": 0.05,              # τ_proto initial value, learnable [PAPER]
    "pos_idx_mode": "cluster",        # "cluster" (paper) or "label" [INTERP]
    "background_negatives": False,    # TSA(background prompts) as extra negatives of L_proto [INTERP]
    "t2i_weight": 0.0,                # weight of L_t2i = CE(cos(P_T, P_I) / τ, diag), not in the paper [INTERP]
    "prototype_refresh": SSR_STEP_KNOBS["prototype_refresh"],  # steps between image-prototype refreshes [PAPER]
    "prototype_bank": "epoch",        # "epoch": a pass over the whole training set (paper); "recent": the
                                      # loss's features of the last refresh interval [INTERP]
    "prototype_bank_size": 200,       # "recent": features kept per class [INTERP]
    "kmeans_iterations": 20,          # [UNSPEC]
    "cam_space": "aligned",           # Grad-CAM through ISA/TSA ("aligned") or in CLIP's space ("clip") [INTERP]
    "cmpa_warmup_steps": SSR_STEP_KNOBS["cmpa_warmup_steps"],  # first steps with Grad-CAM in CLIP's space while the heads learn; 0 = paper [INTERP]
    "aligned_logit_scale": "clip",    # aligned-space softmax scale: "clip" (logit_scale) or "inverse_temperature" (1/τ) [INTERP]
    "isa_input": "tokens",            # ISA on every token ("tokens") or on the pooled feature ("pooled") [INTERP]
    "clip_weight": 0.4,               # CLIP : DINO attention [PAPER]
    "dino_weight": 0.6,
    "dino_layers": 1,                 # DINO's last k blocks averaged (1 = the last block) [INTERP]
    "affinity_fusion": "before_sinkhorn",  # mix CLIP and DINO "before_sinkhorn" or Sinkhorn each "after_sinkhorn" [INTERP]
    "mask_mode": "superpixel",        # "superpixel", "superpixel_and_box", "superpixel_or_box", "box" [INTERP]
    "mask_fallback": "box",           # an empty superpixel mask falls back to "box", "ones" or "none" [INTERP]
    "region_high": 0.4,               # θ_h [UNSPEC]
    "region_ratio": 0.5,              # θ_r [UNSPEC]
    "region_formula": "within",       # "within" (spec formula a) or "share" (b) [INTERP]
    "token_mask_threshold": 0.5,      # pixel share of a token for it to be a target [INTERP]
}
_CHOICES = {
    "pos_idx_mode": ("cluster", "label"),
    "prototype_bank": ("epoch", "recent"),
    "cam_space": ("aligned", "clip"),
    "aligned_logit_scale": ("clip", "inverse_temperature"),
    "isa_input": ("tokens", "pooled"),
    "affinity_fusion": ("before_sinkhorn", "after_sinkhorn"),
    "mask_mode": ("superpixel", "superpixel_and_box", "superpixel_or_box", "box"),
    "mask_fallback": ("box", "ones", "none"),
    "region_formula": ("within", "share"),
}
# Options of earlier versions that a saved model may still carry: dropped on load.
_RETIRED_OPTIONS = ("prototype_images",)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SSRProjectionHead(keras.layers.Layer):
    """CMPA's ISA / TSA: Linear → BatchNorm → ReLU → Linear, over the last axis.

    Registered as `wsss_keras>SSRProjectionHead` (ToCo has its own `ProjectionHead`).

    Args:
        hidden: width of the first Linear.
        output_dim: d2.

    Call arguments:
        x: `(..., D)`.
        training: Keras's BatchNorm flag (batch statistics, running ones updated).
        mask: optional `(...)` bool, the rows whose statistics count (the others are still
            transformed).
        batch_statistics: normalise with `x`'s own (masked) statistics and leave the running
            ones alone, whatever `training` says (TSA's fixed prompt set; the prototype
            bank's pass).

    Example:
    >>> head = SSRProjectionHead(8, 4)
    >>> tuple(head(np.zeros((2, 5, 6), "float32")).shape)
    (2, 5, 4)
    """

    def __init__(self, hidden, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.output_dim = int(hidden), int(output_dim)
        self.supports_masking = True  # `mask` selects the rows BatchNorm's statistics count
        self.fc1 = TokenDense(self.hidden, name="fc1")
        self.norm = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")
        self.fc2 = TokenDense(self.output_dim, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.norm.build(tuple(input_shape[:-1]) + (self.hidden,))
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden,))
        self.built = True

    def _batch_normalize(self, hidden, mask):
        """BatchNorm with `hidden`'s own statistics (Keras's masked formula), no update."""
        axes = tuple(range(len(hidden.shape) - 1))
        if mask is None:
            mean, variance = ops.moments(hidden, axes)
        else:
            weights = ops.cast(mask, hidden.dtype)[..., None]
            count = ops.sum(weights * ops.ones_like(hidden), axes) + keras.config.epsilon()
            mean = ops.sum(weights * hidden, axes) / count
            variance = ops.sum(weights * ops.square(hidden - mean), axes) / count
        return ops.batch_normalization(hidden, mean, variance, axis=-1, offset=self.norm.beta,
                                       scale=self.norm.gamma, epsilon=self.norm.epsilon)

    def call(self, x, training=None, mask=None, batch_statistics=False):
        hidden = self.fc1(x)
        if batch_statistics:
            hidden = self._batch_normalize(hidden, mask)
        else:
            hidden = self.norm(hidden, training=training, mask=mask)
        return self.fc2(ops.relu(hidden))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "output_dim": self.output_dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SSR(WeCLIP):
    """SSR: WeCLIP + CMPA + SGC (see the module docstring).

    Args:
        image_encoder, num_classes, text_features, background_features: as `WeCLIP`.
        dino: optional frozen `ViTEncoder` (DINO ViT-S/16) whose last-block attention joins
            the affinity; without it the affinity is CLIP's alone.
        num_regions: the static bound of the colour-region ids (`SuperpixelCache.num_segments`
            of the regions folder); needed unless `mask_mode = "box"`.
        options: `SSR_DEFAULTS` overrides.
        **kwargs: the rest of `WeCLIP`'s arguments.

    Training targets: `"labels"` and, for the superpixel masks, `"regions"` `(B, H, W)` int
    (colour cluster + 1, 0 = padding).

    Example:
    >>> from wsss_keras.backbones.clip.clip_model import CLIPImageEncoder
    >>> encoder = CLIPImageEncoder(patch_size=4, hidden_dim=16, num_layers=2, num_heads=2,
    ...                            mlp_dim=32, output_dim=8, pos_embed_grid=4)
    >>> model = SSR(encoder, 3, np.eye(3, 8, dtype="float32"), num_regions=5,
    ...             options={"projection_hidden": 8, "projection_dim": 4},
    ...             decoder_width=16, decoder_layers=1, decoder_heads=2)
    >>> tuple(model.cam_maps(np.zeros((1, 16, 16, 3), "float32"), np.ones((1, 3))).shape)
    (1, 4, 4, 3)
    """

    step_counter = "cmpa_step"  # advanced once per training batch (see pipelines.fitting.fit_steps)

    options_section = "ssr"
    loss_names = ("seg", "proto")

    def __init__(self, image_encoder, num_classes, text_features, background_features=None, dino=None,
                 num_regions=None, options=None, **kwargs):
        if isinstance(dino, dict):
            dino = keras.saving.deserialize_keras_object(dino)
        super().__init__(image_encoder, num_classes, text_features, background_features, options=options, **kwargs)
        for key, choices in _CHOICES.items():
            if self.options[key] not in choices:
                raise ValueError(f"[ssr] {key} = {self.options[key]!r}; choose one of {list(choices)}.")
        for key in ("cmpa_warmup_steps", "prototype_bank_size", "dino_layers", "t2i_weight"):
            if float(self.options[key]) < 0:
                raise ValueError(f"[ssr] {key} = {self.options[key]}; give a number >= 0.")
        if int(self.options["dino_layers"]) < 1 or int(self.options["prototype_bank_size"]) < 1:
            raise ValueError("[ssr] dino_layers and prototype_bank_size must be at least 1.")
        if self.options["mask_mode"] != "box" and not num_regions:
            raise ValueError(
                "SGC's superpixel mask needs num_regions (the colour-region cache's bound, SuperpixelCache.num_segments), "
                "or mask_mode = \"box\"."
            )
        self.num_regions = None if num_regions is None else int(num_regions)
        if dino is not None:
            dino.build((None, None, None, 3))
            freeze(dino)
            # A ViT's stride is its patch; a ViT behind a conv stem (the CPU recipe's) has its own.
            stride = getattr(dino, "stride", None) or dino.patch_size
            if stride != self.image_encoder.stride:
                raise ValueError(f"DINO's token stride {stride} must equal the CLIP's {self.image_encoder.stride}.")
            if int(self.options["dino_layers"]) > dino.num_layers:
                raise ValueError(f"[ssr] dino_layers = {self.options['dino_layers']}; DINO has {dino.num_layers} blocks.")
        self.dino = dino
        hidden, dim = int(self.options["projection_hidden"]), int(self.options["projection_dim"])
        width = self.image_encoder.output_dim
        self.image_head = SSRProjectionHead(hidden, dim, name="ssr_isa")
        self.image_head.build((None, None, width))
        self.text_head = SSRProjectionHead(hidden, dim, name="ssr_tsa")
        self.text_head.build((None, width))
        self.log_inverse_temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(1.0 / float(self.options["temperature"]))),
            name="ssr_log_inverse_temperature")
        self.image_prototypes = self.add_weight(shape=(self.num_classes, dim), initializer="zeros", trainable=False,
                                                name="image_prototypes")
        self.prototypes_ready = self.add_weight(shape=(), initializer="zeros", trainable=False, name="prototypes_ready")
        # Training steps run so far (the warm-up's clock and the recent bank's time stamps);
        # saved with the weights, so a resumed run and the trained model's CAMs know the space.
        self.cmpa_step = self.add_weight(shape=(), initializer="zeros", trainable=False, name="cmpa_step")
        if self.options["prototype_bank"] == "recent":
            # Per class, a ring of the last `prototype_bank_size` loss features (slot K is where
            # absent classes' rows are written and forgotten) and the step each was written at.
            size = int(self.options["prototype_bank_size"])
            self.recent_features = self.add_weight(shape=(self.num_classes, size + 1, dim), initializer="zeros",
                                                   trainable=False, name="recent_features")
            self.recent_steps = self.add_weight(shape=(self.num_classes, size + 1),
                                                initializer=keras.initializers.Constant(-1.0), trainable=False,
                                                name="recent_steps")
            self.recent_next = self.add_weight(shape=(self.num_classes,), initializer="zeros", trainable=False,
                                               name="recent_next")
        if float(self.options["t2i_weight"]) > 0:
            self.trackers["t2i"] = keras.metrics.Mean(name="t2i")
        self._records_step = False
        self._both_spaces = False

    @classmethod
    def default_options(cls):
        return SSR_DEFAULTS

    @property
    def lr_multipliers(self):
        """The decoder and the CMPA heads in the 10x group (spec §3.2 [INTERP])."""
        return {"weclip_decoder/": 10.0, "ssr_": 10.0}

    # CMPA ----------------------------------------------------------------------------------------
    def inverse_temperature(self):
        return ops.exp(ops.cast(self.log_inverse_temperature, "float32"))

    def text_rows(self):
        """TSA of the C class and M background prompts `(C + M, d2)`, normalised with those
        rows' own statistics: the same rows in the loss and at CAM time."""
        text = ops.concatenate([self.text_features, self.background_features], axis=0)
        return self.text_head(text, batch_statistics=True)

    def _warms_up(self):
        """Whether Grad-CAM's space depends on the step (aligned space after a warm-up)."""
        return self.options["cam_space"] == "aligned" and float(self.options["cmpa_warmup_steps"]) > 0

    def cams_aligned(self):
        """Scalar bool tensor: Grad-CAM runs in the aligned space at the current step."""
        if self.options["cam_space"] == "clip":
            return ops.convert_to_tensor(False)
        return self.cmpa_step >= float(self.options["cmpa_warmup_steps"])

    def _aligned_tokens(self, projected):
        if self.options["isa_input"] == "pooled":
            # ISA on the pooled feature: WeCLIP's mean over this one row is that row.
            return self.image_head(ops.mean(projected, axis=1, keepdims=True), training=False)
        return self.image_head(projected, training=False)

    def _aligned_logit_scale(self):
        if self.options["aligned_logit_scale"] == "inverse_temperature":
            return ops.minimum(self.inverse_temperature(), MAX_INVERSE_TEMPERATURE)
        return super()._logit_scale()

    def _space_weights(self):
        aligned = ops.cast(self.cams_aligned(), "float32")
        return 1.0 - aligned, aligned

    # During a warm-up Grad-CAM runs with both spaces side by side, the inactive one multiplied
    # by zero: the cosine of the unit-normalised concatenations is then the active space's, so
    # the switch needs neither a retrace nor a second Grad-CAM pass (ISA and TSA are cheap next
    # to block L). Outside Grad-CAM the hooks give the configured space alone.
    def gradcam_probabilities(self, attention_input, last_input, allowed):
        self._both_spaces = self._warms_up()
        try:
            return super().gradcam_probabilities(attention_input, last_input, allowed)
        finally:
            self._both_spaces = False

    def cam_text_features(self):
        if self.options["cam_space"] == "clip":
            return super().cam_text_features()
        aligned = unit_normalize(self.text_rows())
        if not self._both_spaces:
            return aligned
        clip_weight, aligned_weight = self._space_weights()
        return ops.concatenate([clip_weight * super().cam_text_features(), aligned_weight * aligned], axis=-1)

    def cam_token_features(self, projected):
        if self.options["cam_space"] == "clip":
            return projected
        aligned = self._aligned_tokens(projected)
        if not self._both_spaces:
            return aligned
        clip_weight, aligned_weight = self._space_weights()
        if self.options["isa_input"] == "pooled":
            projected = ops.mean(projected, axis=1, keepdims=True)
        return ops.concatenate([clip_weight * projected, aligned_weight * aligned], axis=-1)

    def _logit_scale(self):
        if self.options["cam_space"] == "clip":
            return super()._logit_scale()
        if not self._both_spaces:
            return self._aligned_logit_scale()
        clip_weight, aligned_weight = self._space_weights()
        return clip_weight * super()._logit_scale() + aligned_weight * self._aligned_logit_scale()

    def foreground_features(self, projected, initial, labels, training=False, batch_statistics=False):
        """CAM-weighted ISA features `(B, C, d2)` of every class (CMPA's f_img): ISA on the
        tokens then pooled, or ("pooled") ISA on the pooled feature with the statistics of the
        present (image, class) samples."""
        batch = ops.shape(initial)[0]
        cams = ops.reshape(ops.stop_gradient(initial), (batch, -1, self.num_classes))
        tokens = ops.stop_gradient(projected[:, 1:])
        if self.options["isa_input"] == "pooled":
            present = ops.convert_to_tensor(labels) > 0
            return self.image_head(masked_average_pool(tokens, cams), training=training, mask=present,
                                   batch_statistics=batch_statistics)
        return masked_average_pool(self.image_head(tokens, training=training, batch_statistics=batch_statistics), cams)

    def prototype_features(self, images, labels):
        """Detached foreground features `(B, C, d2)` for the prototype bank (no-grad pass),
        with ISA normalised as in the loss (this batch's statistics) but its running
        statistics untouched."""
        labels = ops.cast(labels, "float32")
        _, initial, projected = self.refined_cams(images, labels, {"labels": labels}, propagate=False)
        return ops.stop_gradient(self.foreground_features(projected, initial, labels, batch_statistics=True))

    def _remember(self, features, labels):
        """Write this step's present features into the per-class rings (the "recent" bank)."""
        size = int(self.options["prototype_bank_size"])
        classes = self.num_classes
        present = ops.cast(labels > 0, "float32")                       # (B, C)
        rank = ops.cumsum(present, axis=0) - 1.0                        # order within the class
        count = ops.sum(present, axis=0)
        # Only a class's last `size` samples of the batch are written, so no two share a slot.
        written = (present > 0) & (rank >= count[None, :] - size)
        slot = ops.mod(self.recent_next[None, :] + rank, float(size))
        slot = ops.cast(ops.where(written, slot, float(size)), "int32")
        batch = ops.shape(features)[0]
        class_ids = ops.tile(ops.arange(classes, dtype="int32")[None, :], (batch, 1))
        indices = ops.reshape(ops.stack([class_ids, slot], axis=-1), (-1, 2))
        rows = ops.reshape(ops.stop_gradient(unit_normalize(features)), (-1, features.shape[-1]))
        stamps = ops.cast(ops.zeros_like(indices[:, 0]), "float32") + self.cmpa_step
        self.recent_features.assign(ops.scatter_update(self.recent_features, indices, rows))
        self.recent_steps.assign(ops.scatter_update(self.recent_steps, indices, stamps))
        self.recent_next.assign(ops.mod(self.recent_next + count, float(size)))

    def recent_samples(self):
        """NumPy (features (S, d2), class ids (S,)) the "recent" memory holds from the last
        `prototype_refresh` steps."""
        size = int(self.options["prototype_bank_size"])
        features = ops.convert_to_numpy(self.recent_features)[:, :size]
        stamps = ops.convert_to_numpy(self.recent_steps)[:, :size]
        oldest = float(ops.convert_to_numpy(self.cmpa_step)) - float(self.options["prototype_refresh"])
        keep = (stamps >= 0) & (stamps >= oldest)
        classes = np.nonzero(keep)[0]
        return features[keep], classes

    def extra_losses(self, images, labels, targets, frozen, initial, projected):
        features = self.foreground_features(projected, initial, labels, training=True)
        if self._records_step and self.options["prototype_bank"] == "recent":
            self._remember(features, labels)
        rows = self.text_rows()
        text, background = rows[: self.num_classes], rows[self.num_classes:]
        negatives = background if self.options["background_negatives"] and self.num_background else None
        inverse_temperature = self.inverse_temperature()
        by_label = prototype_contrastive_loss(features, labels, text, inverse_temperature, pos_idx_mode="label",
                                              negatives=negatives)
        ready = self.prototypes_ready > 0.5
        if self.options["pos_idx_mode"] == "label":
            loss = by_label
        else:
            # Until the first bank refresh there are no image prototypes: the label is the positive.
            by_cluster = prototype_contrastive_loss(features, labels, text, inverse_temperature,
                                                    image_prototypes=self.image_prototypes, pos_idx_mode="cluster",
                                                    negatives=negatives)
            loss = ops.where(ready, by_cluster, by_label)
        terms = {"proto": (float(self.options["proto_weight"]), loss)}
        if float(self.options["t2i_weight"]) > 0:
            t2i = text_to_image_loss(text, self.image_prototypes, inverse_temperature)
            terms["t2i"] = (float(self.options["t2i_weight"]), ops.where(ready, t2i, 0.0))
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # A training step (not an evaluation) fills the recent bank and advances the clock.
        self._records_step = bool(training)
        try:
            total = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        finally:
            self._records_step = False
        if training:
            self.cmpa_step.assign(self.cmpa_step + 1.0)
        return total

    # SGC -----------------------------------------------------------------------------------------
    def dino_attention(self, images):
        """DINO's attention, head-averaged, patch to patch `(B, N, N)`: the mean of its last
        `dino_layers` blocks (1: the last block)."""
        outputs = self.dino(images, return_attention=True)
        layers = outputs["attention"][-int(self.options["dino_layers"]):]
        return ops.stop_gradient(fuse_attention([ops.mean(a, axis=1)[:, 1:, 1:] for a in layers]))

    def affinity_attention(self, images, attention):
        clip = super().affinity_attention(images, attention)
        if self.dino is None:
            return clip
        weights = [float(self.options["clip_weight"]), float(self.options["dino_weight"])]
        return fuse_attention([clip, self.dino_attention(images)], weights)

    def transition(self, images, attention):
        if self.dino is None or self.options["affinity_fusion"] == "before_sinkhorn":
            return super().transition(images, attention)
        # Sinkhorn-normalise each model's attention, mix, then symmetrise and square once.
        iterations = int(self.options["sinkhorn_iterations"])
        clip = sinkhorn_transition(WeCLIP.affinity_attention(self, images, attention), iterations, symmetrize=False,
                                   square=False)
        dino = sinkhorn_transition(self.dino_attention(images), iterations, symmetrize=False, square=False)
        weights = [float(self.options["clip_weight"]), float(self.options["dino_weight"])]
        return sinkhorn_transition(fuse_attention([clip, dino], weights), 0)
    def propagation_masks(self, token_cams, labels, targets):
        boxes = box_token_mask(token_cams, float(self.options["box_threshold"]))
        if self.options["mask_mode"] == "box":
            return boxes
        if not isinstance(targets, dict) or "regions" not in targets:
            raise ValueError("SGC's superpixel mask needs the colour regions: targets {'labels', 'regions'} (or mask_mode 'box').")
        regions = ops.cast(targets["regions"], "int32")
        stride = self.image_encoder.stride
        grid = (token_cams.shape[1], token_cams.shape[2])
        # The regions cover the whole image; the tokens cover its top-left h·stride x w·stride.
        regions = regions[:, : grid[0] * stride, : grid[1] * stride]
        pixels = resize_bilinear(token_cams, (grid[0] * stride, grid[1] * stride))
        selected = target_region_mask(pixels, regions, self.num_regions, float(self.options["region_high"]),
                                      float(self.options["region_ratio"]), self.options["region_formula"])
        superpixel = pixel_to_token_mask(selected, stride, float(self.options["token_mask_threshold"]))
        return correction_mask(superpixel, boxes, self.options["mask_mode"], self.options["mask_fallback"])

    def get_config(self):
        config = super().get_config()
        config.update(dino=None if self.dino is None else keras.saving.serialize_keras_object(self.dino),
                      num_regions=self.num_regions)
        return config

    @classmethod
    def from_config(cls, config):
        options = {key: value for key, value in (config.get("options") or {}).items() if key not in _RETIRED_OPTIONS}
        return cls(**{**config, "options": options})


def refresh_prototypes(model, bank, images_and_labels):
    """Fill `bank` with the model's foreground features of `images_and_labels` (an iterable of
    (images, labels) batches: the "epoch" bank's pass), cluster it, and load the prototypes
    into the model."""
    for images, labels in images_and_labels:
        features = ops.convert_to_numpy(model.prototype_features(images, labels))
        bank.add(features, np.asarray(labels))
    return _load_prototypes(model, bank)


def refresh_prototypes_from_memory(model, bank):
    """The "recent" bank: cluster the loss features of the last `prototype_refresh` steps the
    model remembered and load the prototypes; None (prototypes unchanged) while it holds none."""
    features, classes = model.recent_samples()
    if not len(features):
        return None
    bank.add_samples(features, classes)
    return _load_prototypes(model, bank)


def _load_prototypes(model, bank):
    previous = ops.convert_to_numpy(model.image_prototypes) if float(ops.convert_to_numpy(model.prototypes_ready)) else None
    prototypes = bank.refresh(previous=previous, iterations=int(model.options["kmeans_iterations"]))
    model.image_prototypes.assign(prototypes.astype("float32"))
    model.prototypes_ready.assign(1.0)
    return prototypes
