"""The artifact formats and precisions an export asks for (`check_request`), where each
artifact goes, and their writers: SavedModel and ONNX (and Triton's ONNX model repository)
through Keras's exporters, TFLite through a SavedModel and TensorFlow's converter."""

import os

from wsss_keras.export.errors import ExportError
from wsss_keras.export.int8 import int8_flatbuffers
from wsss_keras.export.onnx_fusion import fuse_onnx_file
from wsss_keras.export.onnx_int8 import onnx_int8_files
from wsss_keras.export.tflite import litert_converter
from wsss_keras.export.triton import triton_config
from wsss_keras.training.keras_internals import no_default_save_signatures

FORMATS = ("saved_model", "onnx", "tflite", "triton")
PRECISIONS = ("fp32", "fp16", "int8")
ARTIFACT_NAMES = {"saved_model": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite", "triton": "model.onnx"}
DEFAULT_OPSET = 17
# `--onnx-attention`: ONNX's own ops, or onnxruntime's contrib MultiHeadAttention (onnx_fusion).
ONNX_ATTENTIONS = ("standard", "onnxruntime")
FORMAT_NAMES = {"saved_model": "SavedModel", "onnx": "ONNX", "tflite": "TFLite", "triton": "Triton"}
# The precisions each format is written in; a format asked for with none of its own is float32.
FORMAT_PRECISIONS = {"saved_model": ("fp32",), "onnx": ("fp32", "int8"), "tflite": PRECISIONS, "triton": ("fp32",)}


def check_request(formats, precisions):
    """The (format, precision) pairs to export: each format with the asked precisions it takes
    (`FORMAT_PRECISIONS`; float32 where it takes none of them); raises ExportError on a
    precision no asked format takes."""
    formats, precisions = list(formats), list(precisions or ["fp32"])
    for fmt in formats:
        if fmt not in FORMATS:
            raise ExportError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ExportError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
        if not any(precision in FORMAT_PRECISIONS[fmt] for fmt in formats):
            takers = [fmt for fmt in FORMATS if precision in FORMAT_PRECISIONS[fmt]]
            names = "/".join(FORMAT_NAMES[fmt] for fmt in takers)
            raise ExportError(f"precision {precision} is a{'n' if names[0] in 'AEIOU' else ''} {names} precision; add "
                              f"--format {takers[-1]} or use fp32 (SavedModel and Triton export float32).")
    return [(fmt, precision) for fmt in formats
            for precision in ([p for p in precisions if p in FORMAT_PRECISIONS[fmt]] or ["fp32"])]


def artifact_folder(out, pairs, fmt, precision):
    """The folder of one (format, precision) artifact: `out` itself when it is the only one,
    else `out/<format>_<precision>/`."""
    return out if len(pairs) == 1 else os.path.join(out, f"{fmt}_{precision}")


def artifact_path(out_dir, fmt, name):
    """Where `fmt`'s artifact goes in `out_dir`; Triton's is `<name>/1/model.onnx` of a model
    repository (version 1 of model `name`)."""
    if fmt == "triton":
        return os.path.join(out_dir, name, "1", ARTIFACT_NAMES[fmt])
    return os.path.join(out_dir, ARTIFACT_NAMES[fmt])


def write_artifacts(graph, fmt, precision, out_dir, calibration=None, opset=DEFAULT_OPSET, name="model",
                    int8_scope="full", onnx_attention="standard"):
    """Export `graph` into `out_dir` as `fmt`: yields (artifact path, notes). Every format
    yields once, except int8, which yields again with more ops kept in float each time
    (`int8_flatbuffers`, by `int8_scope`) for as long as the caller asks, so the self-check
    can choose."""
    import keras

    path = artifact_path(out_dir, fmt, name)
    spec = keras.InputSpec(shape=(None, None, None, 3), dtype="uint8", name="image")
    with no_default_save_signatures():
        if fmt == "saved_model":
            graph.export(path, format="tf_saved_model", input_signature=[spec], verbose=False)
            yield path, {}
        elif fmt in ("onnx", "triton"):
            yield from _write_onnx(graph, fmt, spec, path, out_dir, opset, name, precision, calibration, int8_scope,
                                   onnx_attention == "onnxruntime")
        else:
            yield from _write_tflite(graph, precision, spec, path, calibration, int8_scope)


def _write_onnx(graph, fmt, spec, path, out_dir, opset, name, precision="fp32", calibration=None,
                int8_scope="full", attention=False):
    """The ONNX graph, its LayerNorm and GELU chains rewritten for onnxruntime's fused kernels
    (`fuse_onnx_file`); int8's once per quantisation level (`onnx_int8_files`); for Triton,
    inside a model repository with its `config.pbtxt`."""
    import tempfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    if precision == "int8":
        with tempfile.TemporaryDirectory() as scratch:
            float_path = os.path.join(scratch, "float.onnx")
            graph.export(float_path, format="onnx", input_signature=[spec], opset_version=int(opset), verbose=False)
            fused = fuse_onnx_file(float_path, attention)
            for artifact, notes in onnx_int8_files(float_path, path, calibration, int8_scope):
                yield artifact, {"opset": int(opset), "fused": fused, **notes}
        return
    graph.export(path, format="onnx", input_signature=[spec], opset_version=int(opset), verbose=False)
    fused = fuse_onnx_file(path, attention)
    if fmt == "triton":
        with open(os.path.join(out_dir, name, "config.pbtxt"), "w", encoding="utf-8") as handle:
            handle.write(triton_config(name, graph.label_count, graph.output_kind))
    yield path, {"opset": int(opset), "fused": fused}


def _write_tflite(graph, precision, spec, path, calibration, int8_scope):
    """The `.tflite` flatbuffer; int8's once per float fallback (`int8_flatbuffers`)."""
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
