"""ResNet-50/101 in the torchvision "v1.5" layout, NHWC, with per-bottleneck hooks.

The layout is the one the IRN family (IRN, AMR, SSC) loads torchvision's ImageNet weights into:
conv1 7x7/2 (padding 3) -> BN -> ReLU -> max-pool 3x3/2 (padding 1) -> layer1..layer4 of
bottlenecks 1x1 -> 3x3 (the stride sits on the 3x3) -> 1x1 (x4 channels), with a 1x1 conv + BN
shortcut on the first block of each stage. BatchNorm uses torch's eps 1e-5 and momentum 0.1
(Keras momentum 0.9).

Output stride. The IRN-family references (IRN's, AMR's and SSC's `net/resnet50.py`) build
ResNet-50 with strides (2, 2, 2, 1) and **no dilation**: layer4 simply runs at stride 1 with
ordinary 3x3 convs, giving output stride 16. That is this module's default (`dilation="none"`).
torchvision's `replace_stride_with_dilation` (`dilation="torchvision"`: the first block of a
dilated stage keeps the previous dilation, the others use the doubled one) and the mmcv /
DeepLab-v2 style (`dilation="uniform"`: every block of the stage uses it) are available too.
"""

import collections

import keras
from keras import ops

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
HOOK_POINTS = ("residual", "output")
DILATION_MODES = ("none", "torchvision", "uniform")
FROZEN_BATCHNORM_MODES = ("none", "statistics", "all")
EXPANSION = 4

BlockContext = collections.namedtuple("BlockContext", "stage block point inputs shortcut training")
BlockContext.__doc__ = """What a bottleneck hook is told besides the tensor it may replace.

Attributes:
    stage: 1..4, torchvision's layer1..layer4.
    block: 0-based index of the bottleneck inside the stage (torchvision's `layerS.B`).
    point: "residual" or "output" (see `BottleneckHooks`).
    inputs: the bottleneck's input tensor.
    shortcut: the shortcut branch (identity, or the 1x1 conv + BN of the first block).
    training: the `training` flag the backbone was called with.
"""


def stage_schedule(output_stride=16, dilation="none"):
    """Per-stage (stride, dilation) pairs for layer1..layer4 and the given output stride.

    Args:
        output_stride: 32, 16 or 8. The stem divides by 4, layer1 keeps it, so layer2..4 are
            given stride 2 while the running stride is below the target and stride 1 after.
        dilation: "none" (stride 1, no dilation; IRN/AMR/SSC), "torchvision" or "uniform":
            a stage whose stride was set to 1 gets dilation x2 per removed stride.

    Returns:
        A list of four (stride, dilation) tuples; dilation is the stage's dilation (how its
        first block uses it depends on the mode, see `block_schedule`).
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}.")
    if dilation not in DILATION_MODES:
        raise ValueError(f"dilation must be one of {DILATION_MODES}, got {dilation!r}.")
    schedule, current, rate = [(1, 1)], 4, 1
    for _ in range(3):
        if current < output_stride:
            schedule.append((2, rate))
            current *= 2
        else:
            if dilation != "none":
                rate *= 2
            schedule.append((1, rate))
    return schedule


def block_schedule(block_counts, output_stride=16, dilation="none"):
    """(stride, dilation) of every bottleneck's 3x3 conv, per stage, as torchvision builds them."""
    blocks, previous_rate = [], 1
    for count, (stride, rate) in zip(block_counts, stage_schedule(output_stride, dilation)):
        # torchvision: the first block of a dilated stage keeps the previous stage's dilation.
        first_rate = previous_rate if dilation == "torchvision" else rate
        blocks.append([(stride, first_rate)] + [(1, rate)] * (count - 1))
        previous_rate = rate
    return blocks


