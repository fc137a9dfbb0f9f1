"""TokenDense against plain NumPy: outputs, the kernel's and the input's gradients, and its saved
form, on every backend (on JAX it takes the flattened route, elsewhere Dense's own)."""

import keras
import numpy as np
from keras import ops

from wsss_keras.backbones.token_dense import TokenDense
from wsss_keras.ops.grad import value_and_gradient


def make_layer(rng, activation=None):
    layer = TokenDense(5, activation=activation, name="fc")
    layer.build((None, None, None, 3))
    kernel = rng.normal(size=(3, 5)).astype("float32")
    bias = rng.normal(size=(5,)).astype("float32")
    layer.set_weights([kernel, bias])
    return layer, kernel, bias


def test_outputs_match_numpy_on_rank_4_and_rank_2():
    rng = np.random.default_rng(0)
    layer, kernel, bias = make_layer(rng, activation="relu")
    for shape in [(2, 4, 6, 3), (7, 3)]:
        x = rng.normal(size=shape).astype("float32")
        expected = np.maximum(x @ kernel + bias, 0.0)
        np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_numpy():
    rng = np.random.default_rng(1)
    layer, kernel, bias = make_layer(rng)
    x = rng.normal(size=(2, 9, 3)).astype("float32")
    weight = rng.normal(size=(2, 9, 5)).astype("float32")  # d(loss)/d(output)

    def loss_of_kernel(k):
        outputs, _ = layer.stateless_call([k, ops.convert_to_tensor(bias)], [], ops.convert_to_tensor(x))
        return ops.sum(outputs * ops.convert_to_tensor(weight)), ()

    (value, _), kernel_gradient = value_and_gradient(loss_of_kernel, kernel)
    assert abs(float(ops.convert_to_numpy(value)) - np.sum((x @ kernel + bias) * weight)) < 1e-3
    expected = np.einsum("bnd,bnu->du", x, weight)
    np.testing.assert_allclose(ops.convert_to_numpy(kernel_gradient), expected, rtol=1e-4, atol=1e-4)

    (_, _), input_gradient = value_and_gradient(lambda t: (ops.sum(layer(t) * ops.convert_to_tensor(weight)), ()), x)
    np.testing.assert_allclose(ops.convert_to_numpy(input_gradient), weight @ kernel.T, rtol=1e-4, atol=1e-4)


def test_saved_form_round_trips():
    layer, _, _ = make_layer(np.random.default_rng(2), activation="relu")
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "wsss_keras>TokenDense"
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, TokenDense) and restored.units == 5
    assert restored.get_config()["activation"] == "relu"
