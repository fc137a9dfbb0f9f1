"""AMR's networks: the plain CAM network and the two-branch AMR model with its losses."""

import keras
from keras import ops

from wsss_keras.backbones.resnet.backbone import BottleneckHooks
from wsss_keras.methods.amr.features import (
    TokenGridAMM,
    as_backbone,
    dense_features,
    feature_channels,
    is_vit,
)
from wsss_keras.methods.amr.layers import AMM
from wsss_keras.methods.base import WSSSModel
from wsss_keras.methods.initializers import torch_uniform
from wsss_keras.ops.losses import multilabel_soft_margin_loss

CPS_MODES = ("per_image", "code")

def _classifier(num_classes, channels, name):
    """A 1x1 conv without bias, PyTorch's default initialisation (the CAM head)."""
    layer = keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer=torch_uniform(channels), name=name)
    layer.build((None, None, None, channels))
    return layer


def _labels(y):
    return y["labels"] if isinstance(y, dict) else y


@keras.saving.register_keras_serializable(package="wsss_keras")
class CamNetwork(WSSSModel):
    """The plain CAM network: GAP logits of a 1x1 classifier without bias on a ResNet or ViT.

    Stage A of AMR's pipeline (its `train_cam`, on a ResNet), and the plain-CAM baseline. The
    classifier learns at 10x the backbone's rate (`lr_multipliers`). On a ViT the classifier
    reads the patch tokens on their grid (spec §7).

    Args:
        backbone: a `wsss_keras.backbones.resnet.ResNet` or `ViTEncoder` (or its config).
        num_classes: foreground classes.
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe` (saved
            with the model) and `keras.Model`'s arguments.

    Example:
    >>> import numpy as np
    >>> from wsss_keras.backbones.resnet import build
    >>> model = CamNetwork(build("resnet50", block_counts=(1, 1, 1, 1), base_width=8), 5)
    >>> model(np.zeros((2, 64, 64, 3), "float32")).shape, model.cam_maps(np.zeros((1, 64, 64, 3), "float32")).shape
    ((2, 5), (1, 4, 4, 5))
    """

    def __init__(self, backbone, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.backbone = as_backbone(backbone)
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
        )
        return config


@keras.saving.register_keras_serializable(package="wsss_keras")
class AMR(WSSSModel):
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
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe` (saved
            with the model) and `keras.Model`'s arguments.

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
        **kwargs,
    ):
        super().__init__(**kwargs)
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
        self.compensation = as_backbone(compensation_backbone)
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
        )
        return config
