"""The `manifest.json` beside every artifact: the model it came from (with its sha256), the
artifact (format, precision, bytes, sha256), classes and palette, input and normalisation,
outputs, the self-check's record and the versions that wrote it."""

import datetime
import json
import os
import re

from wsss_deploy.manifest import MANIFEST_FILE, file_sha256


def _versions(fmt):
    from importlib.metadata import PackageNotFoundError, version

    onnx = ["tf2onnx", "onnx", "onnxruntime"]
    names = ["wsss-keras", "keras", "tensorflow"] + {"onnx": onnx, "triton": onnx,
                                                      "tflite": ["ai-edge-litert"]}.get(fmt, [])
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def model_name(model, source):
    """The recipe's name, else the checkpoint's file name: letters, digits, '_', '-', '.' only
    (Triton's model names are folder names)."""
    recipe = getattr(model, "recipe", {}) or {}
    name = (recipe.get("recipe") or {}).get("name") or os.path.splitext(os.path.basename(source))[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def class_names(model, label_count):
    """The model's class names (background first), or numbered ones when it has none."""
    names = list(model.class_names or [])
    if len(names) != label_count:
        names = ["background"] + [f"class {index}" for index in range(1, label_count)]
    return names


def output_descriptions(label_count, output):
    classes = label_count - 1
    labels = {"name": "labels", "dtype": "uint8", "shape": [None, None, None],
              "meaning": "class index per pixel (0 = background), at the input image's size"}
    if output == "labels":
        return [labels]
    if output == "cams":
        return [{"name": "cams", "dtype": "float32", "shape": [None, None, None, classes],
                 "meaning": "class activation maps of the foreground classes, ReLU'd and divided by their maximum, at the input image's size"}]
    logits = {"name": "logits", "dtype": "float32", "shape": [None, None, None, label_count],
              "meaning": "segmentation logits, background first, at the input image's size (softmax for probabilities)"}
    return [logits, labels]


def build_manifest(graph, source, artifact, fmt, precision, input_size, output, dynamic, opset, check):
    from wsss_keras.data.imageio import voc_palette

    model = graph.method
    recipe = getattr(model, "recipe", {}) or {}
    names = class_names(model, graph.label_count)
    digest_path = os.path.join(artifact, "saved_model.pb") if os.path.isdir(artifact) else artifact
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(artifact) for f in files) \
        if os.path.isdir(artifact) else os.path.getsize(artifact)
    return {
        "manifest_version": 1,
        "model": {
            "name": model_name(model, source),
            "method": (recipe.get("recipe") or {}).get("method") or type(model).__name__.lower(),
            "class": type(model).__name__,
            "source": os.path.abspath(source),
            "source_sha256": file_sha256(source),
        },
        "artifact": {"file": os.path.basename(artifact), "format": fmt, "precision": precision, "bytes": size,
                     "sha256": file_sha256(digest_path), **({"opset": int(opset)} if fmt in ("onnx", "triton") else {}),
                     **({"signature": "serve"} if fmt == "saved_model" else {})},
        "classes": names,
        "palette": voc_palette(len(names)).tolist(),
        "input": {"name": "image", "dtype": "uint8", "shape": [None, None, None, 3], "layout": "NHWC", "channels": "RGB",
                  "network_size": None if dynamic else list(input_size),
                  "resize": "none: the network runs at the image's size" if dynamic else
                            "inside the graph: bilinear to network_size, outputs bilinear back to the image's size"},
        "normalization": {"inside_graph": True, "formula": "(x / 255 - mean) / std",
                          "mean": list(model.image_mean), "std": list(model.image_std)},
        "output": output,
        "outputs": output_descriptions(graph.label_count, output),
        "check": check,
        "versions": _versions(fmt),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_manifest(manifest, folder, path):
    """Write `manifest` beside the artifact `path`: in the export folder, or Triton's version folder."""
    beside = folder if os.path.isdir(path) else os.path.dirname(path)
    with open(os.path.join(beside, MANIFEST_FILE), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
