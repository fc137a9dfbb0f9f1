"""CLIP in Keras: image tower (a `ViTEncoder` configured as CLIP's), text tower, and the joint model.

The image tower reproduces OpenAI CLIP's `VisionTransformer` plus what WeCLIP/CLIP-ES need:
the positional table is resized bilinearly (half-pixel, no antialias) to the current patch
grid on every call; it returns per-block tokens and head-averaged attention on request; it
can run only its first K blocks; and it projects either the class token (standard CLIP) or
every token (WeCLIP) with `proj`.
"""

import keras
from keras import ops

from wsss_keras.backbones.conv_stem import ConvStem
from wsss_keras.backbones.transformer import TransformerBlock
from wsss_keras.backbones.vit.vit_encoder import ViTEncoder

_PACKAGE = "wsss_keras"


def _normalize(x, axis=-1):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-24))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CLIPImageEncoder(keras.Model):
    """CLIP's image tower: patch conv (no bias), class embedding, resized positions, `ln_pre`,
    pre-LN QuickGELU blocks (LayerNorm eps 1e-5), `ln_post` and the projection `proj`.

    Args:
        patch_size: int, 16 for ViT-B/16.
        hidden_dim: int, 768 for ViT-B/16.
        num_layers: int.
        num_heads: int.
        mlp_dim: int.
        output_dim: int, width of the joint embedding space (512 for ViT-B/16).
        pos_embed_grid: int or (H0, W0), the grid of the stored positional table (14).
        pos_embed_mode: "bilinear" (OpenAI CLIP/WeCLIP); the other modes of `ViTEncoder`
            are allowed.
        layer_norm_epsilon: float, 1e-5 in CLIP.
        activation: "quick_gelu" (OpenAI CLIP) or "gelu".
        stem: optional `ConvStem` config dict in front of the patch embedding (the CPU
            recipes' tiny CLIP, trained from scratch: without local convolutions its tokens
            soon carry the whole image and its CAMs go flat). The patch size then counts
            stem-feature pixels, so the token stride is `patch_size * stem stride`.
        **kwargs: standard model arguments.

    Call arguments:
        images: `(batch, H, W, 3)`, normalised.
        hook: optional attention hook (see `wsss_keras.backbones.transformer`).
        num_blocks: run only the first K blocks (WeCLIP's frozen pass runs 11 of 12); the
            outputs then carry the raw residual stream and no projection.
        return_all_tokens: add `"all_tokens"` (every run block's raw output).
        return_attention: add `"attention"`, per run block.
        average_attention_heads: bool, average `"attention"` over heads, giving
            `(batch, N, N)` maps as WeCLIP's `myAtt.py` does (default True).

    Returns:
        dict with the `ViTEncoder` outputs (`"tokens"`, `"class_tokens"`,
        `"patch_tokens"`, `"embeddings"`, ...) and, when every block runs,
        `"image_embedding"` `(batch, output_dim)` = `ln_post(CLS) @ proj` and
        `"projected_tokens"` `(batch, N, output_dim)` = `ln_post(all tokens) @ proj`
        (WeCLIP averages the patch rows of the latter).

    Example:
    >>> tower = CLIPImageEncoder(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4,
    ...                          mlp_dim=64, output_dim=16, pos_embed_grid=4)
    >>> outputs = tower(keras.random.normal((1, 40, 56, 3)))
    >>> tuple(outputs["image_embedding"].shape), tuple(outputs["projected_tokens"].shape)
    ((1, 16), (1, 36, 16))
    """

    def __init__(self, patch_size=16, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072, output_dim=512,
                 pos_embed_grid=14, pos_embed_mode="bilinear", layer_norm_epsilon=1e-5, activation="quick_gelu",
                 stem=None, **kwargs):
        kwargs.setdefault("name", "clip_image_encoder")
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.output_dim = int(output_dim)
        self.pos_embed_grid = pos_embed_grid
        self.pos_embed_mode = pos_embed_mode
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.activation = activation
        self.stem_config = dict(stem) if stem else None
        self.stem = ConvStem(**self.stem_config, name="stem", dtype=self.dtype_policy) if stem else None
        self.vit = ViTEncoder(
            patch_size=self.patch_size, hidden_dim=self.hidden_dim, num_layers=self.num_layers,
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_class_tokens=1, pos_embed_grid=pos_embed_grid,
            pos_embed_mode=pos_embed_mode, use_patch_bias=False, pre_norm=True, final_norm=True,
            activation=activation, layer_norm_epsilon=self.layer_norm_epsilon, name="vit", dtype=self.dtype_policy,
            image_channels=self.stem.output_channels if self.stem is not None else 3,
        )

    @property
    def blocks(self):
        return self.vit.blocks

    @property
    def ln_post(self):
        return self.vit.norm

    @property
    def stride(self):
        """Pixels per token side."""
        return self.patch_size * (self.stem.stride if self.stem is not None else 1)

    def build(self, input_shape=None):
        if self.built:
            return
        if self.stem is not None:
            self.stem.build((None, None, None, 3))
        self.vit.build((None, None, None, self.vit.image_channels))
        self.proj = self.add_weight(shape=(self.hidden_dim, self.output_dim), initializer="glorot_uniform",
                                    name="proj")
        self.built = True

    def patch_grid(self, images_or_shape):
        """(h, w) token grid for an image tensor or shape: floor division by the stride."""
        if self.stem is None:
            return self.vit.patch_grid(images_or_shape)
        shape = tuple(images_or_shape) if isinstance(images_or_shape, (tuple, list)) else images_or_shape.shape
        return shape[1] // self.stride, shape[2] // self.stride

    def embed(self, images):
        """X⁰: the stem (if any), patch and position embeddings, class token, `ln_pre`."""
        return self.vit.embed(self.stem(images) if self.stem is not None else images)

    def project(self, tokens):
        """`ln_post(tokens) @ proj` for raw residual-stream tokens `(..., hidden_dim)`."""
        return ops.matmul(self.vit.norm(tokens), ops.cast(self.proj, self.compute_dtype))

    def call(self, images, hook=None, num_blocks=None, return_all_tokens=False, return_attention=False,
             average_attention_heads=True):
        if self.stem is not None:
            images = self.stem(images)
        outputs = dict(self.vit(images, hook=hook, num_blocks=num_blocks, return_all_tokens=return_all_tokens,
                                return_attention=return_attention))
        if return_attention and average_attention_heads:
            outputs["attention"] = [ops.mean(probs, axis=1) for probs in outputs["attention"]]
        if num_blocks is None or int(num_blocks) == self.num_layers:
            projection = ops.cast(self.proj, self.compute_dtype)
            outputs["projected_tokens"] = ops.matmul(outputs["tokens"], projection)  # tokens are ln_post'ed
            outputs["image_embedding"] = outputs["projected_tokens"][:, 0]
        return outputs

    def compute_output_spec(self, images, hook=None, num_blocks=None, return_all_tokens=False,
                            return_attention=False, average_attention_heads=True):
        if self.stem is not None:
            images = keras.KerasTensor(self.stem.compute_output_shape(images.shape), dtype=images.dtype)
        outputs = dict(self.vit.compute_output_spec(images, num_blocks=num_blocks,
                                                    return_all_tokens=return_all_tokens,
                                                    return_attention=return_attention))
        if return_attention and average_attention_heads:
            outputs["attention"] = [keras.KerasTensor((s.shape[0],) + s.shape[2:], dtype=s.dtype)
                                    for s in outputs["attention"]]
        if num_blocks is None or int(num_blocks) == self.num_layers:
            batch, length = outputs["tokens"].shape[:2]
            outputs["projected_tokens"] = keras.KerasTensor((batch, length, self.output_dim), dtype=self.compute_dtype)
            outputs["image_embedding"] = keras.KerasTensor((batch, self.output_dim), dtype=self.compute_dtype)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, hidden_dim=self.hidden_dim, num_layers=self.num_layers,
                      num_heads=self.num_heads, mlp_dim=self.mlp_dim, output_dim=self.output_dim,
                      pos_embed_grid=self.pos_embed_grid, pos_embed_mode=self.pos_embed_mode,
                      layer_norm_epsilon=self.layer_norm_epsilon, activation=self.activation, stem=self.stem_config)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CLIPTextEncoder(keras.Model):
    """CLIP's text tower: token + positional embedding, causal pre-LN QuickGELU blocks,
    `ln_final`, pooling at the end-of-text token (the argmax of the ids, since EOT has the
    largest id), then `text_projection`.

    Args:
        vocabulary_size: int, 49408 for OpenAI CLIP.
        context_length: int, 77.
        hidden_dim: int, 512 for ViT-B/16's text tower.
        num_layers: int.
        num_heads: int.
        mlp_dim: int.
        output_dim: int, joint embedding width.
        layer_norm_epsilon: float, 1e-5.
        final_layer_norm_epsilon: float or None (= `layer_norm_epsilon`); keras-hub's CLIP
            uses 1e-6 for `ln_final`, so its presets load with that value.
        activation: "quick_gelu" or "gelu".
        **kwargs: standard model arguments.

    Call arguments:
        token_ids: int `(batch, length)`, length <= `context_length`, from `CLIPTokenizer`.

    Returns:
        dict with `"text_embedding"` `(batch, output_dim)` (not normalised) and `"tokens"`
        `(batch, length, hidden_dim)` after `ln_final`.

    Example:
    >>> tower = CLIPTextEncoder(vocabulary_size=100, context_length=8, hidden_dim=32,
    ...                         num_layers=2, num_heads=4, mlp_dim=64, output_dim=16)
    >>> tuple(tower(np.array([[98, 5, 7, 99, 0, 0, 0, 0]]))["text_embedding"].shape)
    (1, 16)
    """

    def __init__(self, vocabulary_size=49408, context_length=77, hidden_dim=512, num_layers=12, num_heads=8,
                 mlp_dim=2048, output_dim=512, layer_norm_epsilon=1e-5, final_layer_norm_epsilon=None,
                 activation="quick_gelu", **kwargs):
        kwargs.setdefault("name", "clip_text_encoder")
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.context_length = int(context_length)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.output_dim = int(output_dim)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.final_layer_norm_epsilon = (None if final_layer_norm_epsilon is None
                                         else float(final_layer_norm_epsilon))
        self.activation = activation
        self.token_embedding = keras.layers.Embedding(self.vocabulary_size, self.hidden_dim, name="token_embedding",
                                                      dtype=self.dtype_policy)
        self.blocks = [
            TransformerBlock(self.hidden_dim, self.num_heads, self.mlp_dim, activation=activation,
                             layer_norm_epsilon=self.layer_norm_epsilon, block_index=index, name=f"block_{index}",
                             dtype=self.dtype_policy)
            for index in range(self.num_layers)
        ]
        epsilon = self.layer_norm_epsilon if self.final_layer_norm_epsilon is None else self.final_layer_norm_epsilon
        self.ln_final = keras.layers.LayerNormalization(epsilon=epsilon, name="ln_final", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        if self.built:
            return
        self.token_embedding.build((None, None))
        self.positional_embedding = self.add_weight(
            shape=(self.context_length, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.01), name="positional_embedding")
        for block in self.blocks:
            block.build((None, None, self.hidden_dim))
        self.ln_final.build((None, None, self.hidden_dim))
        self.text_projection = self.add_weight(shape=(self.hidden_dim, self.output_dim),
                                               initializer="glorot_uniform", name="text_projection")
        self.built = True

    def call(self, token_ids):
        token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
        length = token_ids.shape[1] if token_ids.shape[1] is not None else ops.shape(token_ids)[1]
        if isinstance(length, int) and length > self.context_length:
            raise ValueError(f"{self.name}: {length} tokens is more than the context length {self.context_length}.")
        tokens = self.token_embedding(token_ids)
        tokens = tokens + ops.cast(self.positional_embedding[:length], tokens.dtype)[None]
        # additive causal mask: each position sees itself and the positions before it
        positions = ops.arange(length)
        mask = ops.where(positions[None, :] > positions[:, None], -1e9, 0.0)
        mask = ops.cast(mask, "float32")[None, None]
        for index, block in enumerate(self.blocks):
            tokens, _ = block(tokens, attention_mask=mask, block_index=index)
        tokens = self.ln_final(tokens)
        end = ops.argmax(token_ids, axis=-1)  # EOT (49407) is the largest id in CLIP's vocabulary
        pooled = ops.take_along_axis(tokens, ops.reshape(end, (-1, 1, 1)), axis=1)[:, 0]
        embedding = ops.matmul(pooled, ops.cast(self.text_projection, tokens.dtype))
        return {"text_embedding": embedding, "tokens": tokens}

    def compute_output_spec(self, token_ids):
        batch, length = token_ids.shape[0], token_ids.shape[1]
        return {"text_embedding": keras.KerasTensor((batch, self.output_dim), dtype=self.compute_dtype),
                "tokens": keras.KerasTensor((batch, length, self.hidden_dim), dtype=self.compute_dtype)}

    def get_config(self):
        config = super().get_config()
        config.update(vocabulary_size=self.vocabulary_size, context_length=self.context_length,
                      hidden_dim=self.hidden_dim, num_layers=self.num_layers, num_heads=self.num_heads,
                      mlp_dim=self.mlp_dim, output_dim=self.output_dim, layer_norm_epsilon=self.layer_norm_epsilon,
                      final_layer_norm_epsilon=self.final_layer_norm_epsilon, activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CLIP(keras.Model):
    """CLIP: an image tower, a text tower and `logit_scale` (stored as a log, exp = 100 for ViT-B/16).

    Args:
        image: dict of `CLIPImageEncoder` kwargs.
        text: dict of `CLIPTextEncoder` kwargs.
        **kwargs: standard model arguments.

    Call arguments:
        inputs: dict with `"images"` and `"token_ids"`.

    Returns:
        dict with `"logits_per_image"` `(images, texts)` = exp(logit_scale)·cosine,
        `"image_embedding"` and `"text_embedding"` (not normalised).

    Example:
    >>> model = CLIP(image=dict(patch_size=8, hidden_dim=32, num_layers=1, num_heads=4, mlp_dim=64,
    ...                         output_dim=16, pos_embed_grid=4),
    ...              text=dict(vocabulary_size=100, context_length=8, hidden_dim=32, num_layers=1,
    ...                        num_heads=4, mlp_dim=64, output_dim=16))
    >>> features = model.encode_text(np.array([[98, 5, 99, 0, 0, 0, 0, 0]]))
    """

    def __init__(self, image=None, text=None, **kwargs):
        kwargs.setdefault("name", "clip")
        super().__init__(**kwargs)
        self.image_config = dict(image or {})
        self.text_config = dict(text or {})
        self.image_encoder = CLIPImageEncoder(**self.image_config, name="image_encoder", dtype=self.dtype_policy)
        self.text_encoder = CLIPTextEncoder(**self.text_config, name="text_encoder", dtype=self.dtype_policy)
        if self.image_encoder.output_dim != self.text_encoder.output_dim:
            raise ValueError(f"image output_dim {self.image_encoder.output_dim} != text output_dim "
                             f"{self.text_encoder.output_dim}.")

    def build(self, input_shape=None):
        if self.built:
            return
        self.image_encoder.build((None, None, None, 3))
        self.text_encoder.build(None)
        self.logit_scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(4.605170185988092),
                                           name="logit_scale")
        self.built = True

    def encode_image(self, images, **kwargs):
        """The image tower's outputs (see `CLIPImageEncoder`)."""
        return self.image_encoder(images, **kwargs)

    def encode_text(self, token_ids):
        """`(batch, output_dim)` text embeddings (not normalised)."""
        return self.text_encoder(token_ids)["text_embedding"]

    def call(self, inputs):
        image = self.image_encoder(inputs["images"])["image_embedding"]
        text = self.text_encoder(inputs["token_ids"])["text_embedding"]
        logits = ops.exp(ops.cast(self.logit_scale, image.dtype)) * ops.matmul(_normalize(image),
                                                                                ops.transpose(_normalize(text)))
        return {"logits_per_image": logits, "image_embedding": image, "text_embedding": text}

    def compute_output_spec(self, inputs):
        images, token_ids = inputs["images"], inputs["token_ids"]
        dim, dtype = self.image_encoder.output_dim, self.compute_dtype
        return {"logits_per_image": keras.KerasTensor((images.shape[0], token_ids.shape[0]), dtype=dtype),
                "image_embedding": keras.KerasTensor((images.shape[0], dim), dtype=dtype),
                "text_embedding": keras.KerasTensor((token_ids.shape[0], dim), dtype=dtype)}

    def get_config(self):
        config = super().get_config()
        config.update(image=self.image_config, text=self.text_config)
        return config
