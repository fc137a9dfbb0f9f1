"""Rewrites of the ONNX graph TensorFlow's converter (tf2onnx) writes, so that onnxruntime's
fused CPU kernels apply to it. Standard ONNX in, standard ONNX out: every rewrite replaces a
chain of nodes by ops of the graph's own opset that compute the same function.

- LayerNorm. tf2onnx writes Keras's LayerNormalization over the last axis of a (B, N, C)
  tensor as GlobalAveragePool, Sub, Mul, GlobalAveragePool, Add, Sqrt, Reciprocal and four
  Mul / Add nodes, which onnxruntime's LayerNorm fusion does not recognise (it looks for
  ReduceMean); here that chain becomes one `LayerNormalization` (ONNX opset 17).
- GELU. The project's exact GELU (`gelu_exact`) is `0.5 x (1 + erf(x * 0.7071))`; onnxruntime fuses the chain
  into its Gelu kernel only when the erf's argument is `x / 1.4142` (measured with
  onnxruntime 1.32: the multiplication form stays five nodes), so the multiplication becomes
  that division.
- Attention, on request (`attention=True`, `wsss export --onnx-attention onnxruntime`): the
  reshapes, transposes, two products, scale and softmax of each multi-head attention become
  onnxruntime's contrib `MultiHeadAttention` (ViT-B/16 at 448: 594 against 624 ms, interleaved,
  2 threads); the file then runs on onnxruntime only.
"""

import math

import numpy as np

_SQRT_HALF = 1 / math.sqrt(2)


class _Graph:
    """Who produces and who reads each value of an ONNX graph, and its constant initialisers."""

    def __init__(self, model):
        self.model = model
        self.graph = graph = model.graph
        self._shapes = None
        self.producer = {out: node for node in graph.node for out in node.output}
        self.readers = {}
        for node in graph.node:
            for name in dict.fromkeys(node.input):  # once per node, even when it reads a value twice
                self.readers.setdefault(name, []).append(node)
        for output in graph.output:
            self.readers.setdefault(output.name, []).append(None)  # a graph output is read outside
        self.constants = {init.name: init for init in graph.initializer}

    def dims(self, name):
        """The dimensions of value `name` from ONNX's shape inference (None for an unknown one),
        or None if its rank is unknown."""
        if self._shapes is None:
            from onnx import shape_inference

            inferred = shape_inference.infer_shapes(self.model).graph
            self._shapes = {info.name: info.type.tensor_type.shape
                            for info in [*inferred.value_info, *inferred.input, *inferred.output]}
        shape = self._shapes.get(name)
        if shape is None or not shape.dim:
            return None
        return [int(d.dim_value) if d.HasField("dim_value") else None for d in shape.dim]

    def last_axis_of_rank_3(self, name):
        """The last dimension of value `name` if it is rank 3 with that dimension known, else None."""
        dims = self.dims(name)
        return dims[2] if dims is not None and len(dims) == 3 else None

    def only_reader(self, name, op_type):
        """The one node reading `name`, if there is exactly one and it is an `op_type`."""
        readers = self.readers.get(name, [])
        if len(readers) == 1 and readers[0] is not None and readers[0].op_type == op_type:
            return readers[0]
        return None

    def constant(self, name):
        from onnx import numpy_helper

        init = self.constants.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def other_input(self, node, name):
        """The input of a two-input node that is not `name` (None if both are)."""
        first, second = node.input
        if first == name and second != name:
            return second
        if second == name and first != name:
            return first
        return None


