"""SSC (Chen et al., TIP 2024): spatial structure constraints on a DRS classifier.

Spec: methods/ssc.md (verified in SSC's released code). The CAM network is IRN's ResNet-50 CAM
classifier with DRS attention expansion, constrained by two training-time modules:

- **CAM-driven reconstruction** (§2.3-2.4): `ReconstructionDecoder` rebuilds the input crop
  from the raw class-logit map P (all classes, no ReLU) and `PerceptualLoss` compares it with
  the crop on a frozen VGG-19 (relu1_1..relu5_1, weights 1/32, 1/16, 1/8, 1/4, 1). Its
  gradient flows through the decoder into P, so the CAM must keep the image's layout.
- **Activation self-modulation** (ASM, §2.5): the present classes' max-normalised CAMs are
  regressed (MSE) onto max(superpixel average, eroded reliable part), from step
  `self_modulation_start` (the code's 2 warm-up epochs of 10).
- **DRS** (§2.2, Kim et al. AAAI'21): `min(x, δ·max_hw x)` per channel, δ = 0.55, through the
  backbone's "output" hook: after every layer4 bottleneck (ReLU then clip; training and
  inference), and on the detached stage-2 output (clip without ReLU; training only).

Where we follow the code (spec §6/§8), with the paper's symbols: β_p = β_a = 1; the decoder
reads raw logits; the reconstruction target is the normalised, zero-padded crop although the
decoder ends in tanh; the max-norm denominator of ASM is not detached; erosion 8x8 with
OpenCV's anchor and border; stem and stages 1-2 frozen, BatchNorm statistics fixed. The
decoder learns with its own Adam (`decoder_optimizer`, built by the pipeline), the network
with SGD (classifier 10x).
"""

import keras
from keras import ops

from wsss_keras.backbones.resnet.backbone import BottleneckHooks
from wsss_keras.backbones.vgg import VGG_PERCEPTUAL_LAYERS, vgg19_features
from wsss_keras.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss_keras.methods.base import WSSSModel
from wsss_keras.methods.initializers import torch_bias_uniform, torch_uniform
from wsss_keras.ops.losses import multilabel_soft_margin_loss
from wsss_keras.ops.superpixels import superpixel_average

PERCEPTUAL_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
DECODER_WIDTHS = (256, 256, 128, 64, 32)


def drs(features, delta=0.55, relu=False):
    """Discriminative region suppression: min(x, δ · max over (h, w) of x), per image and channel.

    `relu=True` applies ReLU first (SSC's layer4 bottlenecks); `relu=False` clips the raw
    tensor (its stage-2 placement). On a ReLU output the two agree.

    Example:
    >>> import numpy as np
    >>> x = np.array([[[[-2.0], [1.0]], [[4.0], [2.0]]]], "float32")   # (1, 2, 2, 1)
    >>> np.asarray(drs(x, 0.5))[0, ..., 0].tolist(), np.asarray(drs(x, 0.5, relu=True))[0, ..., 0].tolist()
    ([[-2.0, 1.0], [2.0, 2.0]], [[0.0, 1.0], [2.0, 2.0]])
    """
    if relu:
        features = ops.relu(features)
    return ops.minimum(features, delta * ops.max(features, axis=(1, 2), keepdims=True))


def max_normalize(maps):
    """SSC's `mx_norm`: ReLU, then divide each (image, class) map by its spatial max + 1e-5."""
    maps = ops.relu(maps)
    return maps / (ops.max(maps, axis=(1, 2), keepdims=True) + 1e-5)


def binary_erosion(mask, size):
    """Erosion of a 0/1 (B, H, W, C) mask by a size x size square, as OpenCV's `cv2.erode`
    with its defaults: the anchor at the kernel's centre (offsets -size//2 .. size-1-size//2)
    and the border counting as set, so image edges do not erode."""
    if size <= 1:
        return mask
    before, after = size // 2, size - 1 - size // 2
    unset = ops.pad(1.0 - mask, [[0, 0], [before, after], [before, after], [0, 0]])
    return 1.0 - ops.max_pool(unset, pool_size=size, strides=1, padding="valid")


