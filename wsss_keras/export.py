"""`wsss export`: a trained model as a SavedModel, ONNX or TFLite (LiteRT) artifact, with a
manifest and a self-check.

The exported graph is inference only and needs no Python around it: it takes uint8 RGB images
`(B, H, W, 3)` of any size, resizes them to the network's input size (or not, `dynamic`),
normalises them as the model was trained, runs the segmentation head (or the CAM head) and
resizes the result back to the image. Outputs, by `output`:

- "logits" (default): `logits` `(B, H, W, C + 1)` float32, background first, and `labels`
  `(B, H, W)` uint8, their argmax;
- "labels": `labels` only, the lean graph for devices;
- "cams": `cams` `(B, H, W, C)` in [0, 1], ReLU'd and max-normalised per class (CAM networks).

Export runs on the TensorFlow backend (Keras 3.15 exports ONNX and LiteRT only there); from
JAX or PyTorch, `export_model` runs itself in a TensorFlow subprocess on the same `.keras` file.
Every artifact gets a `manifest.json` beside it and is checked against the Keras model on
sample images: label agreement and, with logits, the largest logit difference; the export
fails (`ExportCheckError`) under the thresholds of `AGREEMENT` / `FP32_LOGIT_TOLERANCE`.
"""

import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from wsss_deploy.manifest import MANIFEST_FILE, file_sha256

from wsss_keras.errors import DataError, ModelError, WSSSError

FORMATS = ("saved_model", "onnx", "tflite", "triton")
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUTS = ("logits", "labels", "cams")
ARTIFACT_NAMES = {"saved_model": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite", "triton": "model.onnx"}
# Triton's dynamic batcher: the most images per call, and how long a request waits for others.
TRITON_MAX_BATCH = 8
TRITON_QUEUE_DELAY_US = 5000
# The self-check's pass marks: the share of pixels whose label matches the Keras model's ...
AGREEMENT = {"fp32": 0.999, "fp16": 0.995, "int8": 0.98}
# ... and, for float32 artifacts with logits, the largest absolute logit difference.
FP32_LOGIT_TOLERANCE = 1e-3
DEFAULT_OPSET = 17
DEFAULT_INPUT_SIZE = 448
SAMPLE_COUNT = 8
CALIBRATION_LIMIT = 100


class ExportError(WSSSError):
    """The model cannot be exported as asked."""


class ExportCheckError(ExportError):
    """The artifact was written but its outputs part from the Keras model's."""


def default_input_size(model):
    """The network input size the model was trained for: the recipe's CAM resize, else its
    training crop, else 448."""
    recipe = getattr(model, "recipe", {}) or {}
    for section, key in (("cams", "resize"), ("train", "crop_size")):
        value = (recipe.get(section) or {}).get(key)
        if value:
            return (int(value), int(value))
    return (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)


def deployment_graph(model, input_size, output="logits", dynamic=False):
    """The inference graph of `model` as a `keras.Model` on uint8 images, built and traced once.

    Args:
        model: a trained `WSSSModel`.
        input_size: (height, width) the images are resized to inside the graph.
        output: "logits", "labels" or "cams" (see the module docstring).
        dynamic: run the network at each image's own size instead.

    Raises:
        ExportError: the model has no head for `output`.
    """
    import keras

    from wsss_keras.export_graph import ImageToSegmentation

    if output not in OUTPUTS:
        raise ExportError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}.")
    if output == "cams" and getattr(model, "cams_need_labels", False):
        raise ExportError(
            f"{type(model).__name__}'s CAMs are Grad-CAMs that need the image labels and gradients at inference; "
            "they cannot be exported. Export its segmentation head instead (--output logits or labels)."
        )
    graph = ImageToSegmentation(model, input_size, output, dynamic)
    probe = np.zeros((1,) + tuple(input_size) + (3,), np.uint8)
    try:
        outputs = graph(keras.ops.convert_to_tensor(probe))
    except NotImplementedError:
        if output == "cams":
            raise ExportError(f"{type(model).__name__} has no CAM head; export --output logits or labels.") from None
        raise ExportError(
            f"{type(model).__name__} has no segmentation head: export the segmentation network trained on its "
            "pseudo-labels (the run's segmentation/model.keras), or this model's CAMs with --output cams."
        ) from None
    if dynamic:
        import tensorflow as tf

        try:
            tf.function(graph.call).get_concrete_function(tf.TensorSpec((None, None, None, 3), tf.uint8))
        except Exception as error:
            raise ExportError(f"{type(model).__name__} cannot run at image sizes unknown until run time "
                              f"({_first_lines(error)}); export with --input-size H W instead of --dynamic.") from None
    # Labels with background, from the graph's outputs (methods count num_classes differently).
    if output == "labels":
        outputs = {"logits": model.segment_logits(keras.ops.zeros((1,) + tuple(input_size) + (3,)))}
    graph.label_count = int(outputs["cams"].shape[-1]) + 1 if output == "cams" else int(outputs["logits"].shape[-1])
    return graph


