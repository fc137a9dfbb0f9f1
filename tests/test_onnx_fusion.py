"""The ONNX rewrites for onnxruntime's fused kernels, on the graph tf2onnx really writes for a
small transformer block (Keras LayerNormalization and the project's exact GELU on (B, N, C)
tokens): the
chains are gone, onnxruntime fuses what it should, and the outputs are Keras's."""

import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is in the project's dev dependencies: pip install -e '.[dev]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the project's dev dependencies")


def _block(channels=16):
    import keras

    # The GELU the project's ViTs use (Keras's own "gelu" exports as Erfc on TensorFlow).
    from wsss_keras.backbones.transformer import gelu_exact

    tokens = keras.Input((None, channels), name="tokens")
    x = keras.layers.LayerNormalization(epsilon=1e-6)(tokens)
    x = keras.layers.Dense(4 * channels, activation=gelu_exact)(x)
    x = tokens + keras.layers.Dense(channels)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    # Left as initialised (scale 1, bias 0): tf2onnx folds both away, as in a random-weight model.
    x = keras.layers.LayerNormalization(name="fresh")(keras.layers.Dense(channels)(x))
    model = keras.Model(tokens, x)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.LayerNormalization) and layer.name != "fresh":
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, layer.beta.shape).astype("float32"))
    return model


def _ops(model):
    return collections.Counter(f"{node.domain}:{node.op_type}" if node.domain else node.op_type
                               for node in model.graph.node)


def _optimised_ops(path, tmp_path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(options.optimized_model_filepath))


def test_layer_norm_and_gelu_chains_become_fused_ops(tmp_path):
    import keras

    from wsss_keras.export.onnx_fusion import fuse_onnx_file

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the ONNX exporter under test is tf2onnx's (TensorFlow backend)")
    model = _block()
    path = tmp_path / "block.onnx"
    model.export(str(path), format="onnx", input_signature=[keras.InputSpec(shape=(None, None, 16), dtype="float32")],
                 opset_version=17, verbose=False)
    before = _ops(onnx.load(path))
    assert before["GlobalAveragePool"] == 6 and before["Erf"] == 1 and "LayerNormalization" not in before
    assert "com.microsoft:Gelu" not in _optimised_ops(path, tmp_path)  # why the rewrite exists

    counts = fuse_onnx_file(str(path))

    assert counts == {"layer_norm": 3, "gelu": 1}
    after = onnx.load(path)
    onnx.checker.check_model(after, full_check=True)
    ops = _ops(after)
    assert ops["LayerNormalization"] == 3 and "GlobalAveragePool" not in ops and "Reciprocal" not in ops
    assert _optimised_ops(path, tmp_path)["com.microsoft:Gelu"] == 1
    tokens = np.random.default_rng(1).normal(0, 2, (3, 7, 16)).astype("float32")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: tokens})
    # Keras's own forward pass, not the ONNX one, is the reference.
    np.testing.assert_allclose(output, keras.ops.convert_to_numpy(model(tokens)), atol=2e-5)


def test_attention_becomes_onnxruntime_multi_head_attention_on_request(tmp_path):
    """The project's ViT blocks through the real tf2onnx: with `attention`, each block's
    attention is one com.microsoft.MultiHeadAttention and the outputs are still Keras's."""
    import keras

    from wsss_keras.backbones.vit import ViTEncoder
    from wsss_keras.export.onnx_fusion import fuse_onnx_file

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the ONNX exporter under test is tf2onnx's (TensorFlow backend)")
    keras.utils.set_random_seed(0)
    encoder = ViTEncoder(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, pos_embed_grid=4)
    images = keras.Input((32, 32, 3))
    model = keras.Model(images, encoder(images)["tokens"])
    path = tmp_path / "vit.onnx"
    model.export(str(path), format="onnx", input_signature=[keras.InputSpec(shape=(None, 32, 32, 3), dtype="float32")],
                 opset_version=17, verbose=False)
    before = _ops(onnx.load(path))
    assert before["Softmax"] == 2
    standard = tmp_path / "standard.onnx"
    standard.write_bytes(path.read_bytes())
    assert "attention" not in fuse_onnx_file(str(standard))  # not unless asked: the file stays standard ONNX

    counts = fuse_onnx_file(str(path), attention=True)

    assert counts["attention"] == 2
    ops = _ops(onnx.load(path))
    assert ops["com.microsoft:MultiHeadAttention"] == 2 and "Softmax" not in ops
    assert before["Transpose"] - ops["Transpose"] == 2 * 4  # q, k, v and the merge, per block
    pixels = np.random.default_rng(3).normal(0, 1, (2, 32, 32, 3)).astype("float32")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: pixels})
    np.testing.assert_allclose(output, keras.ops.convert_to_numpy(model(pixels)), atol=2e-5)


