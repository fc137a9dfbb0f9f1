"""SSC's CAM-driven reconstruction: the decoder that rebuilds the crop from the class-logit map,
and the perceptual loss it is trained with."""

import keras
from keras import ops

from wsss_keras.backbones.vgg import VGG_PERCEPTUAL_LAYERS, vgg19_features
from wsss_keras.methods.initializers import torch_bias_uniform, torch_uniform

PERCEPTUAL_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
DECODER_WIDTHS = (256, 256, 128, 64, 32)


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