def _match_layer_norm(g, mean_pool):
    """The nodes, input, scale, bias, epsilon and output of the LayerNorm chain tf2onnx starts
    at `mean_pool` (a GlobalAveragePool of x), or None if the chain is not exactly that one."""
    x = mean_pool.input[0]
    mean = mean_pool.output[0]
    readers = g.readers.get(mean, [])
    if len(readers) != 2 or None in readers or sorted(n.op_type for n in readers) != ["Neg", "Sub"]:
        return None
    neg = next(n for n in readers if n.op_type == "Neg")
    centred = next(n for n in readers if n.op_type == "Sub")
    if list(centred.input) != [x, mean]:
        return None
    square = g.only_reader(centred.output[0], "Mul")
    if square is None or list(square.input) != [centred.output[0]] * 2:
        return None
    variance = g.only_reader(square.output[0], "GlobalAveragePool")
    add_eps = variance and g.only_reader(variance.output[0], "Add")
    if add_eps is None:
        return None
    epsilon = g.constant(g.other_input(add_eps, variance.output[0]) or "")
    sqrt = g.only_reader(add_eps.output[0], "Sqrt")
    reciprocal = sqrt and g.only_reader(sqrt.output[0], "Reciprocal")
    if epsilon is None or epsilon.size != 1 or reciprocal is None:
        return None
    # tf2onnx folds a scale of ones and a bias of zeros away (a fresh or random-weight model):
    # then the reciprocal feeds the two products itself, or their sum is the output.
    scale_mul = g.only_reader(reciprocal.output[0], "Mul")
    scale = scale_mul and g.constant(g.other_input(scale_mul, reciprocal.output[0]) or "")
    if scale is None:
        scale_mul = None
    factor = (scale_mul or reciprocal).output[0]
    factor_readers = g.readers.get(factor, [])
    if len(factor_readers) != 2 or None in factor_readers:
        return None
    times_x = next((n for n in factor_readers if n.op_type == "Mul" and set(n.input) == {x, factor}), None)
    times_neg = next((n for n in factor_readers if n.op_type == "Mul" and set(n.input) == {neg.output[0], factor}), None)
    if times_x is None or times_neg is None or g.readers.get(neg.output[0]) != [times_neg]:
        return None
    add_bias = g.only_reader(times_neg.output[0], "Add")
    bias = add_bias and g.constant(g.other_input(add_bias, times_neg.output[0]) or "")
    if bias is None:
        add_bias, shifted = None, times_neg.output[0]
    else:
        shifted = add_bias.output[0]
    add_out = g.only_reader(shifted, "Add")
    if add_out is None or set(add_out.input) != {times_x.output[0], shifted} or g.readers.get(times_x.output[0]) != [add_out]:
        return None
    # GlobalAveragePool averages every axis from 2 on: a mean over the last axis only for a
    # (B, N, C) input, which Keras's (1, 1, C) scale and bias say, or else x's inferred shape.
    # A (1, 1, C) vector on a rank-4 input would broadcast, not normalise: Keras never writes it.
    known = {vector.shape for vector in (scale, bias) if vector is not None}
    if known:
        (shape,) = known if len(known) == 1 else [()]
        channels = shape[2] if len(shape) == 3 and shape[:2] == (1, 1) else None
    else:
        channels = g.last_axis_of_rank_3(x)
    if not channels:
        return None
    scale = np.ones(channels, np.float32) if scale is None else scale.reshape(channels)
    bias = np.zeros(channels, np.float32) if bias is None else bias.reshape(channels)
    nodes = [mean_pool, neg, centred, square, variance, add_eps, sqrt, reciprocal, scale_mul, times_x,
             times_neg, add_bias, add_out]
    return [n for n in nodes if n is not None], x, scale, bias, float(epsilon.reshape(())), add_out.output[0]