def test_dynamic_int8_quantises_the_dense_layers_only(tmp_path):
    """--int8-scope weights on ONNX: int8 dense weights, activations quantised at run time."""
    import keras

    from wsss_keras.export.onnx_int8 import onnx_int8_files

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the ONNX exporter under test is tf2onnx's (TensorFlow backend)")
    model = _block()
    float_path, int8_path = tmp_path / "block.onnx", tmp_path / "int8.onnx"
    model.export(str(float_path), format="onnx", input_signature=[keras.InputSpec(shape=(None, None, 16), dtype="float32")],
                 opset_version=17, verbose=False)
    ((path, notes),) = list(onnx_int8_files(str(float_path), str(int8_path), calibration=None, scope="weights"))
    assert notes["onnx_quantisation"] == "dynamic"
    quantised = onnx.load(path)
    int8_weights = [init for init in quantised.graph.initializer
                    if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2]
    assert len(int8_weights) == 3  # the block's three Dense kernels (beside their zero points)
    assert _ops(quantised)["DynamicQuantizeLinear"] >= 1
    tokens = np.random.default_rng(2).normal(0, 1, (2, 5, 16)).astype("float32")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: tokens})
    reference = keras.ops.convert_to_numpy(model(tokens))
    # int8 rounding: close to Keras, and not equal to it (something was quantised).
    assert 0 < np.max(np.abs(output - reference)) < 0.1 * np.max(np.abs(reference))


def test_a_chain_read_elsewhere_is_left_alone(tmp_path):
    """A LayerNorm whose intermediate value has a second reader cannot be replaced."""
    from onnx import TensorProto, helper, numpy_helper

    from wsss_keras.export.onnx_fusion import fuse_for_onnxruntime

    constant = lambda name, value: numpy_helper.from_array(np.asarray(value, np.float32), name)
    value = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    def tf2onnx_layer_norm(outputs):
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["mean"]), helper.make_node("Neg", ["mean"], ["neg"]),
                 helper.make_node("Sub", ["x", "mean"], ["d"]), helper.make_node("Mul", ["d", "d"], ["sq"]),
                 helper.make_node("GlobalAveragePool", ["sq"], ["var"]), helper.make_node("Add", ["var", "eps"], ["a"]),
                 helper.make_node("Sqrt", ["a"], ["s"]), helper.make_node("Reciprocal", ["s"], ["r"]),
                 helper.make_node("Mul", ["r", "gamma"], ["m"]), helper.make_node("Mul", ["x", "m"], ["y1"]),
                 helper.make_node("Mul", ["neg", "m"], ["y2"]), helper.make_node("Add", ["y2", "beta"], ["y3"]),
                 helper.make_node("Add", ["y1", "y3"], ["y"])]
        graph = helper.make_graph(nodes, "ln", [value("x", [1, 4, 8])], outputs,
                                  [constant("eps", 1e-6), constant("gamma", np.ones((1, 1, 8))),
                                   constant("beta", np.zeros((1, 1, 8)))])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    model = tf2onnx_layer_norm([value("y", [1, 4, 8])])
    assert fuse_for_onnxruntime(model)["layer_norm"] == 1
    model = tf2onnx_layer_norm([value("y", [1, 4, 8]), value("var", [1, 4, 1])])
    assert fuse_for_onnxruntime(model)["layer_norm"] == 0
    assert _ops(model)["GlobalAveragePool"] == 2
