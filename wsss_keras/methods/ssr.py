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
  every 5,000 steps [PAPER] (`wsss_keras.pipelines.ssr.prototype_refresh`). Grad-CAM then runs
  in the aligned space (`cam_space = "aligned"` [INTERP]): ISA on every projected token
  (inference mode), TSA on the prompts, logit scale kept at 100.
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

from wsss_keras.methods.weclip import WECLIP_DEFAULTS, WeCLIP, _unit, freeze
from wsss_keras.ops.cam import resize_bilinear
from wsss_keras.ops.prototypes import masked_average_pool, prototype_contrastive_loss
from wsss_keras.ops.region_masks import correction_mask, pixel_to_token_mask, target_region_mask
from wsss_keras.ops.token_affinity import box_token_mask, fuse_attention

_PACKAGE = "wsss_keras"

SSR_DEFAULTS = {
    **WECLIP_DEFAULTS,
    "seg_weight": 0.1,                # γ [PAPER]
    "proto_weight": 1.0,
    "projection_hidden": 512,         # ISA/TSA Linear → BN → ReLU → Linear [UNSPEC]
    "projection_dim": 256,            # d2 [UNSPEC]
    "temperature": 0.05,              # τ_proto initial value, learnable [PAPER]
    "pos_idx_mode": "cluster",        # "cluster" (paper) or "label" [INTERP]
    "prototype_refresh": 5000,        # steps between image-prototype refreshes [PAPER]
    "prototype_bank_size": 200,       # features kept per class [INTERP]
    "prototype_images": 512,          # images of the no-grad pass that fills the bank [INTERP]
    "kmeans_iterations": 20,          # [UNSPEC]
    "cam_space": "aligned",           # Grad-CAM through ISA/TSA ("aligned") or in CLIP's space ("clip") [INTERP]
    "clip_weight": 0.4,               # CLIP : DINO attention [PAPER]
    "dino_weight": 0.6,
    "mask_mode": "superpixel",        # "superpixel", "superpixel_and_box", "superpixel_or_box", "box" [INTERP]
    "mask_fallback": "box",           # an empty superpixel mask falls back to "box", "ones" or "none" [INTERP]
    "region_high": 0.4,               # θ_h [UNSPEC]
    "region_ratio": 0.5,              # θ_r [UNSPEC]
    "region_formula": "within",       # "within" (spec formula a) or "share" (b) [INTERP]
    "token_mask_threshold": 0.5,      # pixel share of a token for it to be a target [INTERP]
}
_CHOICES = {
    "pos_idx_mode": ("cluster", "label"),
    "cam_space": ("aligned", "clip"),
    "mask_mode": ("superpixel", "superpixel_and_box", "superpixel_or_box", "box"),
    "mask_fallback": ("box", "ones", "none"),
    "region_formula": ("within", "share"),
}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ProjectionHead(keras.layers.Layer):
    """CMPA's ISA / TSA: Linear → BatchNorm → ReLU → Linear, over the last axis.

    Args:
        hidden: width of the first Linear.
        output_dim: d2.

    Example:
    >>> head = ProjectionHead(8, 4)
    >>> tuple(head(np.zeros((2, 5, 6), "float32")).shape)
    (2, 5, 4)
    """

    def __init__(self, hidden, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.output_dim = int(hidden), int(output_dim)
        self.fc1 = keras.layers.Dense(self.hidden, name="fc1")
        self.norm = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")
        self.fc2 = keras.layers.Dense(self.output_dim, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.norm.build(tuple(input_shape[:-1]) + (self.hidden,))
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden,))
        self.built = True

    def call(self, x, training=None):
        return self.fc2(ops.relu(self.norm(self.fc1(x), training=training)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

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
        if self.options["mask_mode"] != "box" and not num_regions:
            raise ValueError(
                "SGC's superpixel mask needs num_regions (the colour-region cache's bound, SuperpixelCache.num_segments), "
                "or mask_mode = \"box\"."
            )
        self.num_regions = None if num_regions is None else int(num_regions)
        if dino is not None:
            dino.build((None, None, None, 3))
            freeze(dino)
            if dino.patch_size != self.image_encoder.stride:
                raise ValueError(f"DINO's patch {dino.patch_size} must equal the CLIP's token stride {self.image_encoder.stride}.")
        self.dino = dino
        hidden, dim = int(self.options["projection_hidden"]), int(self.options["projection_dim"])
        width = self.image_encoder.output_dim
        self.image_head = ProjectionHead(hidden, dim, name="ssr_isa")
        self.image_head.build((None, None, width))
        self.text_head = ProjectionHead(hidden, dim, name="ssr_tsa")
        self.text_head.build((None, width))
        self.log_inverse_temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(1.0 / float(self.options["temperature"]))),
            name="ssr_log_inverse_temperature")
        self.image_prototypes = self.add_weight(shape=(self.num_classes, dim), initializer="zeros", trainable=False,
                                                name="image_prototypes")
        self.prototypes_ready = self.add_weight(shape=(), initializer="zeros", trainable=False, name="prototypes_ready")

    @classmethod
    def default_options(cls):
        return SSR_DEFAULTS

    @property
    def lr_multipliers(self):
        """The decoder and the CMPA heads in the 10x group (spec §3.2 [INTERP])."""
        return {"weclip_decoder/": 10.0, "ssr_": 10.0}

    # CMPA ----------------------------------------------------------------------------------------
    def cam_text_features(self):
        if self.options["cam_space"] == "clip":
            return super().cam_text_features()
        text = ops.concatenate([self.text_features, self.background_features], axis=0)
        return _unit(self.text_head(text, training=False))

    def cam_token_features(self, projected):
        if self.options["cam_space"] == "clip":
            return projected
        return self.image_head(projected, training=False)

    def foreground_features(self, projected, initial, training=False):
        """CAM-weighted ISA features `(B, C, d2)` of every class (CMPA's f_img)."""
        batch = ops.shape(initial)[0]
        cams = ops.reshape(ops.stop_gradient(initial), (batch, -1, self.num_classes))
        features = self.image_head(ops.stop_gradient(projected[:, 1:]), training=training)
        return masked_average_pool(features, cams)

    def prototype_features(self, images, labels):
        """Detached foreground features `(B, C, d2)` for the prototype bank (no-grad pass)."""
        _, initial, projected = self.refined_cams(images, ops.cast(labels, "float32"), {"labels": labels}, propagate=False)
        return ops.stop_gradient(self.foreground_features(projected, initial, training=False))

    def extra_losses(self, images, labels, targets, frozen, initial, projected):
        features = self.foreground_features(projected, initial, training=True)
        text = self.text_head(self.text_features, training=True)
        inverse_temperature = ops.exp(ops.cast(self.log_inverse_temperature, "float32"))
        by_label = prototype_contrastive_loss(features, labels, text, inverse_temperature, pos_idx_mode="label")
        if self.options["pos_idx_mode"] == "label":
            loss = by_label
        else:
            # Until the first bank refresh there are no image prototypes: the label is the positive.
            by_cluster = prototype_contrastive_loss(features, labels, text, inverse_temperature,
                                                    image_prototypes=self.image_prototypes, pos_idx_mode="cluster")
            loss = ops.where(self.prototypes_ready > 0.5, by_cluster, by_label)
        return {"proto": (float(self.options["proto_weight"]), loss)}

    # SGC -----------------------------------------------------------------------------------------
    def dino_attention(self, images):
        """DINO's last-block attention, head-averaged, patch to patch `(B, N, N)`."""
        outputs = self.dino(images, return_attention=True)
        return ops.stop_gradient(ops.mean(outputs["attention"][-1], axis=1)[:, 1:, 1:])

    def affinity_attention(self, images, attention):
        clip = super().affinity_attention(images, attention)
        if self.dino is None:
            return clip
        weights = [float(self.options["clip_weight"]), float(self.options["dino_weight"])]
        return fuse_attention([clip, self.dino_attention(images)], weights)

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


def refresh_prototypes(model, bank, images_and_labels):
    """Fill `bank` with the model's foreground features of `images_and_labels` (an iterable of
    (images, labels) batches), cluster it, and load the prototypes into the model."""
    for images, labels in images_and_labels:
        features = ops.convert_to_numpy(model.prototype_features(images, labels))
        bank.add(features, np.asarray(labels))
    previous = ops.convert_to_numpy(model.image_prototypes) if float(ops.convert_to_numpy(model.prototypes_ready)) else None
    prototypes = bank.refresh(previous=previous, iterations=int(model.options["kmeans_iterations"]))
    model.image_prototypes.assign(prototypes.astype("float32"))
    model.prototypes_ready.assign(1.0)
    return prototypes
