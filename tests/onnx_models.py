"""Tiny ONNX models in the layout `wsss export` writes (model.onnx + manifest.json), built with
onnx.helper in milliseconds, with masks a test can predict by hand.

The "colour" model has classes background, red, green: per pixel, logits = (100, R, G), so a
pixel is red where R > 100 and R >= G, green where G > 100 and G > R, else background.
"""

import datetime
import json
import os

import numpy as np

from wsss_deploy.manifest import MANIFEST_FILE, file_sha256

CLASSES = ["background", "red", "green"]
PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


def expected_labels(image):
    """The colour model's label map of a uint8 (H, W, 3) image, computed with numpy."""
    logits = np.stack([np.full(image.shape[:2], 100.0), image[..., 0].astype(float), image[..., 1].astype(float)], -1)
    return logits.argmax(-1).astype(np.uint8)


def colour_graph(output="logits"):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)  # rows R, G, B; columns classes
    bias = np.array([100, 0, 0], np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["pixels", "weights"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits"]),
    ]
    outputs = []
    if output in ("logits", "labels"):
        nodes += [helper.make_node("ArgMax", ["logits"], ["argmax"], axis=-1, keepdims=0),
                  helper.make_node("Cast", ["argmax"], ["labels"], to=TensorProto.UINT8)]
        if output == "logits":
            outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "h", "w", 3]))
        outputs.append(helper.make_tensor_value_info("labels", TensorProto.UINT8, ["b", "h", "w"]))
    else:  # cams: the foreground logits over 255
        nodes += [helper.make_node("Slice", ["logits", "start", "end", "axis"], ["foreground"]),
                  helper.make_node("Div", ["foreground", "scale"], ["cams"])]
        outputs.append(helper.make_tensor_value_info("cams", TensorProto.FLOAT, ["b", "h", "w", 2]))
    initializers = [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")]
    if output == "cams":
        initializers += [numpy_helper.from_array(np.array([1], np.int64), "start"),
                         numpy_helper.from_array(np.array([3], np.int64), "end"),
                         numpy_helper.from_array(np.array([3], np.int64), "axis"),
                         numpy_helper.from_array(np.array(255.0, np.float32), "scale")]
    graph = helper.make_graph(nodes, "colour", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                              ["b", "h", "w", 3])],
                              outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_colour_model(folder, output="logits"):
    """model.onnx and its manifest in `folder`; returns the folder."""
    import onnx

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), "model.onnx")
    onnx.save(colour_graph(output), path)
    label = {"name": "labels", "dtype": "uint8", "shape": [None, None, None], "meaning": "class index per pixel"}
    outputs = {"logits": [{"name": "logits", "dtype": "float32", "shape": [None, None, None, 3]}, label],
               "labels": [label], "cams": [{"name": "cams", "dtype": "float32", "shape": [None, None, None, 2]}]}
    manifest = {
        "manifest_version": 1,
        "model": {"name": "colour", "method": "test", "class": "ColourModel", "source_sha256": "0" * 64},
        "artifact": {"file": "model.onnx", "format": "onnx", "precision": "fp32", "bytes": os.path.getsize(path),
                     "sha256": file_sha256(path), "opset": 17},
        "classes": CLASSES, "palette": PALETTE,
        "input": {"name": "image", "dtype": "uint8", "shape": [None, None, None, 3], "layout": "NHWC",
                  "channels": "RGB", "network_size": [32, 32]},
        "normalization": {"inside_graph": True},
        "output": output, "outputs": outputs[output],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(str(folder), MANIFEST_FILE), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
    return str(folder)
