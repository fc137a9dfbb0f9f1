"""The ViT encoder used by every ViT-family host: ViT, DeiT, DINO, MCTformer, and CLIP's image tower.

One class covers them all through its config: the number of class tokens (MCTformer uses one
per class), how the positional table is resized to the current patch grid (timm/ToCo bicubic,
DINO's scale-factor bicubic, CLIP's bilinear), whether the table is learnable, CLIP's
`ln_pre` and bias-free patch convolution, and the activation and LayerNorm epsilon.

The encoder accepts an attention hook (`wsss_keras.backbones.transformer`) and returns, on
request, every block's tokens and attention probabilities, plus the initial embeddings X⁰.
Its blocks are public (`encoder.blocks[i]`, each a `TransformerBlock` with `norm1`,
`attend`, `norm2`, `mlp`) and so is the final norm (`encoder.norm`), so methods can run
parts of the network on their own.
"""

import keras
from keras import ops

from wsss_keras.backbones.pos_embed import MODES, resize_grid_embedding
from wsss_keras.backbones.transformer import TransformerBlock

_PACKAGE = "wsss_keras"


def _pair(value):
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"Expected an int or a pair (h, w), got {value!r}.")
        return int(value[0]), int(value[1])
    return int(value), int(value)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ViTEncoder(keras.Model):
    """Vision transformer encoder with hookable attention and positional resizing on every call.

    Images of any size are accepted: the patch grid is `(H // patch, W // patch)` (valid
    convolution, floor), and the positional table, stored for `pos_embed_grid`, is resized to
    that grid on every call with the reference's interpolation (`pos_embed_mode`).

    Args:
        patch_size: int, side of the square patches (the patch conv's kernel and stride).
        hidden_dim: int, token width D.
        num_layers: int, number of transformer blocks.
        num_heads: int, attention heads per block.
        mlp_dim: int, inner width of each block's MLP.
        num_class_tokens: int, class tokens in front of the patch tokens (1 for ViT, DINO,
            CLIP; the number of classes for MCTformer; 0 for none). Each has its own row in
            the positional table.
        pos_embed_grid: int or (H0, W0), the patch grid the positional table was trained on
            (14 for 224-pixel, patch-16 checkpoints).
        pos_embed_mode: "bicubic" (timm/ToCo, size-based, a = -0.75), "bicubic_dino" (DINO,
            scale-factor coordinates) or "bilinear" (CLIP/WeCLIP, half-pixel).
        pos_embed_trainable: bool; ToCo freezes its table, MCTformer trains it.
        use_patch_bias: bool, whether the patch convolution has a bias (CLIP's has none).
        pre_norm: bool, a LayerNorm (`pre_norm`, CLIP's `ln_pre`) after adding positions.
        final_norm: bool, a LayerNorm (`norm`) after the last block (CLIP's `ln_post`).
        activation: "gelu" (exact erf) or "quick_gelu" (CLIP).
        layer_norm_epsilon: float, 1e-6 for timm/DINO, 1e-5 for CLIP.
        fused_qkv: bool, fused `qkv` projection (True) or separate query/key/value.
        use_qkv_bias: bool.
        image_channels: int, input channels (3).
        **kwargs: standard model arguments (`name`, `dtype`).

    Call arguments:
        images: `(batch, H, W, channels)` float tensor, already normalised.
        hook: optional attention hook; each block calls it with its 0-based index.
        num_blocks: run only the first `num_blocks` blocks (None = all). The final norm is
            applied only when every block runs.
        return_all_tokens: add `"all_tokens"`, the list of every run block's output (the raw
            residual stream, no final norm).
        return_attention: add `"attention"`, the list of every run block's attention
            probabilities `(batch, heads, N, N)`.

    Returns:
        dict with `"tokens"` `(batch, N, D)` (N = class tokens + h·w), `"class_tokens"`
        `(batch, num_class_tokens, D)`, `"patch_tokens"` `(batch, h·w, D)` (row-major
        over the grid), `"embeddings"` X⁰ (the input to the first block: patch and position
        embeddings with the class tokens, after `pre_norm` if any), and the two optional
        lists. The grid is `encoder.patch_grid(images)`.

    Example:
    >>> encoder = ViTEncoder(patch_size=4, hidden_dim=32, num_layers=2, num_heads=4,
    ...                      mlp_dim=64, pos_embed_grid=4)
    >>> outputs = encoder(keras.random.normal((1, 24, 36, 3)), return_attention=True)
    >>> tuple(outputs["patch_tokens"].shape), encoder.patch_grid((1, 24, 36, 3))
    ((1, 54, 32), (6, 9))
    """

    def __init__(
        self,
        patch_size=16,
        hidden_dim=768,
        num_layers=12,
        num_heads=12,
        mlp_dim=3072,
        num_class_tokens=1,
        pos_embed_grid=14,
        pos_embed_mode="bicubic",
        pos_embed_trainable=True,
        use_patch_bias=True,
        pre_norm=False,
        final_norm=True,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        fused_qkv=True,
        use_qkv_bias=True,
        image_channels=3,
        **kwargs,
    ):
        kwargs.setdefault("name", "vit_encoder")
        super().__init__(**kwargs)
        if pos_embed_mode not in MODES:
            raise ValueError(f"pos_embed_mode={pos_embed_mode!r} is not one of {MODES}.")
        if int(num_class_tokens) < 0:
            raise ValueError(f"num_class_tokens must be >= 0, got {num_class_tokens}.")
        self.patch_size = int(patch_size)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.num_class_tokens = int(num_class_tokens)
        self.pos_embed_grid = _pair(pos_embed_grid)
        self.pos_embed_mode = pos_embed_mode
        self.pos_embed_trainable = bool(pos_embed_trainable)
        self.use_patch_bias = bool(use_patch_bias)
        self.pre_norm = bool(pre_norm)
        self.final_norm = bool(final_norm)
        self.activation = activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.fused_qkv = bool(fused_qkv)
        self.use_qkv_bias = bool(use_qkv_bias)
        self.image_channels = int(image_channels)

        self.patch_embed = keras.layers.Conv2D(
            self.hidden_dim, self.patch_size, strides=self.patch_size, padding="valid",
            use_bias=self.use_patch_bias, name="patch_embed", dtype=self.dtype_policy,
        )
        norm = dict(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy)
        self.norm_pre = keras.layers.LayerNormalization(name="norm_pre", **norm) if self.pre_norm else None
        self.blocks = [
            TransformerBlock(
                self.hidden_dim, self.num_heads, self.mlp_dim, activation=activation,
                layer_norm_epsilon=self.layer_norm_epsilon, fused_qkv=self.fused_qkv,
                use_qkv_bias=self.use_qkv_bias, block_index=index, name=f"block_{index}",
                dtype=self.dtype_policy,
            )
            for index in range(self.num_layers)
        ]
        self.norm = keras.layers.LayerNormalization(name="norm", **norm) if self.final_norm else None

    @property
    def num_pos_patches(self):
        return self.pos_embed_grid[0] * self.pos_embed_grid[1]

    def build(self, input_shape=None):
        if self.built:
            return
        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        if self.num_class_tokens:
            self.class_token = self.add_weight(
                shape=(1, self.num_class_tokens, self.hidden_dim), initializer=initializer, name="class_token"
            )
        self.pos_embed = self.add_weight(
            shape=(1, self.num_class_tokens + self.num_pos_patches, self.hidden_dim),
            initializer=initializer, trainable=self.pos_embed_trainable, name="pos_embed",
        )
        self.patch_embed.build((None, None, None, self.image_channels))
        token_shape = (None, None, self.hidden_dim)
        if self.norm_pre is not None:
            self.norm_pre.build(token_shape)
        for block in self.blocks:
            block.build(token_shape)
        if self.norm is not None:
            self.norm.build(token_shape)
        self.built = True

    def patch_grid(self, images_or_shape):
        """(h, w) patch grid for an image tensor or shape `(batch, H, W, C)`: floor division."""
        shape = tuple(images_or_shape) if isinstance(images_or_shape, (tuple, list)) else images_or_shape.shape
        height, width = shape[1], shape[2]
        if height is None or width is None:
            dynamic = ops.shape(images_or_shape)
            height, width = dynamic[1], dynamic[2]
        return height // self.patch_size, width // self.patch_size

    def positional_embedding(self, grid):
        """The `(1, num_class_tokens + h·w, D)` positional embedding for patch grid (h, w)."""
        class_rows = self.pos_embed[:, : self.num_class_tokens]
        patch_rows = resize_grid_embedding(
            self.pos_embed[:, self.num_class_tokens:], self.pos_embed_grid, grid, self.pos_embed_mode
        )
        return ops.concatenate([class_rows, ops.cast(patch_rows, class_rows.dtype)], axis=1)

    def embed(self, images):
        """Patch + position embeddings with the class tokens in front: X⁰, `(batch, N, D)`."""
        images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
        if images.shape[-1] != self.image_channels:
            raise ValueError(
                f"{self.name}: expected channels-last images with {self.image_channels} channels, "
                f"got shape {tuple(images.shape)}."
            )
        patches = self.patch_embed(images)
        static = patches.shape
        dynamic = ops.shape(patches)
        batch = dynamic[0]
        grid_h = static[1] if static[1] is not None else dynamic[1]
        grid_w = static[2] if static[2] is not None else dynamic[2]
        tokens = ops.reshape(patches, (batch, -1, self.hidden_dim))
        if self.num_class_tokens:
            class_tokens = ops.tile(ops.cast(self.class_token, tokens.dtype), (batch, 1, 1))
            tokens = ops.concatenate([class_tokens, tokens], axis=1)
        tokens = tokens + ops.cast(self.positional_embedding((grid_h, grid_w)), tokens.dtype)
        if self.norm_pre is not None:
            tokens = self.norm_pre(tokens)
        return tokens

    def call(self, images, hook=None, num_blocks=None, return_all_tokens=False, return_attention=False):
        depth = self._depth(num_blocks)
        tokens = self.embed(images)
        outputs = {"embeddings": tokens}
        all_tokens, attention = [], []
        for index in range(depth):
            tokens, probs = self.blocks[index](tokens, hook=hook, block_index=index)
            if return_all_tokens:
                all_tokens.append(tokens)
            if return_attention:
                attention.append(probs)
        if self.norm is not None and depth == self.num_layers:
            tokens = self.norm(tokens)
        outputs["tokens"] = tokens
        outputs["class_tokens"] = tokens[:, : self.num_class_tokens]
        outputs["patch_tokens"] = tokens[:, self.num_class_tokens:]
        if return_all_tokens:
            outputs["all_tokens"] = all_tokens
        if return_attention:
            outputs["attention"] = attention
        return outputs

    def _depth(self, num_blocks):
        if num_blocks is None:
            return self.num_layers
        if not 0 <= int(num_blocks) <= self.num_layers:
            raise ValueError(f"num_blocks={num_blocks} is outside 0..{self.num_layers} for {self.name}.")
        return int(num_blocks)

    def compute_output_spec(self, images, hook=None, num_blocks=None, return_all_tokens=False,
                            return_attention=False):
        depth = self._depth(num_blocks)
        batch, height, width = images.shape[0], images.shape[1], images.shape[2]
        patches = None
        if height is not None and width is not None:
            patches = (height // self.patch_size) * (width // self.patch_size)
        length = None if patches is None else patches + self.num_class_tokens
        dtype = self.compute_dtype

        def spec(*shape):
            return keras.KerasTensor(shape, dtype=dtype)

        outputs = {
            "embeddings": spec(batch, length, self.hidden_dim),
            "tokens": spec(batch, length, self.hidden_dim),
            "class_tokens": spec(batch, self.num_class_tokens, self.hidden_dim),
            "patch_tokens": spec(batch, patches, self.hidden_dim),
        }
        if return_all_tokens:
            outputs["all_tokens"] = [spec(batch, length, self.hidden_dim) for _ in range(depth)]
        if return_attention:
            outputs["attention"] = [spec(batch, self.num_heads, length, length) for _ in range(depth)]
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            patch_size=self.patch_size,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            num_class_tokens=self.num_class_tokens,
            pos_embed_grid=list(self.pos_embed_grid),
            pos_embed_mode=self.pos_embed_mode,
            pos_embed_trainable=self.pos_embed_trainable,
            use_patch_bias=self.use_patch_bias,
            pre_norm=self.pre_norm,
            final_norm=self.final_norm,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            fused_qkv=self.fused_qkv,
            use_qkv_bias=self.use_qkv_bias,
            image_channels=self.image_channels,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