def sample_images(folder=None, size=(128, 128), count=SAMPLE_COUNT, seed=0):
    """Up to `count` uint8 RGB images of `folder` (a folder of .jpg/.png), resized to `size`;
    without a folder, synthetic scenes drawn with the synthetic dataset's generator."""
    import cv2

    if folder is None:
        from wsss_keras.data.synthetic import CATALOG, render_sample

        rng = np.random.default_rng(seed)
        images = [render_sample(rng, max(size), CATALOG[:6])[0] for _ in range(count)]
    else:
        from wsss_keras.pipelines.predict import ImageFolder

        found = ImageFolder(folder)
        picks = np.linspace(0, len(found) - 1, min(count, len(found))).round().astype(int)
        images = [found.load_image(int(index)) for index in picks]
    return np.stack([cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for image in images])


# Writing ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_default_signatures():
    """Keras's SavedModel writing (under all three formats) traces a `serving_default` for every
    Keras Model it meets, from the shapes that model was built with; our sub-models (encoders,
    heads) are built from configs without input shapes, so that tracing fails. The export's own
    endpoint is the only signature wanted, so the default ones are switched off meanwhile."""
    from keras.src.backend.tensorflow.layer import TFLayer

    original = TFLayer.__dict__["_default_save_signature"]
    TFLayer._default_save_signature = property(lambda self: None)
    try:
        yield
    finally:
        TFLayer._default_save_signature = original


def artifact_path(out_dir, fmt, name):
    """Where `fmt`'s artifact goes in `out_dir`; Triton's is `<name>/1/model.onnx` of a model
    repository (version 1 of model `name`)."""
    if fmt == "triton":
        return os.path.join(out_dir, name, "1", ARTIFACT_NAMES[fmt])
    return os.path.join(out_dir, ARTIFACT_NAMES[fmt])


