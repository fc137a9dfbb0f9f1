"""AMR (Qin et al., AAAI 2022): a spotlight and a compensation branch, recalibrated CAMs.

Spec: methods/amr.md (verified in AMR's code). The pieces:

- `CamNetwork`: the plain CAM network (IRN/AMR's `resnet50_cam`): a ResNet (or ViT), a 1x1 classifier
  without bias, logits by global average pooling, multi-label soft-margin loss; stage A of the
  pipeline and AMR's spotlight branch.
- `AMM`: the attention modulation module, CBAM's channel-then-spatial gate whose gate values
  are the normal density of the attention logits (`gaussian_projection`) instead of a
  sigmoid: responses near the mean weigh most, extreme ones are damped (§2.5).
- `AMR`: the spotlight branch (a trained `CamNetwork`, backbone frozen) and the compensation
  branch (a ResNet with an AMM in every bottleneck), trained with
  0.5·MLSM(spotlight) + 0.5·MLSM(compensation) + 0.05·L_cps, L_cps the L1 distance of the two
  branches' ReLU'd CAMs (§3.2). Its CAM is the 0.5/0.5 mix of the branches' max-normalised CAMs.

Where we follow the released code (it differs from the paper's figure, §2.6 / §8):
- an AMM in each of the 16 bottlenecks, on the residual branch before the shortcut add (the
  figure draws three, between stages); channel gate on average pooling only, spatial gate on
  [max, mean] over channels, 7x7 conv without bias, then a normalisation on batch statistics;
- the Gaussian's mean and std are over the whole tensor (all images of the batch), the std is
  unbiased, both are constants for autodiff, no epsilon; the density is not rescaled to a peak
  of 1;
- the spatial gate's BatchNorm never leaves training mode in the reference (its `train()`
  override), so it always normalises with the statistics of the batch it sees. Its moving
  statistics are never read, so `BatchStatNorm` keeps only gamma and beta;
- in training both statistics are the whole batch's; in the reference's CAM pass the batch is
  always one image and its mirror, so there an image's gates see the statistics of that pair
  and nothing else. Our CAMs do the same (`paired` gates, `AMR.branch_cam_maps`): an image's
  CAM does not depend on the other images of a batch, in `wsss cams` and in an export alike;
- the spotlight backbone is frozen and its logits detached: its classification loss is logged
  but gives no gradient; its classifier learns through L_cps only;
- the compensation branch's stem and stage 1 (with their three AMMs, left at their
  initialisation) are frozen: the reference detaches stage 1's output;
- learning-rate groups inverted as in the reference: the compensation backbone and its AMMs
  at 10x the base rate, both classifiers at 1x.

On a ViT (spec §7, an option): a branch's features are the encoder's patch tokens on their
grid, and the compensation branch's AMMs gate each block's attention branch on that grid before
it is added to the residual stream (the analogue of gating a bottleneck's residual branch);
class tokens pass through ungated. Nothing of a ViT compensation encoder is frozen (stage 1 is
a ResNet notion), and the Gaussian statistics and batch-statistics normalisation are the same.

One deliberate difference, an option: the reference's L_cps pairs the CAM of image 0 plus the
mirrored CAM of image 1 of each (per-GPU) batch (its inference-time flip merge left in the
training forward; AMR issue #8), so only two images per device enter it. `cps_mode="per_image"`
(the default) compares each image's two CAMs over the whole batch, as the paper describes;
`cps_mode="code"` reproduces the reference.
"""

import math

import keras
from keras import ops

from wsss_keras.backbones.resnet.backbone import BottleneckHooks
from wsss_keras.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss_keras.methods.base import WSSSModel
from wsss_keras.methods.initializers import torch_bias_uniform, torch_uniform
from wsss_keras.ops.losses import multilabel_soft_margin_loss

CPS_MODES = ("per_image", "code")