def _fuse_layer_norms(g):
    """Replace each tf2onnx LayerNorm chain by one LayerNormalization; returns how many."""
    from onnx import helper, numpy_helper

    fused = 0
    for node in list(g.graph.node):
        if node.op_type != "GlobalAveragePool" or node not in g.graph.node:
            continue
        match = _match_layer_norm(g, node)
        if match is None:
            continue
        nodes, x, scale, bias, epsilon, output = match
        prefix = f"{output.split(':')[0]}/fused_layer_norm"
        g.graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), f"{prefix}/scale"),
                                    numpy_helper.from_array(bias.astype(np.float32), f"{prefix}/bias")])
        # Every node of the chain reads the first one's output, so all come after it: the fused
        # node takes the first one's place and stays in topological order.
        position = list(g.graph.node).index(node)
        for old in nodes:
            g.graph.node.remove(old)
        layer_norm = helper.make_node("LayerNormalization", [x, f"{prefix}/scale", f"{prefix}/bias"], [output],
                                      name=prefix, axis=-1, epsilon=epsilon)
        g.graph.node.insert(position, layer_norm)
        fused += 1
    return fused


def _gelu_divisions(g):
    """Turn `Mul(x, 0.7071)` feeding an Erf into `Div(x, 1.4142)`; returns how many."""
    from onnx import helper, numpy_helper

    rewritten = 0
    sqrt_two = None
    for position, node in enumerate(list(g.graph.node)):
        if node.op_type != "Mul" or g.only_reader(node.output[0], "Erf") is None:
            continue
        constants = [(i, g.constant(name)) for i, name in enumerate(node.input) if name in g.constants]
        if len(constants) != 1 or constants[0][1].size != 1:
            continue
        index, value = constants[0]
        if abs(float(value.reshape(())) - _SQRT_HALF) > 1e-6:
            continue
        if sqrt_two is None:
            sqrt_two = "wsss_fusion/sqrt_two"
            g.graph.initializer.append(numpy_helper.from_array(np.array(math.sqrt(2), np.float32), sqrt_two))
        x = node.input[1 - index]
        division = helper.make_node("Div", [x, sqrt_two], list(node.output), name=f"{node.name}/as_division")
        g.graph.node.remove(node)
        g.graph.node.insert(position, division)
        rewritten += 1
    return rewritten


def _perm(node):
    if node.op_type != "Transpose":
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _heads(g, reshape):
    """The heads of a Reshape to (B, N, heads, width): from its constant shape, or from the
    constant tail of the Concat (through a Cast) that tf2onnx builds the shape with."""
    shape = g.constant(reshape.input[1])
    if shape is not None:
        return int(shape[-2]) if shape.size == 4 else None
    node = g.producer.get(reshape.input[1])
    if node is not None and node.op_type == "Cast":
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Concat":
        return None
    tail = []
    for name in reversed(node.input):
        piece = g.constant(name)
        if piece is None:
            break
        tail = list(piece.reshape(-1)) + tail
    return int(tail[-2]) if len(tail) >= 2 else None


