"""`TokenDense`: `keras.layers.Dense` for token tensors, as one 2-D matrix product on JAX.

Why it exists: for an input of rank 3 or more, Dense computes `matmul(tokens, kernel)`, and
on JAX the kernel's gradient is then a dot that contracts two axes (batch and tokens). XLA's
CPU compiler lays that out through transposed copies of the output gradient and fuses into
each copy the whole chain of residual-stream gradient additions from every later block, so
the backward pass grows with depth squared. Measured on ViT-B/16 (224, batch 4, AdamW, 2
cores; bench/bench_train_step.py): the training step fell from 3.35 s to 2.18 s when its
Dense layers ran on the flattened `(batch * tokens, features)` matrix; the forward pass and
TensorFlow / PyTorch were unchanged, so only JAX takes the flattened route, and the graph
exported from TensorFlow stays as Dense writes it.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="wsss_keras")
class TokenDense(keras.layers.Dense):
    """Dense over the last axis of `(..., features)`, with Dense's weights, config and numbers.

    On JAX an input of rank 3 or more is flattened to `(-1, features)`, multiplied and
    reshaped back (see the module docstring for why); elsewhere it is `keras.layers.Dense`.
    Weight files and converters see the same `kernel` and `bias`.

    Args:
        units: int, output width.
        **kwargs: every `keras.layers.Dense` argument.

    Example:
    >>> layer = TokenDense(8, name="fc1")
    >>> tuple(layer(keras.ops.ones((2, 5, 4))).shape)
    (2, 5, 8)
    """

    def call(self, inputs, training=None):
        if keras.config.backend() != "jax" or len(inputs.shape) <= 2:
            return super().call(inputs, training=training)
        leading = tuple(ops.shape(inputs)[:-1])
        outputs = super().call(ops.reshape(inputs, (-1, inputs.shape[-1])), training=training)
        return ops.reshape(outputs, leading + (self.units,))
