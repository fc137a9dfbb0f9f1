"""A small convolutional stem that turns images into a feature map for a transformer to tokenise.

A ViT trained from scratch on a few hundred images gives flat CAMs: every token soon carries
the whole image's evidence. A few local convolutions in front of the patch embedding (as in
hybrid ViTs, Dosovitskiy et al. 2021, and "Early convolutions help transformers see better",
Xiao et al. 2021) give each token a local receptive field and a bias toward local features,
which is what lets the CPU-sized recipes of the ViT methods localise. The paper recipes load
pretrained plain ViTs and use no stem.
"""

import keras

_PACKAGE = "wsss_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvStem(keras.layers.Layer):
    """Stages of (3x3 conv, normalisation, ReLU) blocks, each stage but the last followed by a
    2x2 max-pool, so the output stride is 2^(stages − 1).

    Args:
        widths: channels of each stage.
        convs_per_stage: conv blocks per stage.
        norm: "batch" (BatchNormalization) or "group" (GroupNormalization with 8 groups; no
            batch statistics, so every view and batch size is normalised alike).
        **kwargs: standard layer arguments.

    Example:
    >>> import numpy as np
    >>> stem = ConvStem(widths=(8, 16))
    >>> stem(np.zeros((1, 32, 32, 3), "float32")).shape
    (1, 16, 16, 16)
    """

    def __init__(self, widths=(32, 64, 128), convs_per_stage=2, norm="batch", **kwargs):
        super().__init__(**kwargs)
        if norm not in ("batch", "group"):
            raise ValueError(f"ConvStem norm={norm!r}: choose 'batch' or 'group'.")
        self.widths = tuple(int(width) for width in widths)
        self.convs_per_stage = int(convs_per_stage)
        self.norm = norm
        self.convs, self.norms = [], []
        for stage, width in enumerate(self.widths):
            for index in range(self.convs_per_stage):
                name = f"stage{stage}_conv{index}"
                normalisation = (
                    keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_norm")
                    if norm == "batch"
                    else keras.layers.GroupNormalization(groups=min(8, width), name=f"{name}_norm")
                )
                self.convs.append(keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=name))
                self.norms.append(normalisation)
        self.pool = keras.layers.MaxPooling2D(2)

    @property
    def stride(self):
        return 2 ** (len(self.widths) - 1)

    @property
    def output_channels(self):
        return self.widths[-1]

    def build(self, input_shape):
        shape = tuple(input_shape)
        index = 0
        for stage, width in enumerate(self.widths):
            for _ in range(self.convs_per_stage):
                conv, normalisation = self.convs[index], self.norms[index]
                conv.build(shape)
                shape = shape[:-1] + (width,)
                normalisation.build(shape)
                index += 1
        self.built = True

    def call(self, images, training=None):
        x = images
        index = 0
        for stage in range(len(self.widths)):
            for _ in range(self.convs_per_stage):
                conv, normalisation = self.convs[index], self.norms[index]
                x = keras.ops.relu(normalisation(conv(x), training=training))
                index += 1
            if stage < len(self.widths) - 1:
                x = self.pool(x)
        return x

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        stride = self.stride
        height = None if height is None else height // stride
        width = None if width is None else width // stride
        return (batch, height, width, self.widths[-1])

    def get_config(self):
        config = super().get_config()
        config.update(widths=list(self.widths), convs_per_stage=self.convs_per_stage, norm=self.norm)
        return config
