"""WeCLIP's decoder: a transformer over the frozen CLIP's multi-layer features."""

import keras
from keras import ops

from wsss_keras.backbones.token_dense import TokenDense
from wsss_keras.backbones.transformer import TransformerBlock
from wsss_keras.methods.initializers import torch_bias_uniform, torch_uniform

_PACKAGE = "wsss_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeCLIPDecoder(keras.layers.Layer):
    """WeCLIP's decoder (`SegFormerHead` + `DecoderTransformer`): per input layer a token MLP
    (Linear → ReLU → Linear), concatenation, a 1x1 fusion with bias, channel dropout, then
    CLIP-style pre-LN blocks without positions, and a 1x1 classifier.

    Args:
        num_classes: output channels (foreground classes + background).
        num_inputs: how many token maps come in (WeCLIP: the 11 frozen layers).
        width: channels of the MLPs, the fusion and the transformer (256).
        num_layers: transformer blocks (3).
        num_heads: attention heads (8).
        dropout: `SpatialDropout2D` rate after the fusion (0.1).

    Call arguments:
        token_maps: list of `num_inputs` maps `(B, h, w, D)`.

    Returns:
        `(logits (B, h, w, num_classes), fused (B, h, w, width))`.

    Example:
    >>> decoder = WeCLIPDecoder(3, num_inputs=2, width=16, num_layers=1, num_heads=2)
    >>> logits, fused = decoder([np.zeros((1, 4, 4, 8), "float32")] * 2)
    >>> tuple(logits.shape), tuple(fused.shape)
    ((1, 4, 4, 3), (1, 4, 4, 16))
    """

    def __init__(self, num_classes, num_inputs, width=256, num_layers=3, num_heads=8, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.num_inputs, self.width = int(num_classes), int(num_inputs), int(width)
        self.num_layers, self.num_heads, self.dropout_rate = int(num_layers), int(num_heads), float(dropout)
        self.mlps = []
        for index in range(self.num_inputs):
            self.mlps.append((
                TokenDense(self.width, activation="relu", name=f"mlp{index}_fc1"),
                TokenDense(self.width, name=f"mlp{index}_fc2"),
            ))
        self.fuse = TokenDense(self.width, name="fuse")
        self.dropout = keras.layers.SpatialDropout2D(self.dropout_rate)
        self.blocks = [
            TransformerBlock(self.width, self.num_heads, 4 * self.width, activation="quick_gelu",
                             layer_norm_epsilon=1e-5, name=f"block{index}")
            for index in range(self.num_layers)
        ]
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier")

    def build(self, input_shape):
        shapes = list(input_shape)
        if len(shapes) != self.num_inputs:
            raise ValueError(f"{self.name}: built for {self.num_inputs} token maps, given {len(shapes)}.")
        for (fc1, fc2), shape in zip(self.mlps, shapes):
            depth = shape[-1]
            # PyTorch's nn.Linear / nn.Conv2d defaults, as the reference trains them.
            for layer, fan_in in ((fc1, depth), (fc2, self.width)):
                layer.kernel_initializer, layer.bias_initializer = torch_uniform(fan_in), torch_bias_uniform(fan_in)
            fc1.build((None, depth))
            fc2.build((None, self.width))
        fan_in = self.width * self.num_inputs
        self.fuse.kernel_initializer, self.fuse.bias_initializer = torch_uniform(fan_in), torch_bias_uniform(fan_in)
        self.fuse.build((None, fan_in))
        for block in self.blocks:
            block.build((None, None, self.width))
        self.classifier.kernel_initializer = torch_uniform(self.width)
        self.classifier.bias_initializer = torch_bias_uniform(self.width)
        self.classifier.build((None, self.width))
        self.built = True

    def call(self, token_maps, training=None):
        maps = [fc2(fc1(tokens)) for (fc1, fc2), tokens in zip(self.mlps, token_maps)]
        fused = self.dropout(self.fuse(ops.concatenate(maps, axis=-1)), training=training)
        batch, height, width = ops.shape(fused)[0], fused.shape[1], fused.shape[2]
        tokens = ops.reshape(fused, (batch, -1, self.width))
        for block in self.blocks:
            tokens, _ = block(tokens)
        logits = self.classifier(ops.reshape(tokens, (batch, height, width, self.width)))
        return logits, fused

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_inputs=self.num_inputs, width=self.width,
                      num_layers=self.num_layers, num_heads=self.num_heads, dropout=self.dropout_rate)
        return config
