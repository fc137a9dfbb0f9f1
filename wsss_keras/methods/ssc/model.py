"""The SSC model: a DRS ResNet CAM classifier trained with reconstruction and self-modulation
(see the package)."""

import keras
from keras import ops

from wsss_keras.backbones.resnet.backbone import BottleneckHooks
from wsss_keras.methods.base import WSSSModel
from wsss_keras.methods.initializers import torch_uniform
from wsss_keras.methods.ssc.modulation import (
    drs,
    self_modulation_target,
)
from wsss_keras.methods.ssc.reconstruction import (
    DECODER_WIDTHS,
    PERCEPTUAL_WEIGHTS,
    PerceptualLoss,
    ReconstructionDecoder,
)
from wsss_keras.ops.losses import multilabel_soft_margin_loss


@keras.saving.register_keras_serializable(package="wsss_keras")
class SSC(WSSSModel):
    """SSC's CAM network: a ResNet with DRS, a 1x1 classifier, the reconstruction decoder and
    activation self-modulation (spec methods/ssc.md).

    Args:
        backbone: a `wsss_keras.backbones.resnet.ResNet` (or its config).
        num_classes: foreground classes.
        drs_delta: δ of DRS (0.55).
        drs_layer4: DRS after every layer4 bottleneck (ReLU, then clip), training and CAMs.
        drs_stage2: DRS on the stage-2 output (clip only), training only.
        frozen_stages: the stem and stages 1..k are frozen and their output detached (SSC: 2).
            CPU recipes that train from scratch use 0.
        reconstruction_weight: β_p of the perceptual loss (1; 0 switches the decoder off).
        decoder_widths: `ReconstructionDecoder` widths; len − 1 = log2(output stride).
        perceptual_weights: the VGG layers' weights (1/32 .. 1).
        loss_network_width: the VGG's width multiplier (1.0: VGG-19, load its torchvision
            weights with `load_torchvision_vgg19(model.perceptual.network, path)`).
        self_modulation_weight: β_a (1; 0 switches ASM off).
        self_modulation_start: first training step with ASM (the code: after 2 of 10 epochs).
        self_modulation_threshold, erosion_size: the reliable part (0.3, 8x8).
        self_modulation_stride: ASM runs at (crop / stride) (2: 256 for 512 crops).
        num_superpixels: static bound on the superpixel ids of a batch (`SuperpixelCache.num_segments`).
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe` (saved
            with the model) and `keras.Model`'s arguments.

    The training targets are `{"labels": (B, C) multi-hot, "superpixels": (B, H, W) int}`
    (superpixels only needed when ASM is on). DRS-only (the bench's baseline) is
    `reconstruction_weight=0, self_modulation_weight=0`.

    Example:
    ```python
    from wsss_keras.backbones.resnet import build
    backbone = build("resnet50", block_counts=(1, 1, 1, 1), base_width=8, output_stride=8)
    model = SSC(backbone, 20, decoder_widths=(32, 32, 16, 8), loss_network_width=0.125, num_superpixels=257)
    model.compile(optimizer=...)   # see pipelines/ssc.py: SGD for the network, Adam for the decoder
    model.fit(loader)              # (images, {"labels", "superpixels"})
    cams = model.cam_maps(images)
    ```
    """

    step_counter = "train_steps"  # advanced once per training batch (see pipelines.fitting.fit_steps)

    def __init__(
        self,
        backbone,
        num_classes,
        drs_delta=0.55,
        drs_layer4=True,
        drs_stage2=True,
        frozen_stages=2,
        reconstruction_weight=1.0,
        decoder_widths=DECODER_WIDTHS,
        perceptual_weights=PERCEPTUAL_WEIGHTS,
        loss_network_width=1.0,
        self_modulation_weight=1.0,
        self_modulation_start=0,
        self_modulation_threshold=0.3,
        erosion_size=8,
        self_modulation_stride=2,
        num_superpixels=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if not hasattr(backbone, "stages"):
            raise ValueError(f"SSC's DRS needs a wsss_keras ResNet backbone, got {type(backbone).__name__}.")
        if frozen_stages not in (0, 1, 2, 3):
            raise ValueError(f"frozen_stages={frozen_stages!r}: give 0..3 (SSC freezes the stem and stages 1-2).")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.drs_delta, self.drs_layer4, self.drs_stage2 = float(drs_delta), bool(drs_layer4), bool(drs_stage2)
        self.frozen_stages = int(frozen_stages)
        self.reconstruction_weight = float(reconstruction_weight)
        self.decoder_widths = tuple(int(width) for width in decoder_widths)
        self.perceptual_weights = tuple(float(w) for w in perceptual_weights)
        self.loss_network_width = float(loss_network_width)
        self.self_modulation_weight = float(self_modulation_weight)
        self.self_modulation_start = int(self_modulation_start)
        self.accumulate = 1  # micro-batches per optimiser step (fit_steps sets it; not saved)
        self.self_modulation_threshold = float(self_modulation_threshold)
        self.erosion_size = int(erosion_size)
        self.self_modulation_stride = int(self_modulation_stride)
        self.num_superpixels = None if num_superpixels is None else int(num_superpixels)
        if self.self_modulation_weight and not self.num_superpixels:
            raise ValueError(
                "self-modulation pools over superpixels: give num_superpixels (the cache's bound, "
                "SuperpixelCache.num_segments), or self_modulation_weight=0."
            )
        self._make_hooks()
        channels = backbone.num_features
        self.classifier = keras.layers.Conv2D(
            self.num_classes, 1, use_bias=False, kernel_initializer=torch_uniform(channels), name="ssc_classifier",
        )
        self.classifier.build((None, None, None, channels))
        self.decoder = self.perceptual = None
        if self.reconstruction_weight:
            self.decoder = ReconstructionDecoder(self.decoder_widths, name="reconstruction_decoder")
            self.decoder.build((None, None, None, self.num_classes))
            self.perceptual = PerceptualLoss(self.perceptual_weights, self.loss_network_width, name="perceptual_loss")
        self.train_steps = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="train_steps")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("cls", "reconstruction", "self_modulation")}
        self.built = True

    def build_from_config(self, config):
        self.built = True

    def _make_hooks(self):
        """DRS and the frozen stages through the backbone's bottleneck hooks."""
        delta = self.drs_delta
        hooks = {}
        if self.drs_layer4:
            hooks[(4, None, "output")] = lambda x, context: drs(x, delta, relu=True)
        self.cam_hooks = BottleneckHooks(hooks)
        training = dict(hooks)

        def stage_output(stage, detach, clip):
            def hook(x, context):
                x = ops.stop_gradient(x) if detach else x
                return drs(x, delta) if clip else x
            return hook

        for stage in range(1, 4):
            detach = stage == self.frozen_stages
            clip = stage == 2 and self.drs_stage2
            if detach or clip:
                last = len(self.backbone.stages[stage - 1]) - 1
                training[(stage, last, "output")] = stage_output(stage, detach, clip)
        self.training_hooks = BottleneckHooks(training)
        if self.frozen_stages:
            frozen = [self.backbone.stem_conv, self.backbone.stem_bn]
            for blocks in self.backbone.stages[: self.frozen_stages]:
                frozen += list(blocks)
            for layer in frozen:
                layer.trainable = False

    @property
    def lr_multipliers(self):
        """The classifier at 10x (SSC's train_cam: backbone 0.1, classifier 1.0)."""
        return {"ssc_classifier": 10.0}

    @property
    def decoder_paths(self):
        """Variable-path substrings of the decoder, which learns with its own Adam."""
        return ("reconstruction_decoder/",)

    def call(self, images, training=None):
        hooks = self.training_hooks if training else self.cam_hooks
        maps = self.classifier(self.backbone(images, training=training, hooks=hooks))
        logits = ops.mean(maps, axis=(1, 2))
        if not training:
            return logits
        return {"logits": logits, "maps": maps}

    def cam_maps(self, images):
        """Raw class maps (B, h, w, C) before ReLU: layer4 DRS on, stage-2 DRS off (SSC's `CAM`)."""
        return self.classifier(self.backbone(images, training=False, hooks=self.cam_hooks))

    # Losses -----------------------------------------------------------------------------------
    def reconstruction_loss(self, maps, images):
        """L_p between the decoder's image from `maps` and `images`."""
        decoded = self.decoder(maps)
        if decoded.shape[1] is not None and images.shape[1] is not None and tuple(decoded.shape[1:3]) != tuple(images.shape[1:3]):
            raise ValueError(
                f"the decoder rebuilds {tuple(decoded.shape[1:3])} images from {tuple(maps.shape[1:3])} CAMs, but the crops are "
                f"{tuple(images.shape[1:3])}: give decoder_widths log2(output stride) + 1 entries "
                f"(now {len(self.decoder_widths)}) and crops divisible by the output stride."
            )
        return self.perceptual(decoded, images)

    def self_modulation_loss(self, maps, labels, superpixels):
        """L_a: MSE of the present classes' normalised CAMs to their ASM target (spec §2.5)."""
        stride = self.self_modulation_stride
        segments = superpixels[:, ::stride, ::stride]
        size = (segments.shape[1], segments.shape[2])
        maps = ops.image.resize(ops.cast(maps, "float32"), size, interpolation="bilinear", antialias=False)
        present = ops.cast(labels, "float32")[:, None, None, :]
        normalized, target = self_modulation_target(
            maps * present, segments, self.num_superpixels, self.self_modulation_threshold, self.erosion_size,
        )
        pixels = float(size[0] * size[1])
        return ops.sum(present * ops.square(normalized - target)) / (ops.sum(present) * pixels + 1e-5)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict):
            y_pred = self(x, training=True)
        labels = y["labels"] if isinstance(y, dict) else y
        maps = y_pred["maps"]
        terms = {"cls": multilabel_soft_margin_loss(labels, y_pred["logits"])}
        total = terms["cls"]
        if self.reconstruction_weight:
            terms["reconstruction"] = self.reconstruction_loss(maps, x)
            total = total + self.reconstruction_weight * terms["reconstruction"]
        if self.self_modulation_weight:
            if not isinstance(y, dict) or "superpixels" not in y:
                raise ValueError("SSC's self-modulation needs the batch's superpixels: targets {'labels', 'superpixels'}.")
            terms["self_modulation"] = self.self_modulation_loss(maps, labels, y["superpixels"])
            steps = ops.convert_to_tensor(self.train_steps)
            if self.accumulate > 1:
                steps = steps // self.accumulate  # the start counts optimiser steps
            active = ops.cast(steps >= self.self_modulation_start, "float32")
            total = total + self.self_modulation_weight * active * terms["self_modulation"]
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        if training:
            self.train_steps.assign_add(1)
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            num_classes=self.num_classes,
            drs_delta=self.drs_delta,
            drs_layer4=self.drs_layer4,
            drs_stage2=self.drs_stage2,
            frozen_stages=self.frozen_stages,
            reconstruction_weight=self.reconstruction_weight,
            decoder_widths=list(self.decoder_widths),
            perceptual_weights=list(self.perceptual_weights),
            loss_network_width=self.loss_network_width,
            self_modulation_weight=self.self_modulation_weight,
            self_modulation_start=self.self_modulation_start,
            self_modulation_threshold=self.self_modulation_threshold,
            erosion_size=self.erosion_size,
            self_modulation_stride=self.self_modulation_stride,
            num_superpixels=self.num_superpixels,
        )
        return config
