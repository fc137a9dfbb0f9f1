"""Gradients of a scalar with respect to a tensor, on every backend.

The one place where the project dispatches on the Keras backend for autodiff (TensorFlow's
GradientTape, `jax.value_and_grad`, `torch.autograd.grad`); everything around it stays in
`keras.ops`. Used where a method needs a gradient outside training: AdvCAM's input gradients
(anti-adversarial climbing) and Grad-CAM on an intermediate tensor (call the rest of the
network from that tensor inside `function`).
"""

import keras


def value_and_gradient(function, inputs):
    """`function(inputs)` and the gradient of its scalar with respect to `inputs`.

    Args:
        function: callable tensor -> (scalar, aux); `aux` is any structure of tensors returned
            alongside (not differentiated).
        inputs: the tensor to differentiate against.

    Returns:
        ((scalar, aux), gradient), the gradient shaped like `inputs`; the outputs carry no
        autodiff history.

    Example:
    >>> import numpy as np
    >>> from keras import ops
    >>> (value, aux), grad = value_and_gradient(lambda x: (ops.sum(x * x), x + 1), np.array([1.0, 2.0], "float32"))
    >>> float(value), ops.convert_to_numpy(grad).tolist()
    (5.0, [2.0, 4.0])
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        inputs = tf.convert_to_tensor(inputs)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value, aux = function(inputs)
        return (value, aux), tape.gradient(value, inputs)
    if backend == "jax":
        import jax

        # One compiled function per call: op-by-op eager autodiff costs far more than compiling.
        (value, aux), gradient = jax.jit(jax.value_and_grad(function, has_aux=True))(jax.numpy.asarray(inputs))
        return (value, aux), gradient
    if backend == "torch":
        import torch

        from keras import ops

        inputs = ops.convert_to_tensor(inputs).detach().requires_grad_(True)
        with torch.enable_grad():
            value, aux = function(inputs)
            (gradient,) = torch.autograd.grad(value, inputs)
        detach = lambda tensor: tensor.detach() if isinstance(tensor, torch.Tensor) else tensor  # noqa: E731
        return (detach(value), keras.tree.map_structure(detach, aux)), gradient
    raise NotImplementedError(f"value_and_gradient has no implementation for the {backend!r} backend.")