def self_modulation_target(masked_maps, segment_ids, num_segments, threshold=0.3, erosion_size=8):
    """ASM's normalised CAM O and its target T (spec §2.5 steps 3-7).

    Args:
        masked_maps: (B, h, w, C) CAM logits with absent classes zeroed (M = P' ⊙ y).
        segment_ids: (B, h, w) superpixel ids in [0, num_segments).
        threshold, erosion_size: the reliable part is erode(sg(O) > threshold).

    Returns:
        (O, T): O = max_normalize(M), differentiable; T = max(sg(max_normalize(superpixel
        average of M)), sg(O) ⊙ reliable), constant.
    """
    normalized = max_normalize(masked_maps)
    averaged = ops.stop_gradient(max_normalize(superpixel_average(masked_maps, segment_ids, num_segments)))
    fixed = ops.stop_gradient(normalized)
    reliable = binary_erosion(ops.cast(fixed > threshold, fixed.dtype), erosion_size)
    return normalized, ops.stop_gradient(ops.maximum(averaged, fixed * reliable))


@keras.saving.register_keras_serializable(package="wsss_keras")
class SampleLayerNorm(keras.layers.Layer):
    """SSC's decoder LayerNorm (`model_util.LayerNorm`, not `nn.LayerNorm`): per image, the mean
    and the *unbiased* std over all of (H, W, C); y = (x − μ) / (s + eps), eps on the std; then
    a per-channel γ (initialised U(0, 1)) and β (0)."""

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer=keras.initializers.RandomUniform(0.0, 1.0), name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs):
        count = ops.cast(ops.prod(ops.shape(inputs)[1:]), inputs.dtype)
        mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        variance = ops.sum(ops.square(inputs - mean), axis=(1, 2, 3), keepdims=True) / (count - 1.0)
        return (inputs - mean) / (ops.sqrt(variance) + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="wsss_keras")