def write_artifacts(graph, fmt, precision, out_dir, calibration=None, opset=DEFAULT_OPSET, name="model",
                    int8_scope="full"):
    """Export `graph` into `out_dir` as `fmt`: yields (artifact path, notes). Every format
    yields once, except int8, which yields again with more ops kept in float each time
    (`int8_flatbuffers`, by `int8_scope`) for as long as the caller asks, so the self-check
    can choose."""
    import keras

    path = artifact_path(out_dir, fmt, name)
    spec = keras.InputSpec(shape=(None, None, None, 3), dtype="uint8", name="image")
    with _no_default_signatures():
        if fmt == "saved_model":
            graph.export(path, format="tf_saved_model", input_signature=[spec], verbose=False)
            yield path, {}
            return
        if fmt in ("onnx", "triton"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            graph.export(path, format="onnx", input_signature=[spec], opset_version=int(opset), verbose=False)
            if fmt == "triton":
                with open(os.path.join(out_dir, name, "config.pbtxt"), "w", encoding="utf-8") as handle:
                    handle.write(triton_config(name, graph.label_count, graph.output_kind))
            yield path, {"opset": int(opset)}
            return
        import tempfile

        # Keras's LiteRT exporter converts through a SavedModel too; doing that step here lets
        # int8 choose which ops to keep in float.
        with tempfile.TemporaryDirectory() as scratch:
            saved = os.path.join(scratch, "saved_model")
            graph.export(saved, format="tf_saved_model", input_signature=[spec], verbose=False)
            if precision != "int8":
                flatbuffers = [(litert_converter(saved, precision).convert(), {})]
            else:
                flatbuffers = int8_flatbuffers(saved, calibration, int8_scope)
            for flatbuffer, notes in flatbuffers:
                with open(path, "wb") as handle:
                    handle.write(flatbuffer)
                yield path, notes


def litert_converter(saved_model, precision, calibration=None):
    """A TFLite converter of a SavedModel's "serve" signature: builtin ops only (a model that
    needs TensorFlow's Flex ops would not run on plain LiteRT); fp16 stores float16 weights;
    int8 quantises weights and activations, calibrated on `calibration` (uint8 images)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serve"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def _representative_dataset(images):
    def generate():
        for image in images:
            yield [image[None]]

    return generate


# The ops int8 keeps in float, tried in turn until the self-check passes. Divisions always:
# normalisations (x / max(‖x‖, ε), G / ΣG) divide by values that quantise to zero on some
# inputs, and LiteRT's int8 DIV then refuses to run. Then LayerNorm's ops, then attention's:
# a transformer's int8 error comes mostly from those (measured on the quickstart's ViT at 128:
# 97.15 % label agreement with divisions alone, 98.97 % with LayerNorm in float too).
INT8_FLOAT_LEVELS = (
    ("DIV",),
    ("DIV", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SUB"),
    ("DIV", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SUB", "SOFTMAX", "BATCH_MATMUL"),
)
# The last level keeps int8 only where the weights are, every other op of the model in float:
# the weights (the size) and most of the arithmetic stay int8, and the residual stream (ADD),
# the token assembly (CONCATENATION, TILE) and the elementwise ops no longer round to one
# per-tensor scale. Measured on the tests' few-step ViT and CLIP models, whose logits nearly
# tie: JAX's CLIP decoder agrees on 96.3 % with the levels above, 99.1 % with this one.
INT8_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
# `--int8-scope`: "full" starts from every op int8 (for integer-only accelerators) and falls
# back level by level; "weights" goes straight to the last level, which measured faster on this
# x86 CPU than fp32 and full int8 (quickstart ViT at 128, LiteRT with XNNPACK: 3.5 ms against
# 5.7 and 20.1 ms at batch 1).
INT8_SCOPES = ("full", "weights")


def tflite_op_names(flatbuffer):
    """The builtin op names (`CONV_2D`, `ADD`, ...) a `.tflite` flatbuffer uses."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = (model.OperatorCodes(index) for index in range(model.OperatorCodesLength()))
    # Codes under 127 sit in the deprecated byte field too; the larger of the two is the op.
    return sorted({names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())] for code in codes})


def int8_flatbuffers(saved_model, calibration, scope="full"):
    """Yield (int8 `.tflite` bytes, notes) with the ops of each `INT8_FLOAT_LEVELS` in float,
    then with every op but `INT8_WEIGHTED_OPS` in float (TensorFlow's selective quantisation,
    through its quantisation debugger). `scope` "weights" yields only the last."""
    import tensorflow as tf

    def quantised(float_ops):
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=litert_converter(saved_model, "int8", calibration),
            debug_dataset=_representative_dataset(calibration[:20]), debug_options=options)
        return debugger.get_nondebug_quantized_model()

    for float_ops in INT8_FLOAT_LEVELS if scope == "full" else ():
        yield quantised(float_ops), {"int8_scope": scope, "float_ops": list(float_ops)}
    model_ops = tflite_op_names(litert_converter(saved_model, "fp32").convert())
    int8_ops = [op for op in model_ops if op in INT8_WEIGHTED_OPS]
    float_ops = [op for op in model_ops if op not in INT8_WEIGHTED_OPS]
    if int8_ops:
        yield quantised(float_ops), {"int8_scope": scope, "float_ops": float_ops, "int8_ops": int8_ops}
    elif scope == "weights":
        raise ExportError(f"--int8-scope weights: the model has none of {', '.join(INT8_WEIGHTED_OPS)} to "
                          "quantise; use --int8-scope full.")


