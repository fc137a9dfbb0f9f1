"""ToCo's heads: the LargeFOV segmentation head and the CTC projection head."""

import keras
from keras import ops

from wsss_keras.backbones.token_dense import TokenDense
from wsss_keras.backbones.transformer import gelu_exact

_PACKAGE = "wsss_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LargeFOV(keras.layers.Layer):
    """DeepLab-LargeFOV head (ToCo `model/decoder/conv_head.py`): two dilated 3x3 convs with
    ReLU and a 1x1 classifier, all bias-free, PyTorch's default (Kaiming-uniform, a = √5) init.

    Args:
        num_classes: output channels (foreground classes + background).
        channels: width of the two dilated convs (512 in ToCo).
        dilation: dilation of the 3x3 convs (5 in ToCo).
    """

    def __init__(self, num_classes, channels=512, dilation=5, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.channels, self.dilation = int(num_classes), int(channels), int(dilation)
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's Conv2d default.
        init = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        conv = dict(padding="same", use_bias=False, kernel_initializer=init)
        self.conv1 = keras.layers.Conv2D(self.channels, 3, dilation_rate=self.dilation, name="conv1", **conv)
        self.conv2 = keras.layers.Conv2D(self.channels, 3, dilation_rate=self.dilation, name="conv2", **conv)
        self.classifier = keras.layers.Conv2D(self.num_classes, 1, name="conv3", **conv)

    def build(self, input_shape):
        self.conv1.build(input_shape)
        inner = tuple(input_shape[:-1]) + (self.channels,)
        self.conv2.build(inner)
        self.classifier.build(inner)
        self.built = True

    def call(self, features):
        return self.classifier(ops.relu(self.conv2(ops.relu(self.conv1(features)))))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, channels=self.channels, dilation=self.dilation)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ProjectionHead(keras.layers.Layer):
    """ToCo's `CTCHead`: MLP (GELU) → L2-normalise → weight-normalised linear without bias.

    The last layer's gain is frozen at 1 in the reference, which is the same as normalising
    each output unit's weight vector to unit length; that is what is done here.

    Args:
        hidden_dim, bottleneck_dim, output_dim: 2048, 256, 1024 in ToCo.
    """

    def __init__(self, hidden_dim=2048, bottleneck_dim=256, output_dim=1024, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim, self.bottleneck_dim, self.output_dim = int(hidden_dim), int(bottleneck_dim), int(output_dim)
        dense = dict(kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02), bias_initializer="zeros")
        self.fc1 = TokenDense(self.hidden_dim, name="fc1", **dense)
        self.fc2 = TokenDense(self.hidden_dim, name="fc2", **dense)
        self.fc3 = TokenDense(self.bottleneck_dim, name="fc3", **dense)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.fc3.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.last_kernel = self.add_weight(
            shape=(self.bottleneck_dim, self.output_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02), name="last_kernel",
        )
        self.built = True

    def call(self, tokens):
        x = self.fc3(gelu_exact(self.fc2(gelu_exact(self.fc1(tokens)))))
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
        kernel = self.last_kernel / ops.maximum(ops.norm(self.last_kernel, axis=0, keepdims=True), 1e-12)
        return ops.matmul(x, kernel)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, bottleneck_dim=self.bottleneck_dim, output_dim=self.output_dim)
        return config