class ReconstructionDecoder(keras.layers.Layer):
    """SSC's CAM-driven decoder: class logits (B, h, w, C) -> image (B, h·2^n, w·2^n, 3) in [-1, 1].

    Reflection-pad + 3x3 conv (no bias) + LayerNorm + ReLU; one residual block; n up-blocks
    (4x4 transposed conv stride 2 without bias, InstanceNorm without affine, ReLU, 3x3 conv,
    LayerNorm, ReLU); a 3x3 conv to RGB and tanh (spec §2.3). PyTorch's default initialisation.

    Args:
        widths: (main width, output width of each up-block); n = len(widths) − 1 up-blocks
            must equal log2 of the backbone's output stride. SSC: (256, 256, 128, 64, 32).

    Example:
    >>> import numpy as np
    >>> decoder = ReconstructionDecoder((16, 16, 8))
    >>> decoder(np.zeros((2, 5, 6, 20), "float32")).shape
    (2, 20, 24, 3)
    """

    def __init__(self, widths=DECODER_WIDTHS, **kwargs):
        super().__init__(**kwargs)
        self.widths = tuple(int(width) for width in widths)
        if len(self.widths) < 2:
            raise ValueError(f"decoder widths {self.widths}: give the main width and at least one up-block's.")

        def conv(filters, size, fan_in, name, bias=True, padding="same"):
            return keras.layers.Conv2D(
                filters, size, padding=padding, use_bias=bias, kernel_initializer=torch_uniform(fan_in),
                bias_initializer=torch_bias_uniform(fan_in) if bias else "zeros", name=name,
            )

        main = self.widths[0]
        # torch_uniform reads the fan-in off the kernel's shape; the class count is not known yet.
        self.input_conv = conv(main, 3, None, "input_conv", bias=False, padding="valid")
        self.input_norm = SampleLayerNorm(name="input_norm")
        self.res_convs = [conv(main, 3, main * 9, f"res_conv{i}") for i in (1, 2)]
        self.res_norms = [SampleLayerNorm(name=f"res_norm{i}") for i in (1, 2)]
        self.up_transposed, self.up_instance_norms, self.up_convs, self.up_norms = [], [], [], []
        for index, (width, out) in enumerate(zip(self.widths[:-1], self.widths[1:]), start=1):
            self.up_transposed.append(keras.layers.Conv2DTranspose(
                width, 4, strides=2, padding="same", use_bias=False, kernel_initializer=torch_uniform(width * 16),
                name=f"up{index}_transposed",
            ))
            self.up_instance_norms.append(keras.layers.GroupNormalization(
                groups=width, center=False, scale=False, epsilon=1e-5, name=f"up{index}_instance_norm",
            ))
            self.up_convs.append(conv(out, 3, width * 9, f"up{index}_conv"))
            self.up_norms.append(SampleLayerNorm(name=f"up{index}_norm"))
        self.output_conv = conv(3, 3, self.widths[-1] * 9, "output_conv")

    @property
    def upsampling(self):
        """The factor from the logit map to the image: 2 ** (number of up-blocks)."""
        return 2 ** (len(self.widths) - 1)

    def build(self, input_shape):
        main = self.widths[0]
        self.input_conv.build((None, None, None, input_shape[-1]))
        self.input_norm.build((None, None, None, main))
        for conv, norm in zip(self.res_convs, self.res_norms):
            conv.build((None, None, None, main))
            norm.build((None, None, None, main))
        for transposed, instance_norm, conv, norm, width, out in zip(
            self.up_transposed, self.up_instance_norms, self.up_convs, self.up_norms, self.widths[:-1], self.widths[1:]
        ):
            transposed.build((None, None, None, width))
            instance_norm.build((None, None, None, width))
            conv.build((None, None, None, width))
            norm.build((None, None, None, out))
        self.output_conv.build((None, None, None, self.widths[-1]))

    def call(self, logits):
        x = ops.pad(logits, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
        x = ops.relu(self.input_norm(self.input_conv(x)))
        residual = ops.relu(self.res_norms[0](self.res_convs[0](x)))
        x = x + self.res_norms[1](self.res_convs[1](residual))
        for transposed, instance_norm, conv, norm in zip(self.up_transposed, self.up_instance_norms, self.up_convs, self.up_norms):
            x = ops.relu(instance_norm(transposed(x)))
            x = ops.relu(norm(conv(x)))
        return ops.tanh(self.output_conv(x))

    def compute_output_shape(self, input_shape):
        def scaled(length):
            return None if length is None else length * self.upsampling

        return (input_shape[0], scaled(input_shape[1]), scaled(input_shape[2]), 3)

    def get_config(self):
        return {**super().get_config(), "widths": list(self.widths)}


@keras.saving.register_keras_serializable(package="wsss_keras")
class PerceptualLoss(keras.layers.Layer):
    """Σ_i w_i · mean |φ_i(prediction) − sg(φ_i(target))| over VGG-19's relu1_1..relu5_1 (frozen).

    Both inputs go into the network as they are (SSC feeds torchvision-normalised RGB, which
    the torchvision VGG-19 weights expect); inputs wider than 1024 are halved by average
    pooling first, as the reference does.

    Args:
        layer_weights: w_1..w_k for the first k perceptual layers (SSC: 1/32, 1/16, 1/8, 1/4, 1).
        width_multiplier: the VGG's width (1.0 is VGG-19; smaller ones are for CPU recipes with
            a random, frozen network).
    """

    def __init__(self, layer_weights=PERCEPTUAL_WEIGHTS, width_multiplier=1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        if not 1 <= len(self.layer_weights) <= len(VGG_PERCEPTUAL_LAYERS):
            raise ValueError(f"layer_weights: give 1 to {len(VGG_PERCEPTUAL_LAYERS)} weights, got {len(self.layer_weights)}.")
        self.width_multiplier = float(width_multiplier)
        self.network = vgg19_features(
            self.width_multiplier, last_layer=VGG_PERCEPTUAL_LAYERS[len(self.layer_weights) - 1], name="vgg19_features",
        )
        self.network.trainable = False

    def build(self, input_shape):
        self.built = True

    def call(self, prediction, target):
        prediction, target = ops.cast(prediction, "float32"), ops.cast(target, "float32")
        while prediction.shape[2] is not None and prediction.shape[2] > 1024:
            prediction = ops.average_pool(prediction, 2, strides=2)
            target = ops.average_pool(target, 2, strides=2)
        total = 0.0
        for weight, predicted, wanted in zip(self.layer_weights, self.network(prediction), self.network(target)):
            total = total + weight * ops.mean(ops.abs(predicted - ops.stop_gradient(wanted)))
        return total

    def get_config(self):
        config = {**super().get_config(), "layer_weights": list(self.layer_weights), "width_multiplier": self.width_multiplier}
        config.pop("dtype", None)
        return config


@keras.saving.register_keras_serializable(package="wsss_keras")
class SSC(keras.Model, WSSSModel):
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
        class_names, image_mean, image_std, recipe: saved metadata (`WSSSModel`).

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
        class_names=None,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        recipe=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_wsss(class_names, image_mean, image_std, recipe)
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
            **self._wsss_config(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