def _pair_halves(values):
    if values.shape[0] is not None and values.shape[0] % 2:
        raise ValueError(
            f"paired statistics need a batch of images followed by their mirrors (an even batch), got {values.shape[0]}."
        )
    return ops.split(values, 2, axis=0)


def batch_moments(values, inner_axes, paired=False):
    """Mean and biased variance over the batch axis and `inner_axes`, broadcastable to `values`.

    `paired`: the batch is [x_1..x_B, mirror(x_1)..mirror(x_B)] (how the CAM views are stacked),
    and rows i and B + i share the statistics of those two rows only: the reference's CAM pass
    runs each image with its mirror as a batch of 2.
    """
    if not paired:
        return ops.moments(values, axes=(0,) + tuple(inner_axes), keepdims=True)
    first, second = _pair_halves(values)
    mean = (ops.mean(first, axis=inner_axes, keepdims=True) + ops.mean(second, axis=inner_axes, keepdims=True)) / 2.0
    variance = (
        ops.mean(ops.square(first - mean), axis=inner_axes, keepdims=True)
        + ops.mean(ops.square(second - mean), axis=inner_axes, keepdims=True)
    ) / 2.0
    return ops.concatenate([mean, mean], axis=0), ops.concatenate([variance, variance], axis=0)


def _group_size(values, paired):
    """How many entries one set of statistics covers: the whole tensor, or two rows."""
    if not paired:
        return ops.cast(ops.size(values), "float32")
    row = values.shape[1:]
    if None not in row:
        return 2.0 * float(math.prod(row))
    # Sizes known only at run time (an export with --dynamic).
    return 2.0 * ops.cast(ops.size(values), "float32") / ops.cast(ops.shape(values)[0], "float32")


def gaussian_projection(values, paired=False):
    """The normal density of `values` under their own mean and unbiased std.

    The statistics are over the whole tensor (training, as in AMR's `amm.py`), or, `paired`,
    over each image and its mirror (`batch_moments`). Mean and std are constants for autodiff
    and carry no epsilon.

    Example:
    >>> import numpy as np
    >>> x = np.array([0.0, 1.0, 2.0], "float32")
    >>> [round(float(v), 4) for v in gaussian_projection(x)]
    [0.242, 0.3989, 0.242]
    """
    values = ops.cast(values, "float32")
    inner_axes = tuple(range(1, len(values.shape)))
    mean, variance = batch_moments(values, inner_axes, paired)
    count = _group_size(values, paired)
    mean = ops.stop_gradient(mean)
    std = ops.stop_gradient(ops.sqrt(variance * count / (count - 1.0)))
    return ops.exp(-ops.square(values - mean) / (2.0 * ops.square(std))) / (math.sqrt(2.0 * math.pi) * std)