class BottleneckHooks:
    """Callables run at fixed points inside the bottlenecks, chosen per (stage, block).

    A hook is `hook(x, context) -> tensor` and returns the replacement for `x`; `context` is a
    `BlockContext`. Insertion points inside each bottleneck:

    - "residual": the residual branch after conv3 -> bn3, **before** the shortcut is added.
      AMR's AMM sits here (CBAM placement, in all 16 bottlenecks).
    - "output": the block output after add + ReLU. SSC's DRS sits here (placement A: the three
      layer4 bottlenecks; placement B, the training-only clip of the stage-2 output, is the
      "output" of layer2's last block). IRN's detached stage outputs are a `stop_gradient`
      hook on the last block of each stage.

    Keys are `(stage, block, point)`; `stage` (1..4) or `block` (0-based) may be `None` to
    match every stage / block. The most specific key wins.

    Args:
        hooks: dict {(stage, block, point): callable}.

    Example:
    ```python
    drs = lambda x, ctx: ops.minimum(x, 0.55 * ops.max(x, axis=(1, 2), keepdims=True))
    hooks = BottleneckHooks({(4, None, "output"): drs})
    features = backbone(images, hooks=hooks)
    ```
    """

    def __init__(self, hooks):
        if isinstance(hooks, BottleneckHooks):
            hooks = hooks.hooks
        self.hooks = {}
        for key, hook in dict(hooks).items():
            if not (isinstance(key, tuple) and len(key) == 3):
                raise ValueError(f"Hook key {key!r} must be a tuple (stage, block, point).")
            stage, block, point = key
            if point not in HOOK_POINTS:
                raise ValueError(f"Hook key {key!r}: point must be one of {HOOK_POINTS}.")
            if stage is not None and stage not in (1, 2, 3, 4):
                raise ValueError(f"Hook key {key!r}: stage must be 1..4 (torchvision layer1..4) or None.")
            if not callable(hook):
                raise ValueError(f"Hook for {key!r} is not callable: {hook!r}.")
            self.hooks[key] = hook

    def get(self, stage, block, point):
        """The hook for this site, or None."""
        for key in ((stage, block, point), (stage, None, point), (None, block, point), (None, None, point)):
            if key in self.hooks:
                return self.hooks[key]
        return None

    def check_blocks(self, block_counts):
        """Raise ValueError for a key whose block index does not exist in the backbone."""
        for stage, block, point in self.hooks:
            if block is None:
                continue
            stages = [stage] if stage is not None else [1, 2, 3, 4]
            for index in stages:
                if not 0 <= block < block_counts[index - 1]:
                    raise ValueError(
                        f"Hook key {(stage, block, point)!r}: stage {index} has blocks "
                        f"0..{block_counts[index - 1] - 1}."
                    )