def triton_config(name, label_count, output):
    """Triton Inference Server's config.pbtxt (protobuf text format) for the exported ONNX graph:
    the onnxruntime backend, batch dimension first, dynamic batching. Triton batches only
    requests whose images share a size, as `wsss serve` does."""
    dims = {"logits": ("TYPE_FP32", [-1, -1, label_count]), "labels": ("TYPE_UINT8", [-1, -1]),
            "cams": ("TYPE_FP32", [-1, -1, label_count - 1])}
    names = [o["name"] for o in output_descriptions(label_count, output)]

    def tensor(tensor_name, data_type, shape):
        return (f'  {{\n    name: "{tensor_name}"\n    data_type: {data_type}\n'
                f'    dims: [ {", ".join(str(d) for d in shape)} ]\n  }}')

    outputs = ",\n".join(tensor(n, *dims[n]) for n in names)
    return (f'# Written by `wsss export --format triton`; model.onnx and its manifest.json are in 1/.\n'
            f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {TRITON_MAX_BATCH}\n'
            f'input [\n{tensor("image", "TYPE_UINT8", [-1, -1, 3])}\n]\noutput [\n{outputs}\n]\n'
            f'dynamic_batching {{\n  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}\n}}\n'
            f'instance_group [\n  {{\n    kind: KIND_AUTO\n    count: 1\n  }}\n]\n')


def artifact_runner(path, fmt):
    """A callable uint8 images `(B, H, W, 3)` -> {output name: array}, loading the artifact once."""
    if fmt in ("onnx", "triton"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        names = [output.name for output in session.get_outputs()]
        return lambda images: dict(zip(names, session.run(None, {input_name: images})))
    if fmt == "tflite":
        from wsss_deploy.litert_runner import LiteRTSegmenter

        return LiteRTSegmenter(path).run
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serve"]
    return lambda images: {key: value.numpy() for key, value in serve(tf.constant(images)).items()}


# Checking -----------------------------------------------------------------------------------
def compare_outputs(reference, exported):
    """Label agreement (share of pixels) and the largest logit (or CAM) difference of two lists
    of output dicts; None where the outputs lack that kind."""
    agree = total = 0
    largest = None
    for ref, out in zip(reference, exported):
        if "labels" in ref:
            agree += int(np.sum(np.asarray(ref["labels"]) == np.asarray(out["labels"])))
            total += int(np.asarray(ref["labels"]).size)
        for key in ("logits", "cams"):
            if key in ref:
                difference = float(np.max(np.abs(np.asarray(ref[key], np.float32) - np.asarray(out[key], np.float32))))
                largest = difference if largest is None else max(largest, difference)
    return (agree / total if total else None), largest


def evaluation_miou(run, dataset, limit):
    """mIoU (%) of `run(image) -> label map` on up to `limit` images of `dataset`."""
    from wsss_keras.evaluation.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(dataset.num_classes + 1)
    picks = np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).round().astype(int)
    for index in sorted(set(picks.tolist())):
        matrix.update(run(dataset.load_image(int(index))), dataset.load_label_map(int(index)))
    return 100.0 * matrix.scores().miou


