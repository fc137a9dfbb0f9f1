"""A ViT behind a small convolutional stem: the CPU recipes' stand-in for a pretrained ViT.

A ViT trained from scratch on a few hundred small images needs local features first
(`conv_stem.py` says why); this is `ConvStem` followed by a `ViTEncoder` whose patches are
single stem pixels, so each token covers `stride` x `stride` image pixels. It answers the calls a
`ViTEncoder` answers (tokens, attention), so a method that reads a frozen ViT's attention (SSR's
DINO) can take one.
"""

import keras

from wsss_keras.backbones.conv_stem import ConvStem
from wsss_keras.backbones.vit.vit_encoder import ViTEncoder

_PACKAGE = "wsss_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StemViT(keras.Model):
    """`ConvStem`, then a `ViTEncoder` on its feature map with patch size 1.

    Args:
        stem: `ConvStem` arguments (`widths`, `convs_per_stage`, `norm`); the token stride is
            the stem's, 2^(stages - 1).
        hidden_dim, num_layers, num_heads, mlp_dim, pos_embed_grid: the `ViTEncoder`'s.
        layer_norm_epsilon: float.
        **kwargs: standard model arguments.

    Call arguments and returns: as `ViTEncoder.call` (`return_attention`,
    `return_all_tokens`, `num_blocks`, `hook`), on images `(B, H, W, 3)`; the token grid is
    `(H // stride, W // stride)`.

    Example:
    >>> import numpy as np
    >>> vit = StemViT(stem=dict(widths=(8, 16)), hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
    ...               pos_embed_grid=4)
    >>> outputs = vit(np.zeros((1, 16, 24, 3), "float32"), return_attention=True)
    >>> vit.stride, tuple(outputs["patch_tokens"].shape), tuple(outputs["attention"][0].shape)
    (2, (1, 96, 16), (1, 2, 97, 97))
    """

    def __init__(self, stem=None, hidden_dim=128, num_layers=2, num_heads=4, mlp_dim=256, pos_embed_grid=12,
                 layer_norm_epsilon=1e-6, **kwargs):
        kwargs.setdefault("name", "stem_vit")
        super().__init__(**kwargs)
        self.stem_config = dict(stem or {"widths": (16, 32, 64, 128), "norm": "group"})
        self.hidden_dim, self.num_layers = int(hidden_dim), int(num_layers)
        self.num_heads, self.mlp_dim = int(num_heads), int(mlp_dim)
        self.pos_embed_grid, self.layer_norm_epsilon = pos_embed_grid, float(layer_norm_epsilon)
        self.stem = ConvStem(**self.stem_config, name="stem", dtype=self.dtype_policy)
        self.vit = ViTEncoder(
            patch_size=1, hidden_dim=self.hidden_dim, num_layers=self.num_layers, num_heads=self.num_heads,
            mlp_dim=self.mlp_dim, num_class_tokens=1, pos_embed_grid=pos_embed_grid, pos_embed_mode="bicubic_dino",
            layer_norm_epsilon=self.layer_norm_epsilon, image_channels=self.stem.output_channels, name="vit",
            dtype=self.dtype_policy,
        )

    @property
    def stride(self):
        """Image pixels per token side."""
        return self.stem.stride

    @property
    def blocks(self):
        return self.vit.blocks

    def build(self, input_shape=None):
        if self.built:
            return
        self.stem.build((None, None, None, 3))
        self.vit.build((None, None, None, self.stem.output_channels))
        self.built = True

    def patch_grid(self, images_or_shape):
        shape = tuple(images_or_shape) if isinstance(images_or_shape, (tuple, list)) else images_or_shape.shape
        return shape[1] // self.stride, shape[2] // self.stride

    def call(self, images, hook=None, num_blocks=None, return_all_tokens=False, return_attention=False, training=None):
        return self.vit(self.stem(images, training=training), hook=hook, num_blocks=num_blocks,
                        return_all_tokens=return_all_tokens, return_attention=return_attention)

    def compute_output_spec(self, images, hook=None, num_blocks=None, return_all_tokens=False, return_attention=False,
                            training=None):
        features = keras.KerasTensor(self.stem.compute_output_shape(images.shape), dtype=images.dtype)
        return self.vit.compute_output_spec(features, num_blocks=num_blocks, return_all_tokens=return_all_tokens,
                                            return_attention=return_attention)

    def get_config(self):
        config = super().get_config()
        config.update(stem=self.stem_config, hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                      num_heads=self.num_heads, mlp_dim=self.mlp_dim, pos_embed_grid=self.pos_embed_grid,
                      layer_norm_epsilon=self.layer_norm_epsilon)
        return config