@keras.saving.register_keras_serializable(package="wsss_keras")
class BatchStatNorm(keras.layers.Layer):
    """Normalisation over (B, H, W) with the batch's own statistics, always, and gamma/beta.

    What AMR's spatial-gate `BatchNorm2d` does, since its module never leaves training mode:
    biased variance, eps 1e-5; no moving statistics (the reference never reads them).
    `paired=True` at call time: each image and its mirror are normalised on their own
    (`batch_moments`), as in the reference's CAM pass.
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs, paired=False):
        mean, variance = batch_moments(inputs, (1, 2), paired)
        return self.gamma * (inputs - mean) / ops.sqrt(variance + self.epsilon) + self.beta

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="wsss_keras")
class ChannelGate(keras.layers.Layer):
    """x · G(MLP(GAP(x))): AMR's channel gate (reduction r, average pooling only).

    Args:
        channels: input channels C.
        reduction: the MLP's hidden width is max(1, C // reduction).
    """

    def __init__(self, channels, reduction=16, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.reduction = int(channels), int(reduction)
        hidden = max(1, self.channels // self.reduction)
        self.squeeze = keras.layers.Dense(
            hidden, activation="relu", kernel_initializer=torch_uniform(self.channels),
            bias_initializer=torch_bias_uniform(self.channels), name="squeeze",
        )
        self.excite = keras.layers.Dense(
            self.channels, kernel_initializer=torch_uniform(hidden), bias_initializer=torch_bias_uniform(hidden),
            name="excite",
        )

    def build(self, input_shape):
        self.squeeze.build((None, self.channels))
        self.excite.build((None, self.squeeze.units))

    def call(self, inputs, paired=False):
        logits = self.excite(self.squeeze(ops.mean(inputs, axis=(1, 2))))
        return inputs * gaussian_projection(logits, paired)[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="wsss_keras")
class SpatialGate(keras.layers.Layer):
    """x · G(norm(conv([max_C x, mean_C x]))): AMR's spatial gate.

    Args:
        kernel_size: the conv's side (7), zero-padded to keep the size.
    """

    def __init__(self, kernel_size=7, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.conv = keras.layers.Conv2D(
            1, self.kernel_size, padding="same", use_bias=False, kernel_initializer=torch_uniform(2 * self.kernel_size**2),
            name="conv",
        )
        self.norm = BatchStatNorm(name="norm")

    def build(self, input_shape):
        self.conv.build((None, None, None, 2))
        self.norm.build((None, None, None, 1))

    def call(self, inputs, paired=False):
        pooled = ops.concatenate([ops.max(inputs, axis=-1, keepdims=True), ops.mean(inputs, axis=-1, keepdims=True)], axis=-1)
        return inputs * gaussian_projection(self.norm(self.conv(pooled), paired=paired), paired)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="wsss_keras")
class AMM(keras.layers.Layer):
    """AMR's attention modulation module: `SpatialGate(ChannelGate(x))`, shape-preserving.

    It runs in float32 whatever the model's dtype policy (1/σ and the exponential over- or
    underflow in float16).

    Args:
        channels: input channels.
        reduction: channel gate reduction (16).
        kernel_size: spatial gate kernel (7).

    Call with `paired=True` on a batch [images, their mirrors] to gate each image with the
    statistics of itself and its mirror only (the reference's CAM pass); by default the
    statistics are the whole batch's (training).

    Example:
    >>> import numpy as np
    >>> AMM(32, reduction=4)(np.random.rand(2, 5, 6, 32).astype("float32")).shape
    (2, 5, 6, 32)
    """

    def __init__(self, channels, reduction=16, kernel_size=7, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.channels, self.reduction, self.kernel_size = int(channels), int(reduction), int(kernel_size)
        self.channel_gate = ChannelGate(self.channels, self.reduction, name="channel_gate")
        self.spatial_gate = SpatialGate(self.kernel_size, name="spatial_gate")

    def build(self, input_shape):
        self.channel_gate.build((None, None, None, self.channels))
        self.spatial_gate.build((None, None, None, self.channels))

    def call(self, inputs, paired=False):
        return self.spatial_gate(self.channel_gate(inputs, paired=paired), paired=paired)

    def get_config(self):
        config = {**super().get_config(), "channels": self.channels, "reduction": self.reduction, "kernel_size": self.kernel_size}
        config.pop("dtype", None)
        return config


def _backbone(backbone):
    """A wsss_keras ResNet or ViT encoder (deserialised from its config when given one)."""
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    if not (hasattr(backbone, "stages") or hasattr(backbone, "patch_grid")):
        raise ValueError(
            f"expected a wsss_keras ResNet or ViTEncoder backbone, got {type(backbone).__name__}."
        )
    return backbone


def is_vit(backbone):
    return hasattr(backbone, "patch_grid")


def feature_channels(backbone):
    return backbone.hidden_dim if is_vit(backbone) else backbone.num_features


def dense_features(backbone, images, training=None, hooks=None):
    """(B, h, w, C) features: a ResNet's last stage, or a ViT's patch tokens on their grid.

    `hooks` are `BottleneckHooks` for a ResNet, an attention hook for a ViT.
    """
    if not is_vit(backbone):
        return backbone(images, training=training, hooks=hooks)
    tokens = backbone(images, hook=hooks)["patch_tokens"]
    height, width = backbone.patch_grid(images)
    return ops.reshape(tokens, (-1, height, width, tokens.shape[-1]))


class TokenGridAMM:
    """An attention hook that gates each block's attention branch with that block's AMM on the
    patch grid (the ViT analogue of AMR's residual-branch AMMs); class tokens pass ungated.
    `paired`: the AMMs' statistics per image and mirror (`AMM`)."""

    def __init__(self, amms, num_class_tokens, grid, paired=False):
        self.amms, self.num_class_tokens, self.grid, self.paired = amms, num_class_tokens, grid, paired

    def attention_output(self, output, block_index, tokens):
        height, width = self.grid
        classes, patches = output[:, : self.num_class_tokens], output[:, self.num_class_tokens :]
        gated = self.amms[block_index](ops.reshape(patches, (-1, height, width, patches.shape[-1])), paired=self.paired)
        patches = ops.reshape(ops.cast(gated, patches.dtype), (-1, height * width, patches.shape[-1]))
        return ops.concatenate([classes, patches], axis=1)


def _classifier(num_classes, channels, name):
    """A 1x1 conv without bias, PyTorch's default initialisation (the CAM head)."""
    layer = keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer=torch_uniform(channels), name=name)
    layer.build((None, None, None, channels))
    return layer


def _labels(y):
    return y["labels"] if isinstance(y, dict) else y


@keras.saving.register_keras_serializable(package="wsss_keras")
class CamNetwork(keras.Model, WSSSModel):
    """The plain CAM network: GAP logits of a 1x1 classifier without bias on a ResNet or ViT.

    Stage A of AMR's pipeline (its `train_cam`, on a ResNet), and the plain-CAM baseline. The
    classifier learns at 10x the backbone's rate (`lr_multipliers`). On a ViT the classifier
    reads the patch tokens on their grid (spec §7).

    Args:
        backbone: a `wsss_keras.backbones.resnet.ResNet` or `ViTEncoder` (or its config).
        num_classes: foreground classes.
        class_names, image_mean, image_std, recipe: saved metadata (`WSSSModel`).

    Example:
    >>> import numpy as np
    >>> from wsss_keras.backbones.resnet import build
    >>> model = CamNetwork(build("resnet50", block_counts=(1, 1, 1, 1), base_width=8), 5)
    >>> model(np.zeros((2, 64, 64, 3), "float32")).shape, model.cam_maps(np.zeros((1, 64, 64, 3), "float32")).shape
    ((2, 5), (1, 4, 4, 5))
    """

    def __init__(self, backbone, num_classes, class_names=None, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                 recipe=None, **kwargs):
        super().__init__(**kwargs)
        self._init_wsss(class_names, image_mean, image_std, recipe)
        self.backbone = _backbone(backbone)
        self.num_classes = int(num_classes)
        self.classifier = _classifier(self.num_classes, feature_channels(self.backbone), "cam_classifier")
        self.built = True

    def build_from_config(self, config):
        self.built = True

    @property
    def lr_multipliers(self):
        """The classifier at 10x (AMR's train_cam: backbone 0.01, classifier 0.1)."""
        return {"cam_classifier": 10.0}

    def call(self, images, training=None):
        return ops.mean(self.classifier(dense_features(self.backbone, images, training=training)), axis=(1, 2))

    def cam_maps(self, images):
        """Raw class maps (B, h, w, C) at the backbone's output stride, before ReLU."""
        return self.classifier(dense_features(self.backbone, images, training=False))

    def cam_branches(self):
        """[(raw-maps function, classifier kernel (channels, C), weight)] for AdvCAM."""
        return [(self.cam_maps, self.classifier.kernel[0, 0], 1.0)]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return multilabel_soft_margin_loss(_labels(y), y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone), num_classes=self.num_classes,
            **self._wsss_config(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="wsss_keras")
class AMR(keras.Model, WSSSModel):
    """AMR: spotlight + compensation branches with AMMs and cross pseudo supervision.

    Args:
        spotlight: a trained `CamNetwork` (or its config): backbone frozen, classifier trained
            through L_cps only.
        compensation_backbone: a ResNet or ViTEncoder (or its config) for the compensation
            branch. On a ResNet an `AMM` is put on the residual branch of each bottleneck and
            the stem and stage 1 are frozen; on a ViT each block's attention branch is gated
            on the patch grid. Give it a name of its own (its variable paths select the 10x
            group). Both branches must give CAMs of the same size.
        num_classes: foreground classes.
        cps_mode: "per_image" (default; each image's two CAMs) or "code" (the reference:
            CAM of image 0 + mirrored CAM of image 1 of the batch, per branch).
        cls_weight_spotlight, cls_weight_compensation, cps_weight: the loss weights (0.5, 0.5,
            0.05).
        amm_reduction: the AMMs' channel reduction (16).
        cam_branch_weights: weights of the spotlight and compensation CAMs in the fused CAM.
        class_names, image_mean, image_std, recipe: saved metadata (`WSSSModel`).

    Example:
    ```python
    from wsss_keras.backbones.resnet import build
    tiny = dict(block_counts=(1, 1, 1, 1), base_width=8)
    spotlight = CamNetwork(build("resnet50", name="cam_backbone", **tiny), 20)   # trained first
    model = AMR(spotlight, build("resnet50", name="compensation_backbone", **tiny), 20, amm_reduction=4)
    model.compile(optimizer=GroupedSGD(0.01, lr_multipliers=model.lr_multipliers))
    model.fit(loader)                       # yields (images, {"labels": (B, C) multi-hot})
    spotlight_cams, compensation_cams = model.branch_cam_maps(images)
    ```
    """

    def __init__(
        self,
        spotlight,
        compensation_backbone,
        num_classes,
        cps_mode="per_image",
        cls_weight_spotlight=0.5,
        cls_weight_compensation=0.5,
        cps_weight=0.05,
        amm_reduction=16,
        cam_branch_weights=(0.5, 0.5),
        class_names=None,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        recipe=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_wsss(class_names, image_mean, image_std, recipe)
        if isinstance(spotlight, dict):
            spotlight = keras.saving.deserialize_keras_object(spotlight)
        if not isinstance(spotlight, CamNetwork):
            raise ValueError(f"spotlight must be a trained CamNetwork (AMR's stage A), got {type(spotlight).__name__}.")
        if cps_mode not in CPS_MODES:
            raise ValueError(
                f"cps_mode={cps_mode!r}: choose 'per_image' (each image's two CAMs, the default) or 'code' "
                "(the released code's pairing of images 0 and 1)."
            )
        cam_branch_weights = tuple(float(w) for w in cam_branch_weights)
        if len(cam_branch_weights) != 2:
            raise ValueError(f"cam_branch_weights={cam_branch_weights}: give two weights (spotlight, compensation).")
        self.spotlight = spotlight
        self.spotlight.backbone.trainable = False
        self.compensation = _backbone(compensation_backbone)
        if spotlight.num_classes != int(num_classes):
            raise ValueError(f"the spotlight network has {spotlight.num_classes} classes, AMR was given {num_classes}.")
        clashing = [v.path for v in spotlight.weights if f"{self.compensation.name}/" in v.path]
        if clashing:
            raise ValueError(
                f"the compensation backbone's name {self.compensation.name!r} also prefixes spotlight variables "
                f"({clashing[0]}); build it with its own name, e.g. name='compensation_backbone'."
            )
        self.num_classes = int(num_classes)
        self.cps_mode = cps_mode
        self.cls_weight_spotlight = float(cls_weight_spotlight)
        self.cls_weight_compensation = float(cls_weight_compensation)
        self.cps_weight = float(cps_weight)
        self.amm_reduction = int(amm_reduction)
        self.cam_branch_weights = cam_branch_weights
        if is_vit(self.compensation):
            self._add_token_amms()
        else:
            self._add_bottleneck_amms()
        self.classifier = _classifier(self.num_classes, feature_channels(self.compensation), "compensation_classifier")
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("cls_spotlight", "cls_compensation", "cps")
        }
        self.built = True

    def build_from_config(self, config):
        self.built = True

    def _new_amm(self, channels, name, trainable=True):
        amm = AMM(channels, self.amm_reduction, name=name)
        amm.build((None, None, None, channels))
        amm.trainable = trainable
        self.amms.append(amm)
        return amm

    def _add_bottleneck_amms(self):
        """An AMM on every bottleneck's residual branch; the stem, stage 1 and its AMMs frozen."""
        self.amms, hooks, paired = [], {}, {}
        for stage, blocks in enumerate(self.compensation.stages, start=1):
            for block in blocks:
                amm = self._new_amm(block.filters * 4, f"compensation_amm_{stage}_{block.index}", trainable=stage > 1)
                hooks[(stage, block.index, "residual")] = lambda x, context, amm=amm: amm(x)
                paired[(stage, block.index, "residual")] = lambda x, context, amm=amm: amm(x, paired=True)
        self.amm_hooks = BottleneckHooks(hooks)
        self.paired_hooks = BottleneckHooks(paired)
        # The reference detaches stage 1's output in training: the stem, stage 1 and its AMMs
        # never learn. (Its CAM pass does not, so AdvCAM's input gradients flow through.)
        last = len(self.compensation.stages[0]) - 1
        self.training_hooks = BottleneckHooks({**hooks, (1, last, "output"): lambda x, context: ops.stop_gradient(x)})
        for layer in [self.compensation.stem_conv, self.compensation.stem_bn] + self.compensation.stages[0]:
            layer.trainable = False

    def _add_token_amms(self):
        """One AMM per transformer block, gating its attention branch on the patch grid."""
        self.amms = []
        for index in range(self.compensation.num_layers):
            self._new_amm(self.compensation.hidden_dim, f"compensation_amm_block{index}")
        self.amm_hooks = self.training_hooks = self.paired_hooks = None

    def _hooks_for(self, images, training=None, paired=False):
        if self.amm_hooks is not None:
            if training:
                return self.training_hooks
            return self.paired_hooks if paired else self.amm_hooks
        return TokenGridAMM(self.amms, self.compensation.num_class_tokens, self.compensation.patch_grid(images), paired)

    @property
    def lr_multipliers(self):
        """The reference's inverted groups: compensation backbone and AMMs 10x, classifiers 1x."""
        return {f"{self.compensation.name}/": 10.0, "compensation_amm_": 10.0}

    # Forward passes -----------------------------------------------------------------------
    def _spotlight_maps(self, images):
        features = ops.stop_gradient(dense_features(self.spotlight.backbone, images, training=False))
        return self.spotlight.classifier(features)

    def _compensation_maps(self, images, training=None, paired=False):
        hooks = self._hooks_for(images, training, paired)
        return self.classifier(dense_features(self.compensation, images, training=training, hooks=hooks))

    def call(self, images, training=None):
        compensation = self._compensation_maps(images, training=training)
        logits = ops.mean(compensation, axis=(1, 2))
        if not training:
            # Whole-batch gate statistics, as the reference's validation pass; CAMs are per image.
            return logits
        spotlight = self._spotlight_maps(images)
        return {
            "logits": logits,
            "spotlight_logits": ops.stop_gradient(ops.mean(spotlight, axis=(1, 2))),
            "spotlight_maps": spotlight,
            "compensation_maps": compensation,
        }

    def branch_cam_maps(self, images, mirrored=False):
        """Raw class maps (spotlight, compensation), each (B, h, w, C), before ReLU; an image's
        maps do not depend on the other images of the batch.

        The compensation AMMs see the statistics of the image and its mirror, as in the
        reference's CAM pass (each image with its mirror, a batch of 2). `mirrored=True`: the
        batch already is [x_1..x_B, mirror(x_1)..mirror(x_B)] (`multiscale_cams`' flip views),
        and each row is paired with its mirror there. Otherwise the mirrors are run here, in
        the compensation branch only, and their maps dropped (one more pass of that branch).
        """
        spotlight = self._spotlight_maps(images)
        if mirrored:
            return spotlight, self._compensation_maps(images, training=False, paired=True)
        views = ops.concatenate([images, ops.flip(images, axis=2)], axis=0)
        compensation, _ = ops.split(self._compensation_maps(views, training=False, paired=True), 2, axis=0)
        return spotlight, compensation

    def cam_branches(self):
        """[(raw-maps function, classifier kernel (channels, C), weight)] per branch, for AdvCAM,
        whose views are always [x, mirror(x)]: the compensation AMMs pair them."""
        spotlight_weight, compensation_weight = self.cam_branch_weights
        return [
            # The spotlight's own maps: `_spotlight_maps` detaches the features, for training.
            (self.spotlight.cam_maps, self.spotlight.classifier.kernel[0, 0], spotlight_weight),
            (lambda views: self._compensation_maps(views, training=False, paired=True), self.classifier.kernel[0, 0],
             compensation_weight),
        ]

    def cam_maps(self, images):
        """The fused CAM of one forward pass: each branch's ReLU'd maps divided by their
        per-image, per-class max, then mixed with `cam_branch_weights`. Per image, whatever
        the batch (`branch_cam_maps`): what an exported CAM graph runs."""
        fused = 0.0
        for weight, maps in zip(self.cam_branch_weights, self.branch_cam_maps(images)):
            maps = ops.relu(maps)
            fused = fused + weight * maps / (ops.max(maps, axis=(1, 2), keepdims=True) + 1e-5)
        return fused

    # Training ------------------------------------------------------------------------------
    def cps_loss(self, spotlight_maps, compensation_maps):
        """L_cps: mean |ReLU(spotlight) - ReLU(compensation)| in `cps_mode`'s pairing."""
        spotlight, compensation = ops.relu(spotlight_maps), ops.relu(compensation_maps)
        if tuple(spotlight.shape[1:3]) != tuple(compensation.shape[1:3]):
            raise ValueError(
                f"the branches' CAMs differ in size ({spotlight.shape[1:3]} vs {compensation.shape[1:3]}); give both "
                "backbones the same output stride."
            )
        if self.cps_mode == "code":
            if spotlight.shape[0] is not None and spotlight.shape[0] < 2:
                raise ValueError("cps_mode='code' pairs images 0 and 1 of each batch: train with batches of 2 or more.")
            spotlight = spotlight[0] + ops.flip(spotlight[1], axis=1)
            compensation = compensation[0] + ops.flip(compensation[1], axis=1)
        return ops.mean(ops.abs(spotlight - compensation))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict):
            y_pred = self(x, training=True)
        labels = _labels(y)
        terms = {
            "cls_spotlight": multilabel_soft_margin_loss(labels, y_pred["spotlight_logits"]),
            "cls_compensation": multilabel_soft_margin_loss(labels, y_pred["logits"]),
            "cps": self.cps_loss(y_pred["spotlight_maps"], y_pred["compensation_maps"]),
        }
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return (
            self.cls_weight_spotlight * terms["cls_spotlight"]
            + self.cls_weight_compensation * terms["cls_compensation"]
            + self.cps_weight * terms["cps"]
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            spotlight=keras.saving.serialize_keras_object(self.spotlight),
            compensation_backbone=keras.saving.serialize_keras_object(self.compensation),
            num_classes=self.num_classes,
            cps_mode=self.cps_mode,
            cls_weight_spotlight=self.cls_weight_spotlight,
            cls_weight_compensation=self.cls_weight_compensation,
            cps_weight=self.cps_weight,
            amm_reduction=self.amm_reduction,
            cam_branch_weights=list(self.cam_branch_weights),
            **self._wsss_config(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