def self_check(graph, path, fmt, precision, images, eval_dataset=None, eval_limit=50, echo=print, min_agreement=None):
    """Run the artifact and the Keras graph on `images`; returns the check's record (also for
    the manifest) with "passed" and, when it failed, "message". `min_agreement` replaces the
    label-agreement bar of `AGREEMENT[precision]`."""
    bar = AGREEMENT[precision] if min_agreement is None else float(min_agreement)
    import keras

    def keras_outputs(image):
        return {key: keras.ops.convert_to_numpy(value) for key, value in graph(image[None]).items()}

    reference = [keras_outputs(image) for image in images]
    run = artifact_runner(path, fmt)
    exported = [run(image[None]) for image in images]
    agreement, largest = compare_outputs(reference, exported)
    record = {"images": len(images), "label_agreement": agreement, "max_abs_difference": largest,
              "threshold_agreement": bar}
    failures = []
    if agreement is not None and agreement < bar:
        failures.append(f"labels agree on {100 * agreement:.2f} % of pixels, under {100 * bar:.1f} %")
    if precision == "fp32" and largest is not None:
        record["threshold_difference"] = FP32_LOGIT_TOLERANCE
        if largest > FP32_LOGIT_TOLERANCE:
            failures.append(f"outputs differ by up to {largest:.2e}, over {FP32_LOGIT_TOLERANCE:g}")
    if eval_dataset is not None and "labels" in reference[0]:
        record["miou_keras"] = evaluation_miou(lambda image: keras_outputs(image)["labels"][0], eval_dataset, eval_limit)
        record["miou_artifact"] = evaluation_miou(lambda image: run(image[None])["labels"][0], eval_dataset, eval_limit)
    agreement_text = "-" if agreement is None else f"{100 * agreement:.3f} %"
    largest_text = "-" if largest is None else f"{largest:.2e}"
    line = f"[check] {fmt} {precision}: label agreement {agreement_text}, max abs output difference {largest_text}"
    if "miou_keras" in record:
        line += f", mIoU Keras {record['miou_keras']:.1f} / artifact {record['miou_artifact']:.1f}"
    echo(line + f" on {len(images)} images")
    record["passed"] = not failures
    if failures:
        record["message"] = "; ".join(failures)
    return record


# Manifest -----------------------------------------------------------------------------------
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


# The command --------------------------------------------------------------------------------
def check_request(formats, precisions):
    """The (format, precision) pairs to export; raises ExportError on impossible pairs."""
    formats, precisions = list(formats), list(precisions or ["fp32"])
    for fmt in formats:
        if fmt not in FORMATS:
            raise ExportError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ExportError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    reduced = [p for p in precisions if p != "fp32"]
    if reduced and "tflite" not in formats:
        raise ExportError(f"precision {reduced[0]} is a TFLite precision; add --format tflite or use fp32 "
                          "(SavedModel, ONNX and Triton export float32).")
    return [(fmt, precision) for fmt in formats for precision in (precisions if fmt == "tflite" else ["fp32"])]


def image_folder(folder, what):
    """A folder of images, or a dataset root whose JPEGImages holds them; checked to hold images."""
    if folder is None:
        return None
    from wsss_keras.pipelines.predict import ImageFolder

    if not os.path.isdir(folder):
        raise DataError(f"{folder}: {what} folder not found; give a folder of .jpg/.png images (or a VOC root).")
    images = os.path.join(folder, "JPEGImages")
    folder = images if os.path.isdir(images) else folder
    try:
        ImageFolder(folder)
    except DataError as error:
        raise DataError(f"{error} (the {what} images; give a folder of .jpg/.png images or a VOC root)") from None
    return folder


