"""Pre-LN transformer pieces shared by the ViT, DeiT, DINO and CLIP backbones.

Everything here is written in `keras.ops` so it runs on TensorFlow, JAX and PyTorch and
exports to ONNX/LiteRT from the TensorFlow backend.

Activations
-----------
`gelu_exact` is the erf GELU written as `0.5·x·(1 + erf(x/√2))`. Keras's built-in `"gelu"`
gives the same numbers but exports to ONNX as an `Erfc` node that onnxruntime rejects, so the
backbones never use it. `quick_gelu` is CLIP's `x·sigmoid(1.702·x)`.

Attention hooks
---------------
Methods that change what happens inside a block (DOEI re-embeds attention, ToCo and SSR read
the attention maps) do it through a hook object passed at call time. A hook is any object
with any of these methods; `AttentionHook` is a base class whose methods are no-ops:

- `attention_probs(probs, block_index, tokens) -> probs`: called with the post-softmax
  attention probabilities, shape `(batch, heads, tokens, tokens)`, before they weight the
  values. Return them unchanged to only read them, or return a replacement (same shape) to
  change the attention.
- `attention_output(output, block_index, tokens) -> output`: called with the attention
  branch after the output projection and before the residual add, shape
  `(batch, tokens, hidden_dim)`. Return it unchanged or a replacement.

- `block_output(tokens, block_index, block_input) -> tokens` (optional): called by
  `TransformerBlock.call` with the block's output after the MLP residual, shape
  `(batch, tokens, hidden_dim)`; `block_input` is the block's input. Return it unchanged or a
  replacement (DOEI's `inject_at="block_output"` adds its re-embedding here).

`tokens` is the block's input (the residual stream before `norm1`), `block_index` the
0-based position of the block in its encoder, so one hook object can serve every block.
A hook may leave out any of the methods; a missing one is a no-op.
Hooks are plain Python objects: they are not layers, are not tracked and are not saved.

Example:

```python
class KeepAttention(AttentionHook):
    def __init__(self):
        self.maps = {}

    def attention_probs(self, probs, block_index, tokens):
        self.maps[block_index] = probs
        return probs

block = TransformerBlock(hidden_dim=32, num_heads=4, mlp_dim=64)
hook = KeepAttention()
tokens, probs = block(keras.random.normal((2, 5, 32)), hook=hook, block_index=0)
```
"""

import math

import keras
from keras import ops

from wsss_keras.backbones.token_dense import TokenDense

_PACKAGE = "wsss_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
def gelu_exact(x):
    """Exact (erf) GELU, `0.5·x·(1 + erf(x/√2))`, written so that it exports to ONNX.

    Args:
        x: a tensor.

    Example:
    >>> float(gelu_exact(keras.ops.convert_to_tensor(1.0)))  # doctest: +ELLIPSIS
    0.841...
    """
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


@keras.saving.register_keras_serializable(package=_PACKAGE)
def quick_gelu(x):
    """CLIP's QuickGELU, `x·sigmoid(1.702·x)`.

    Args:
        x: a tensor.

    Example:
    >>> y = quick_gelu(keras.ops.ones((2,)))
    """
    return x * ops.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": gelu_exact, "quick_gelu": quick_gelu}