def _match_attention(g, softmax):
    """(nodes to remove, q, k, v, heads, scale, output) of the multi-head attention tf2onnx
    writes around `softmax`: q and k reshaped to heads and transposed, their product scaled by
    a constant, the softmax over keys, its product with v, transposed back and reshaped to
    (B, N, C); or None if the chain is not exactly that."""
    axis = [a.i for a in softmax.attribute if a.name == "axis"]
    if axis and axis[0] not in (-1, 3):
        return None
    scaled = g.producer.get(softmax.input[0])
    if scaled is None or scaled.op_type != "Mul" or g.readers.get(scaled.output[0]) != [softmax]:
        return None
    scores = [g.producer.get(name) for name in scaled.input if name not in g.constants]
    scale = [g.constant(name) for name in scaled.input if name in g.constants]
    if len(scores) != 1 or len(scale) != 1 or scale[0].size != 1 or scores[0] is None:
        return None
    scores = scores[0]
    if scores.op_type != "MatMul" or g.readers.get(scores.output[0]) != [scaled]:
        return None
    query_t, key_t = (g.producer.get(name) for name in scores.input)
    mixed = g.only_reader(softmax.output[0], "MatMul")
    if None in (query_t, key_t) or mixed is None or mixed.input[0] != softmax.output[0]:
        return None
    value_t = g.producer.get(mixed.input[1])
    back = g.only_reader(mixed.output[0], "Transpose")
    merged = back and g.only_reader(back.output[0], "Reshape")
    if value_t is None or merged is None or _perm(back) != [0, 2, 1, 3]:
        return None
    splits = []
    for transposed, perm in ((query_t, [0, 2, 1, 3]), (key_t, [0, 2, 3, 1]), (value_t, [0, 2, 1, 3])):
        reshape = g.producer.get(transposed.input[0]) if _perm(transposed) == perm else None
        if reshape is None or reshape.op_type != "Reshape" or g.readers.get(transposed.output[0]) != [
                scores if transposed is not value_t else mixed] or g.readers.get(reshape.output[0]) != [transposed]:
            return None
        splits.append(reshape)
    heads = {_heads(g, reshape) for reshape in splits}
    if len(heads) != 1 or None in heads:
        return None
    (heads,) = heads
    # onnxruntime's MultiHeadAttention takes q, k and v as (B, N, heads * width): rank 3, which
    # each reshape to (B, N, heads, width) then splits the last axis of.
    if any(len(g.dims(reshape.input[0]) or ()) != 3 for reshape in splits):
        return None
    nodes = [scaled, scores, softmax, mixed, back, merged, query_t, key_t, value_t, *splits]
    q, k, v = (reshape.input[0] for reshape in splits)
    return nodes, q, k, v, heads, float(scale[0].reshape(())), merged.output[0]


def _fuse_attention(g):
    """Replace each matched attention by onnxruntime's `com.microsoft.MultiHeadAttention`;
    returns how many."""
    from onnx import helper

    fused = 0
    for node in list(g.graph.node):
        if node.op_type != "Softmax":
            continue
        match = _match_attention(g, node)
        if match is None:
            continue
        nodes, q, k, v, heads, scale, output = match
        # The fused node takes the place of the output's producer: q, k and v come before it.
        position = list(g.graph.node).index(nodes[5])
        attention = helper.make_node("MultiHeadAttention", [q, k, v], [output], domain="com.microsoft",
                                     name=f"{output.split(':')[0]}/fused_attention", num_heads=heads, scale=scale)
        g.graph.node.insert(position, attention)
        for old in nodes:
            g.graph.node.remove(old)
        fused += 1
    if fused:
        _drop_dead_nodes(g.graph)
        if not any(entry.domain == "com.microsoft" for entry in g.model.opset_import):
            g.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


def _drop_dead_nodes(graph):
    """Remove nodes none of whose outputs is read (the shape arithmetic of a replaced chain)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        dead = [node for node in graph.node if not any(name in used for name in node.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _drop_unused_initializers(graph):
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def fuse_for_onnxruntime(model, attention=False):
    """Rewrite `model` (an `onnx.ModelProto` from tf2onnx) in place; returns how many LayerNorm
    chains were fused, GELU multiplications rewritten and (with `attention`) attentions
    replaced, as a dict. LayerNormalization needs opset 17 or later; an older graph keeps its
    LayerNorm chains. `attention` writes onnxruntime's contrib MultiHeadAttention, which only
    onnxruntime runs: the one rewrite whose file is not standard ONNX."""
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    g = _Graph(model)
    layer_norms = _fuse_layer_norms(g) if opset >= 17 else 0
    g = _Graph(model)
    gelus = _gelu_divisions(g)
    counts = {"layer_norm": layer_norms, "gelu": gelus}
    if attention:
        counts["attention"] = _fuse_attention(_Graph(model))
    _drop_unused_initializers(model.graph)
    return counts


def fuse_onnx_file(path, attention=False):
    """`fuse_for_onnxruntime` on the ONNX file at `path`, written back in place."""
    import onnx

    model = onnx.load(path)
    counts = fuse_for_onnxruntime(model, attention)
    if any(counts.values()):
        onnx.save(model, path)
    return counts