@keras.saving.register_keras_serializable(package="wsss_keras")
class ResNetBatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization that can keep its moving statistics fixed.

    With `freeze_statistics=True` the layer always normalises with its moving mean/variance
    and never updates them, whatever `training` says, while gamma/beta stay trainable: IRN's
    `FixedBatchNorm` (used by AMR and SSC). Freezing gamma/beta as well is `trainable=False`.

    Args:
        freeze_statistics: bool, use and keep the moving statistics in training too.
        **kwargs: `keras.layers.BatchNormalization` arguments.

    Example:
    ```python
    bn = ResNetBatchNorm(freeze_statistics=True, epsilon=1e-5)
    y = bn(x, training=True)  # same as bn(x, training=False)
    ```
    """

    def __init__(self, freeze_statistics=False, **kwargs):
        super().__init__(**kwargs)
        self.freeze_statistics = freeze_statistics

    def call(self, inputs, training=None, mask=None):
        if self.freeze_statistics:
            training = False
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        config = super().get_config()
        config["freeze_statistics"] = self.freeze_statistics
        return config


def _batchnorm(name, frozen_batchnorm, epsilon, momentum):
    layer = ResNetBatchNorm(
        freeze_statistics=frozen_batchnorm in ("statistics", "all"), epsilon=epsilon, momentum=momentum, name=name
    )
    if frozen_batchnorm == "all":
        layer.trainable = False
    return layer


@keras.saving.register_keras_serializable(package="wsss_keras")
class Bottleneck(keras.layers.Layer):
    """torchvision's Bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4), BN after each.

    `out = ReLU(hook_residual(bn3(conv3(...))) + shortcut)`, then `hook_output(out)`.

    Args:
        filters: width of the 1x1 and 3x3 convs; the block outputs `4 * filters` channels.
        stride: stride of the 3x3 conv and of the shortcut conv.
        dilation: dilation of the 3x3 conv (its zero padding equals the dilation, as in torch).
        downsample: whether the shortcut is a 1x1 conv + BN (first block of a stage).
        stage: 1..4, the stage this block belongs to (used to look up hooks).
        index: 0-based position of the block in its stage.
        frozen_batchnorm: "none", "statistics" or "all" (see `ResNet`).
        bn_epsilon: BatchNorm epsilon (torch: 1e-5).
        bn_momentum: BatchNorm momentum in Keras' convention (torch 0.1 -> 0.9).

    Example:
    ```python
    block = Bottleneck(64, stride=2, downsample=True, stage=2, index=0)
    y = block(x)  # (B, H/2, W/2, 256)
    ```
    """

    def __init__(
        self,
        filters,
        stride=1,
        dilation=1,
        downsample=False,
        stage=1,
        index=0,
        frozen_batchnorm="none",
        bn_epsilon=1e-5,
        bn_momentum=0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if stride > 1 and dilation > 1:
            raise ValueError(f"A bottleneck cannot have both stride {stride} and dilation {dilation}.")
        self.filters = filters
        self.stride = stride
        self.dilation = dilation
        self.downsample = downsample
        self.stage = stage
        self.index = index
        self.frozen_batchnorm = frozen_batchnorm
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

        def conv(width, size, name, strides=1, rate=1):
            return keras.layers.Conv2D(
                width, size, strides=strides, dilation_rate=rate, padding="valid", use_bias=False, name=name
            )

        self.conv1 = conv(filters, 1, "conv1")
        self.bn1 = _batchnorm("bn1", frozen_batchnorm, bn_epsilon, bn_momentum)
        # Explicit symmetric padding = torch's padding=dilation; Keras "same" pads stride-2 convs
        # on the bottom/right only, which would shift the sampling grid.
        self.pad2 = keras.layers.ZeroPadding2D(dilation, name="pad2")
        self.conv2 = conv(filters, 3, "conv2", strides=stride, rate=dilation)
        self.bn2 = _batchnorm("bn2", frozen_batchnorm, bn_epsilon, bn_momentum)
        self.conv3 = conv(filters * EXPANSION, 1, "conv3")
        self.bn3 = _batchnorm("bn3", frozen_batchnorm, bn_epsilon, bn_momentum)
        if downsample:
            self.downsample_conv = conv(filters * EXPANSION, 1, "downsample_conv", strides=stride)
            self.downsample_bn = _batchnorm("downsample_bn", frozen_batchnorm, bn_epsilon, bn_momentum)

    def build(self, input_shape):
        channels = input_shape[-1]
        if not self.downsample and channels != self.filters * EXPANSION:
            raise ValueError(
                f"Bottleneck stage {self.stage} block {self.index}: an identity shortcut needs "
                f"{self.filters * EXPANSION} input channels, got {channels}."
            )
        self.conv1.build((None, None, None, channels))
        self.bn1.build((None, None, None, self.filters))
        self.conv2.build((None, None, None, self.filters))
        self.bn2.build((None, None, None, self.filters))
        self.conv3.build((None, None, None, self.filters))
        self.bn3.build((None, None, None, self.filters * EXPANSION))
        if self.downsample:
            self.downsample_conv.build((None, None, None, channels))
            self.downsample_bn.build((None, None, None, self.filters * EXPANSION))

    def call(self, inputs, training=None, hooks=None):
        x = ops.relu(self.bn1(self.conv1(inputs), training=training))
        x = ops.relu(self.bn2(self.conv2(self.pad2(x)), training=training))
        x = self.bn3(self.conv3(x), training=training)
        if self.downsample:
            shortcut = self.downsample_bn(self.downsample_conv(inputs), training=training)
        else:
            shortcut = inputs
        if hooks is not None:
            hook = hooks.get(self.stage, self.index, "residual")
            if hook is not None:
                x = hook(x, BlockContext(self.stage, self.index, "residual", inputs, shortcut, training))
        x = ops.relu(x + shortcut)
        if hooks is not None:
            hook = hooks.get(self.stage, self.index, "output")
            if hook is not None:
                x = hook(x, BlockContext(self.stage, self.index, "output", inputs, shortcut, training))
        return x

    def compute_output_shape(self, input_shape):
        def size(length):
            return None if length is None else (length - 1) // self.stride + 1

        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), self.filters * EXPANSION)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "stride": self.stride,
                "dilation": self.dilation,
                "downsample": self.downsample,
                "stage": self.stage,
                "index": self.index,
                "frozen_batchnorm": self.frozen_batchnorm,
                "bn_epsilon": self.bn_epsilon,
                "bn_momentum": self.bn_momentum,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="wsss_keras")
class ResNet(keras.Model):
    """ResNet-50/101 in torchvision's v1.5 layout, channels-last, with bottleneck hooks.

    Input: float images (B, H, W, 3), already normalised the torchvision way (RGB, x/255, mean
    (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)); normalisation is the caller's job.
    Output: the last stage's features (B, ceil(H/os), ceil(W/os), 32 * base_width), or with
    `return_stages=True` a dict {"stem": after the max-pool (64 ch, /4), "stage1".."stage4":
    torchvision's layer1..layer4} (IRN's five taps x1..x5).

    Args:
        block_counts: bottlenecks per stage; (3, 4, 6, 3) is ResNet-50, (3, 4, 23, 3) ResNet-101.
        base_width: stem width; stage i's bottleneck width is `base_width * 2**i` (64 for the
            real networks; small values make tiny test models).
        output_stride: 32, 16 (IRN/AMR/SSC default) or 8.
        dilation: how stages run once the output stride is reached: "none" (stride 1 and no
            dilation, as IRN/AMR/SSC do), "torchvision" (`replace_stride_with_dilation`) or
            "uniform" (mmcv / DeepLab-v2: every block of the stage dilated).
        frozen_batchnorm: "none" (ordinary BatchNorm), "statistics" (always use and keep the
            moving statistics, gamma/beta trainable: IRN's FixedBatchNorm) or "all" (also
            gamma/beta not trainable).
        freeze_stem: make conv1 and bn1 non-trainable (IRN/AMR/SSC set `requires_grad=False`
            on them).
        bn_epsilon: BatchNorm epsilon; torch's 1e-5.
        bn_momentum: Keras-convention momentum; 0.9 is torch's 0.1.
        **kwargs: `keras.Model` arguments (name, dtype).

    Call arguments:
        images: (B, H, W, 3) tensor.
        training: passed to BatchNorm (and to hooks through their context).
        hooks: `BottleneckHooks`, or a dict accepted by it; None runs the plain network.
        return_stages: return the dict of stage outputs instead of the last one.

    Example:
    ```python
    backbone = ResNet(block_counts=(3, 4, 6, 3), output_stride=16, frozen_batchnorm="statistics")
    features = backbone(images)                        # (B, H/16, W/16, 2048)
    taps = backbone(images, return_stages=True)        # dict stem, stage1..stage4
    zero_layer4 = {(4, None, "residual"): lambda x, ctx: x * 0.0}
    features = backbone(images, hooks=zero_layer4)
    ```
    """

    def __init__(
        self,
        block_counts=(3, 4, 6, 3),
        base_width=64,
        output_stride=16,
        dilation="none",
        frozen_batchnorm="none",
        freeze_stem=False,
        bn_epsilon=1e-5,
        bn_momentum=0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        block_counts = tuple(int(count) for count in block_counts)
        if len(block_counts) != 4 or min(block_counts) < 1:
            raise ValueError(f"block_counts must be four positive ints, got {block_counts!r}.")
        if frozen_batchnorm not in FROZEN_BATCHNORM_MODES:
            raise ValueError(f"frozen_batchnorm must be one of {FROZEN_BATCHNORM_MODES}, got {frozen_batchnorm!r}.")
        self.block_counts = block_counts
        self.base_width = base_width
        self.output_stride = output_stride
        self.dilation = dilation
        self.frozen_batchnorm = frozen_batchnorm
        self.freeze_stem = freeze_stem
        self.bn_epsilon = bn_epsilon
        self.bn_momentum = bn_momentum

        self.stem_pad = keras.layers.ZeroPadding2D(3, name="stem_pad")
        self.stem_conv = keras.layers.Conv2D(
            base_width, 7, strides=2, padding="valid", use_bias=False, name="stem_conv"
        )
        self.stem_bn = _batchnorm("stem_bn", frozen_batchnorm, bn_epsilon, bn_momentum)
        if freeze_stem:
            self.stem_conv.trainable = False
            self.stem_bn.trainable = False
        # torch pads the max-pool with -inf; its input comes out of a ReLU (>= 0) and every
        # window holds at least one real pixel, so zero padding gives the same maximum.
        self.pool_pad = keras.layers.ZeroPadding2D(1, name="pool_pad")
        self.pool = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="pool")

        # One flat list: Keras tracks the layers of a list attribute, not of lists inside it.
        self.blocks = []
        schedule = block_schedule(block_counts, output_stride, dilation)
        for stage_index, blocks in enumerate(schedule, start=1):
            for block_index, (stride, rate) in enumerate(blocks):
                self.blocks.append(
                    Bottleneck(
                        base_width * 2 ** (stage_index - 1),
                        stride=stride,
                        dilation=rate,
                        downsample=block_index == 0,
                        stage=stage_index,
                        index=block_index,
                        frozen_batchnorm=frozen_batchnorm,
                        bn_epsilon=bn_epsilon,
                        bn_momentum=bn_momentum,
                        name=f"layer{stage_index}_{block_index}",
                    )
                )
        self.build((None, None, None, 3))

    def build(self, input_shape):
        self.stem_conv.build((None, None, None, input_shape[-1]))
        self.stem_bn.build((None, None, None, self.base_width))
        channels = self.base_width
        for block in self.blocks:
            block.build((None, None, None, channels))
            channels = block.filters * EXPANSION
        self.built = True

    @property
    def stages(self):
        """The bottlenecks grouped per stage: a list of four lists."""
        stages, start = [], 0
        for count in self.block_counts:
            stages.append(self.blocks[start:start + count])
            start += count
        return stages

    @property
    def num_features(self):
        """Channels of the last stage's output."""
        return self.base_width * 8 * EXPANSION

    def __call__(self, *args, hooks=None, **kwargs):
        # Wrap a hook dict before Keras sees it: Keras walks call arguments as nested structures
        # and sorts dict keys, which fails for keys mixing None and ints (and a hook is no tensor).
        if hooks is not None and not isinstance(hooks, BottleneckHooks):
            hooks = BottleneckHooks(hooks)
        return super().__call__(*args, hooks=hooks, **kwargs)

    def call(self, images, training=None, hooks=None, return_stages=False):
        if hooks is not None and not isinstance(hooks, BottleneckHooks):
            hooks = BottleneckHooks(hooks)
        if hooks is not None:
            hooks.check_blocks(self.block_counts)
        x = self.stem_conv(self.stem_pad(images))
        x = ops.relu(self.stem_bn(x, training=training))
        x = self.pool(self.pool_pad(x))
        outputs = {"stem": x}
        for name, stage in zip(STAGE_NAMES, self.stages):
            for block in stage:
                x = block(x, training=training, hooks=hooks)
            outputs[name] = x
        return outputs if return_stages else x

    def compute_output_shape(self, input_shape, return_stages=False):
        def size(length, stride):
            return None if length is None else (length - 1) // stride + 1

        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        shapes, stride = {}, 4
        shapes["stem"] = (batch, size(height, 4), size(width, 4), self.base_width)
        for name, stage in zip(STAGE_NAMES, self.stages):
            stride *= stage[0].stride
            shapes[name] = (batch, size(height, stride), size(width, stride), stage[0].filters * EXPANSION)
        return shapes if return_stages else shapes["stage4"]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "block_counts": list(self.block_counts),
                "base_width": self.base_width,
                "output_stride": self.output_stride,
                "dilation": self.dilation,
                "frozen_batchnorm": self.frozen_batchnorm,
                "freeze_stem": self.freeze_stem,
                "bn_epsilon": self.bn_epsilon,
                "bn_momentum": self.bn_momentum,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
