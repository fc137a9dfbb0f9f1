"""AMR's attention modulation module (AMM): channel and spatial gates normalised with batch
statistics."""

import math

import keras
from keras import ops

from wsss_keras.methods.initializers import torch_bias_uniform, torch_uniform


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
