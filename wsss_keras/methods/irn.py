"""IRNet's boundary branch (Ahn et al., CVPR 2019): inter-pixel relations learnt from CAM seeds.

The multi-stage methods (AMR, SSC) refine their CAMs with IRN: confident labels from the CAMs
(`wsss_keras.pipelines.ir_labels`) supervise a class boundary map through pixel-pair
affinities; a random walk on the affinities of that map then spreads the CAMs inside object
boundaries (`wsss_keras.ops.affinity.random_walk_labels`). What follows IRN's code (spec
methods/amr.md §4.4, AMR's copy is byte-identical):

- Backbone: a ResNet (ResNet-50 at output stride 16 in the papers), frozen: its variables are
  not trained, it runs in inference mode, and its five taps (stem after the max-pool, layer1..4)
  are detached.
- Boundary head: per tap a 1x1 conv to 32 channels without bias, GroupNorm (4 groups, eps
  1e-5), bilinear upsampling to stride 4 (x2 for layer2, x4 for layer3/4 at output stride 16),
  ReLU; the five maps are cropped to the stride-4 grid of layer1, concatenated (160 channels)
  and a 1x1 conv with bias gives the boundary logits at stride 4.
- Loss: the label map of the crop is shrunk to the logits' grid (PIL's nearest rule, as IRN's
  `pil_rescale(order=0)`); for every source pixel and each of the 152 directions of radius 10
  the pair is background-positive, foreground-positive or negative (`pair_labels`), the
  affinity is 1 - the largest boundary probability on the path between the two pixels, and the
  loss is IRN's `(L_pos + L_neg) / 2` with `L_pos` the mean of the two positive kinds
  (`affinity_loss`).
- Inference (`boundary_map`): the boundary probability is the sigmoid of the mean logits of the
  image and of its un-mirrored mirror, as IRN's `EdgeDisplacement`.

What differs: the displacement branch (instance segmentation only; the backbone is frozen and
the heads share nothing, so it has no effect on the boundary branch) is not built; and
`boundary_map` runs on the image as it is, where IRN pads it bottom/right to 512x512 first
(zero padding after normalisation), which only changes the convolutions' border effects.
"""

import keras
from keras import ops

from wsss_keras.methods.base import WSSSModel
from wsss_keras.ops.affinity import affinity_loss, boundary_to_affinity, pair_labels
from wsss_keras.ops.cam import resize_bilinear

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4")


def tap_strides(backbone):
    """Input pixels per feature of each of `TAPS` for a wsss_keras ResNet."""
    strides, stride = {"stem": 4}, 4
    for name, stage in zip(TAPS[1:], backbone.stages):
        stride *= stage[0].stride
        strides[name] = stride
    return strides


@keras.saving.register_keras_serializable(package="wsss_keras")
class IRNet(WSSSModel):
    """IRN's boundary network on a frozen ResNet: boundary logits at stride 4.

    Args:
        backbone: a `wsss_keras.backbones.resnet.ResNet` (or its config dict); made
            non-trainable and run in inference mode.
        radius: radius of the training pairs (10 in IRN; `path_directions(10)` has 152).
        head_channels: width of each tap's 1x1 conv (32).
        groups: GroupNorm groups (4).
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe` (saved
            with the model) and `keras.Model`'s arguments.

    Example:
    >>> import numpy as np
    >>> from wsss_keras.backbones.resnet import build
    >>> irn = IRNet(build("resnet50", block_counts=(1, 1, 1, 1), base_width=8))
    >>> irn(np.zeros((1, 64, 64, 3), "float32")).shape
    (1, 16, 16, 1)
    """

    def __init__(
        self,
        backbone,
        radius=10,
        head_channels=32,
        groups=4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if not hasattr(backbone, "stages"):
            raise ValueError(f"IRNet needs a wsss_keras ResNet backbone, got {type(backbone).__name__}.")
        if int(radius) < 2:
            raise ValueError(f"radius={radius}: IRN's pairs need a radius of at least 2 (the paper uses 10).")
        self.backbone = backbone
        self.backbone.trainable = False
        self.radius = int(radius)
        self.head_channels = int(head_channels)
        self.groups = int(groups)
        self.strides = tap_strides(backbone)
        self.tap_convs = [
            keras.layers.Conv2D(self.head_channels, 1, use_bias=False, name=f"edge_conv_{tap}") for tap in TAPS
        ]
        self.tap_norms = [
            keras.layers.GroupNormalization(self.groups, epsilon=1e-5, name=f"edge_norm_{tap}") for tap in TAPS
        ]
        self.edge_out = keras.layers.Conv2D(1, 1, name="edge_out")
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        channels = {"stem": self.backbone.base_width}
        for name, stage in zip(TAPS[1:], self.backbone.stages):
            channels[name] = stage[0].filters * 4
        for tap, conv, norm in zip(TAPS, self.tap_convs, self.tap_norms):
            conv.build((None, None, None, channels[tap]))
            norm.build((None, None, None, self.head_channels))
        self.edge_out.build((None, None, None, self.head_channels * len(TAPS)))
        self.built = True

    def build_from_config(self, config):
        # Every variable's shape follows from the config, whatever the input size.
        self.build()

    def call(self, images, training=None):
        taps = self.backbone(images, training=False, return_stages=True)
        height, width = taps["stage1"].shape[1], taps["stage1"].shape[2]
        maps = []
        for tap, conv, norm in zip(TAPS, self.tap_convs, self.tap_norms):
            x = norm(conv(ops.stop_gradient(taps[tap])))
            factor = self.strides[tap] // 4
            if factor > 1:
                x = resize_bilinear(x, (x.shape[1] * factor, x.shape[2] * factor))
            maps.append(ops.relu(x)[:, :height, :width, :])
        return self.edge_out(ops.concatenate(maps, axis=-1))

    def boundary_map(self, images):
        """Boundary probabilities (B, ceil(H/4), ceil(W/4)) from the image and its mirror."""
        logits = self(images, training=False)
        mirrored = ops.flip(self(ops.flip(images, axis=2), training=False), axis=2)
        return ops.sigmoid(0.5 * (logits + mirrored))[..., 0]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        from wsss_keras.methods.segmenter import resize_labels_nearest

        label_maps = y.get("label_maps") if isinstance(y, dict) else y
        if label_maps is None:
            raise ValueError(
                "IRNet trains on (images, targets) with targets holding 'label_maps': the confident IR labels "
                "(0 background, c + 1 class c, 255 unsure); ask the loader for label maps (with_label_maps=True)."
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        labels = resize_labels_nearest(ops.cast(label_maps, "int32"), y_pred.shape[1:3])
        affinity = boundary_to_affinity(ops.sigmoid(ops.cast(y_pred[..., 0], "float32")), self.radius)
        bg_pos, fg_pos, neg = pair_labels(labels, self.radius)
        return affinity_loss(affinity, bg_pos, fg_pos, neg)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            radius=self.radius,
            head_channels=self.head_channels,
            groups=self.groups,
        )
        return config