def export_model(model_path, out, formats=("onnx",), precisions=("fp32",), input_size=None, dynamic=False,
                 output="logits", calibration=None, samples=None, eval_data=None, eval_split="val", eval_limit=50,
                 opset=DEFAULT_OPSET, min_agreement=None, int8_scope="full", echo=print):
    """Export a trained `.keras` model; returns the manifests written.

    Args:
        model_path: the trained model file.
        out: output folder; with one artifact it lands there, with several each gets
            `out/<format>_<precision>/`; a `manifest.json` sits beside each.
        formats: of "saved_model", "onnx", "tflite".
        precisions: TFLite precisions ("fp32", "fp16", "int8"); the other formats are float32.
        input_size: (height, width) the network runs at; default `default_input_size`.
        dynamic: run the network at each image's own size (models whose code supports it).
        output: "logits" (logits and labels), "labels" or "cams".
        calibration: folder of images (or a VOC root) for int8 calibration (needed for int8)
            and the self-check's samples.
        samples: folder of images for the self-check (default: the calibration images, else
            synthetic scenes).
        eval_data: a labelled dataset root (VOC layout); fp16 and int8 checks then also report
            the mIoU of the Keras graph and of the artifact on `eval_split`.
        opset: the ONNX opset.
        min_agreement: the share of pixels whose labels must agree for fp16 and int8
            artifacts, instead of `AGREEMENT`'s (float32 keeps its bar and logit tolerance).
        int8_scope: "full" (every op int8 that passes the self-check, falling back op type by
            op type) or "weights" (only convolutions and dense layers int8); `INT8_SCOPES`.

    Raises:
        ModelError: not a trained model. ExportError: the model cannot be exported as asked.
        ExportCheckError: an artifact's outputs part from the Keras model's (artifact and
        manifest are kept for inspection).
    """
    from wsss_keras.backend import current_backend

    pairs = check_request(formats, precisions)
    if output not in OUTPUTS:
        raise ExportError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}.")
    if int8_scope not in INT8_SCOPES:
        raise ExportError(f"int8 scope {int8_scope!r}: choose one of {', '.join(INT8_SCOPES)}.")
    if any(precision == "int8" for _, precision in pairs) and calibration is None:
        raise ExportError("int8 needs calibration images: pass --calibration DIR (a folder of images like the ones the model will see).")
    calibration, samples = image_folder(calibration, "calibration"), image_folder(samples, "sample")
    if current_backend() != "tensorflow":
        return _export_in_subprocess(dict(
            model_path=os.fspath(model_path), out=os.fspath(out), formats=list(formats), precisions=list(precisions),
            input_size=None if input_size is None else list(input_size), dynamic=dynamic, output=output,
            calibration=calibration, samples=samples, eval_data=eval_data, eval_split=eval_split,
            eval_limit=eval_limit, opset=opset, min_agreement=min_agreement, int8_scope=int8_scope), echo)
    from wsss_keras.pipelines.model_io import load_model

    model = load_model(model_path)
    input_size = tuple(input_size) if input_size else default_input_size(model)
    graph = deployment_graph(model, input_size, output, dynamic)
    calibration_images = None if calibration is None else sample_images(calibration, input_size, CALIBRATION_LIMIT)
    check_images = list(sample_images(samples or calibration, input_size))
    check_images.append(np.ascontiguousarray(check_images[0][: input_size[0] * 3 // 4, : input_size[1] * 5 // 8]))  # another size
    eval_dataset = None
    if eval_data is not None:
        from wsss_keras.data import open_dataset

        eval_dataset = open_dataset(eval_data, eval_split)
    name = model_name(model, os.fspath(model_path))
    manifests, failures = [], []
    for fmt, precision in pairs:
        folder = out if len(pairs) == 1 else os.path.join(out, f"{fmt}_{precision}")
        os.makedirs(folder, exist_ok=True)
        echo(f"[export] {fmt} {precision} -> {folder}")
        target = artifact_path(folder, fmt, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        path, check = write_checked(graph, fmt, precision, folder, calibration_images, opset, model_path, name,
                                    lambda artifact: self_check(graph, artifact, fmt, precision, check_images,
                                                                eval_dataset if precision != "fp32" else None,
                                                                eval_limit, echo,
                                                                None if precision == "fp32" else min_agreement),
                                    echo, int8_scope)
        manifest = build_manifest(graph, os.fspath(model_path), path, fmt, precision, input_size, output, dynamic, opset, check)
        # Beside the artifact: the export folder, or Triton's version folder.
        beside = folder if os.path.isdir(path) else os.path.dirname(path)
        with open(os.path.join(beside, MANIFEST_FILE), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
        manifests.append(manifest)
        if not check["passed"]:
            failures.append(f"{fmt} {precision}: {check['message']}")
    if failures:
        raise ExportCheckError("self-check failed: " + "; ".join(failures) + f" (artifacts and manifests kept in {out}).")
    return manifests


def write_checked(graph, fmt, precision, folder, calibration_images, opset, model_path, name, check_artifact, echo,
                  int8_scope="full"):
    """Write one artifact (`name`: Triton's model name) and check it: (path, check record). int8
    tries its float fallbacks until one passes, else keeps the attempt whose labels agreed best."""
    attempts = write_artifacts(graph, fmt, precision, folder, calibration_images, opset, name, int8_scope)
    best = None  # (agreement, flatbuffer bytes, check) of the best failed int8 attempt
    while True:
        try:
            path, notes = next(attempts)
        except StopIteration:
            break
        except Exception as error:
            raise ExportError(f"{model_path}: {fmt} {precision} export failed ({type(error).__name__}: "
                              f"{_first_lines(error)}).") from None
        again = "trying again with " if best is not None else ""
        if "int8_ops" in notes:
            echo(f"[export] int8: {again}only {', '.join(notes['int8_ops'])} in int8")
        elif again:
            echo(f"[export] int8: {again}{', '.join(notes['float_ops'])} in float")
        check = {**check_artifact(path), **notes}
        if check["passed"]:
            break
        if precision == "int8" and (best is None or (check["label_agreement"] or 0) > best[0]):
            with open(path, "rb") as handle:
                best = (check["label_agreement"] or 0, handle.read(), check)
    attempts.close()
    if not check["passed"] and best is not None and best[2] is not check:
        with open(path, "wb") as handle:
            handle.write(best[1])
        check = best[2]
        echo(f"[export] int8: keeping the attempt that agreed best ({100 * best[0]:.2f} %)")
    return path, check


def _first_lines(error, count=3):
    """The message of `error` in one line: for TensorFlow's traced-code errors, the raised
    error's own text rather than the traceback before it."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Keras colours its messages
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [index for index, line in enumerate(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    if raised:
        lines = [re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", line) for line in lines[raised[-1]:]]
        lines = [line for line in lines if line and not line.startswith("Exception encountered")]
        cut = next((index for index, line in enumerate(lines) if line.startswith("Arguments received")), len(lines))
        lines = lines[:cut]
    return " ".join(lines[:count])[:600]


def _export_in_subprocess(arguments, echo):
    """`export_model` in a fresh process on the TensorFlow backend (Keras exports from there);
    its lines are echoed, its errors re-raised here with their message."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    echo("[export] the model is exported from TensorFlow: running in a TensorFlow subprocess")
    process = subprocess.run([sys.executable, "-m", "wsss_keras.export", json.dumps(arguments)], env=env,
                             capture_output=True, text=True)
    for line in process.stdout.splitlines():
        if line.startswith("["):
            echo(line)
    if process.returncode != 0:
        lines = [line for line in process.stderr.splitlines() if line.strip()]
        marked = [line for line in lines if line.startswith(_ERROR_MARK)]
        if not marked:
            raise ExportError("export subprocess failed:\n" + "\n".join(lines[-20:]))
        kind, message = marked[-1][len(_ERROR_MARK):].split(": ", 1)
        raise _ERROR_KINDS.get(kind, ExportError)(message)
    out, pairs = arguments["out"], check_request(arguments["formats"], arguments["precisions"])
    folders = [out] if len(pairs) == 1 else [os.path.join(out, f"{fmt}_{precision}") for fmt, precision in pairs]
    manifests = []
    for folder in folders:
        with open(os.path.join(folder, MANIFEST_FILE), encoding="utf-8") as handle:
            manifests.append(json.load(handle))
    return manifests


_ERROR_MARK = "wsss-export-error: "
_ERROR_KINDS = {kind.__name__: kind for kind in (ExportError, ExportCheckError, ModelError, DataError, WSSSError)}


def _main(argv):
    """The subprocess's entry: `python -m wsss_keras.export '<export_model arguments as JSON>'`."""
    try:
        export_model(**json.loads(argv[1]), echo=lambda line: print(line, flush=True))
    except WSSSError as error:
        print(f"{_ERROR_MARK}{type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