def get_activation(name):
    """The activation function for a config name ("gelu" = exact erf GELU, or "quick_gelu")."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown transformer activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


class AttentionHook:
    """Base class for attention hooks; every method returns its input unchanged.

    Subclass it and override any of `attention_probs`, `attention_output` and
    `block_output` (see the module docstring for the contract). Example:

    ```python
    class ZeroClassAttention(AttentionHook):
        def attention_probs(self, probs, block_index, tokens):
            return probs  # read or replace the (batch, heads, N, N) maps here
    ```
    """

    def attention_probs(self, probs, block_index, tokens):
        return probs

    def attention_output(self, output, block_index, tokens):
        return output

    def block_output(self, tokens, block_index, block_input):
        return tokens


def _tokens_and_probs_spec(tokens, hidden_dim, num_heads, dtype):
    """Output spec of attention and blocks: tokens (B, N, D) and probabilities (B, H, N, N)."""
    batch, length = tokens.shape[0], tokens.shape[1]
    return (
        keras.KerasTensor((batch, length, hidden_dim), dtype=dtype),
        keras.KerasTensor((batch, num_heads, length, length), dtype=dtype),
    )


def _call_hook(hook, method, value, block_index, tokens):
    function = getattr(hook, method, None) if hook is not None else None
    return value if function is None else function(value, block_index, tokens)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention that returns its probabilities and accepts a hook.

    The projections follow the PyTorch references: either one fused `qkv` Dense
    (hidden → 3·hidden, output laid out as [q; k; v], as in timm, DINO and OpenAI CLIP's
    `in_proj`) or three `query`/`key`/`value` Dense layers (Hugging Face style), then an
    output projection `proj`. Scores are scaled by `head_dim ** -0.5`; the softmax runs in
    float32 so that mixed precision does not change the maps.

    Args:
        hidden_dim: int, width of the tokens.
        num_heads: int, number of heads; must divide `hidden_dim`.
        fused_qkv: bool, one `qkv` Dense (True) or separate `query`/`key`/`value` (False).
        use_qkv_bias: bool, whether the q/k/v projections have a bias.
        **kwargs: standard layer arguments (`name`, `dtype`).

    Call arguments:
        tokens: `(batch, N, hidden_dim)`.
        attention_mask: optional additive mask broadcastable to `(batch, heads, N, N)`
            (0 where allowed, a large negative number where masked).
        hook: optional attention hook (see the module docstring).
        block_index: int passed to the hook.

    Returns:
        `(output, probs)`: `(batch, N, hidden_dim)` after the output projection (and the
        hook), and the `(batch, heads, N, N)` probabilities actually used.

    Example:
    >>> attention = MultiHeadSelfAttention(hidden_dim=32, num_heads=4)
    >>> output, probs = attention(keras.random.normal((2, 5, 32)))
    >>> tuple(probs.shape)
    (2, 4, 5, 5)
    """

    def __init__(self, hidden_dim, num_heads, fused_qkv=True, use_qkv_bias=True, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}.")
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.hidden_dim // self.num_heads
        self.fused_qkv = bool(fused_qkv)
        self.use_qkv_bias = bool(use_qkv_bias)
        dense = dict(use_bias=self.use_qkv_bias, dtype=self.dtype_policy)
        if self.fused_qkv:
            self.qkv = TokenDense(3 * self.hidden_dim, name="qkv", **dense)
        else:
            self.query = TokenDense(self.hidden_dim, name="query", **dense)
            self.key = TokenDense(self.hidden_dim, name="key", **dense)
            self.value = TokenDense(self.hidden_dim, name="value", **dense)
        self.proj = TokenDense(self.hidden_dim, name="proj", dtype=self.dtype_policy)

    def build(self, input_shape):
        shape = (None, None, self.hidden_dim)
        if self.fused_qkv:
            self.qkv.build(shape)
        else:
            for layer in (self.query, self.key, self.value):
                layer.build(shape)
        self.proj.build(shape)
        self.built = True

    def _heads(self, x, batch, length):
        # (B, N, D) -> (B, H, N, d)
        x = ops.reshape(x, (batch, length, self.num_heads, self.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, tokens, attention_mask=None, hook=None, block_index=None):
        shape = ops.shape(tokens)
        batch, length = shape[0], shape[1]
        if self.fused_qkv:
            qkv = self.qkv(tokens)
            query = qkv[..., : self.hidden_dim]
            key = qkv[..., self.hidden_dim: 2 * self.hidden_dim]
            value = qkv[..., 2 * self.hidden_dim:]
        else:
            query, key, value = self.query(tokens), self.key(tokens), self.value(tokens)
        query = self._heads(query, batch, length)
        key = self._heads(key, batch, length)
        value = self._heads(value, batch, length)
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) * (self.head_dim ** -0.5)
        scores = ops.cast(scores, "float32")
        if attention_mask is not None:
            scores = scores + ops.cast(attention_mask, "float32")
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        probs = _call_hook(hook, "attention_probs", probs, block_index, tokens)
        context = ops.matmul(probs, value)  # (B, H, N, d)
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (batch, length, self.hidden_dim))
        output = self.proj(context)
        return output, probs

    def compute_output_spec(self, tokens, attention_mask=None, hook=None, block_index=None):
        return _tokens_and_probs_spec(tokens, self.hidden_dim, self.num_heads, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            fused_qkv=self.fused_qkv,
            use_qkv_bias=self.use_qkv_bias,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerMLP(keras.layers.Layer):
    """The block's feed-forward branch: `fc2(activation(fc1(x)))`.

    Args:
        hidden_dim: int, input and output width.
        mlp_dim: int, inner width.
        activation: "gelu" (exact erf GELU) or "quick_gelu".
        **kwargs: standard layer arguments.

    Example:
    >>> mlp = TransformerMLP(hidden_dim=32, mlp_dim=64)
    >>> tuple(mlp(keras.ops.ones((1, 3, 32))).shape)
    (1, 3, 32)
    """

    def __init__(self, hidden_dim, mlp_dim, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.mlp_dim = int(mlp_dim)
        self.activation = activation
        self._activation_fn = get_activation(activation)
        self.fc1 = TokenDense(self.mlp_dim, name="fc1", dtype=self.dtype_policy)
        self.fc2 = TokenDense(self.hidden_dim, name="fc2", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.fc1.build((None, None, self.hidden_dim))
        self.fc2.build((None, None, self.mlp_dim))
        self.built = True

    def call(self, tokens):
        return self.fc2(self._activation_fn(self.fc1(tokens)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, mlp_dim=self.mlp_dim, activation=self.activation)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-LN transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.

    The pieces are public so methods can run them separately (SSR's Grad-CAM differentiates
    with respect to `norm1`'s output and runs only the attention branch from there):
    `norm1`, `attend(normed_tokens, ...)`, `norm2`, `mlp(tokens)`.

    Args:
        hidden_dim: int, token width.
        num_heads: int, attention heads.
        mlp_dim: int, inner width of the MLP.
        activation: "gelu" (exact erf GELU; ViT, DeiT, DINO) or "quick_gelu" (CLIP).
        layer_norm_epsilon: float; 1e-6 for timm/DINO ViTs, 1e-5 for CLIP.
        fused_qkv: bool, one fused `qkv` projection or separate ones.
        use_qkv_bias: bool, whether q/k/v have biases.
        block_index: int or None, the default index passed to hooks (an encoder passes
            its own at call time).
        **kwargs: standard layer arguments.

    Call arguments:
        tokens: `(batch, N, hidden_dim)`.
        attention_mask: optional additive mask broadcastable to `(batch, heads, N, N)`.
        hook: optional attention hook (see the module docstring).
        block_index: int, overrides the configured index for the hook.

    Returns:
        `(tokens, probs)`: the block's output `(batch, N, hidden_dim)` and the attention
        probabilities `(batch, heads, N, N)`.

    Example:
    >>> block = TransformerBlock(hidden_dim=32, num_heads=4, mlp_dim=64)
    >>> tokens, probs = block(keras.random.normal((2, 5, 32)))
    >>> normed = block.norm1(tokens)
    >>> branch, probs = block.attend(normed)
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_dim,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        fused_qkv=True,
        use_qkv_bias=True,
        block_index=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.activation = activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.fused_qkv = bool(fused_qkv)
        self.use_qkv_bias = bool(use_qkv_bias)
        self.block_index = block_index
        get_activation(activation)  # fail early on a bad name
        self.norm1 = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="norm1", dtype=self.dtype_policy
        )
        self.attn = MultiHeadSelfAttention(
            self.hidden_dim, self.num_heads, fused_qkv=self.fused_qkv, use_qkv_bias=self.use_qkv_bias,
            name="attn", dtype=self.dtype_policy,
        )
        self.norm2 = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="norm2", dtype=self.dtype_policy
        )
        self.mlp = TransformerMLP(self.hidden_dim, self.mlp_dim, activation, name="mlp", dtype=self.dtype_policy)

    def build(self, input_shape):
        shape = (None, None, self.hidden_dim)
        self.norm1.build(shape)
        self.attn.build(shape)
        self.norm2.build(shape)
        self.mlp.build(shape)
        self.built = True

    def attend(self, normed_tokens, attention_mask=None, hook=None, block_index=None, tokens=None):
        """The attention branch from `norm1`'s output: returns `(attention_output, probs)`.

        `attention_output` is after the output projection and the hook's
        `attention_output`, before the residual add. `tokens` (the block input) is only
        handed to the hook; it defaults to `normed_tokens`.
        """
        index = self.block_index if block_index is None else block_index
        context = normed_tokens if tokens is None else tokens
        output, probs = self.attn(normed_tokens, attention_mask=attention_mask, hook=hook, block_index=index)
        output = _call_hook(hook, "attention_output", output, index, context)
        return output, probs

    def call(self, tokens, attention_mask=None, hook=None, block_index=None):
        block_input = tokens
        branch, probs = self.attend(
            self.norm1(tokens), attention_mask=attention_mask, hook=hook, block_index=block_index, tokens=tokens
        )
        tokens = tokens + branch
        tokens = tokens + self.mlp(self.norm2(tokens))
        index = self.block_index if block_index is None else block_index
        tokens = _call_hook(hook, "block_output", tokens, index, block_input)
        return tokens, probs

    def compute_output_spec(self, tokens, attention_mask=None, hook=None, block_index=None):
        return _tokens_and_probs_spec(tokens, self.hidden_dim, self.num_heads, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            fused_qkv=self.fused_qkv,
            use_qkv_bias=self.use_qkv_bias,
            block_index=self.block_index,
        )
        return config
