"""`export_model`, the export's entry: checks the request, runs on TensorFlow (or in a
TensorFlow subprocess), then writes and checks one artifact per (format, precision)
(`export_artifact`), int8 falling back op type by op type until the check passes
(`write_checked`)."""

import os
import shutil

import numpy as np

from wsss_keras.export.build import OUTPUTS, default_input_size, deployment_graph
from wsss_keras.export.check import self_check
from wsss_keras.export.errors import ExportCheckError, ExportError, first_lines
from wsss_keras.export.formats import (
    DEFAULT_OPSET,
    FORMAT_NAMES,
    ONNX_ATTENTIONS,
    artifact_folder,
    artifact_path,
    check_request,
    write_artifacts,
)
from wsss_keras.export.int8 import INT8_SCOPES
from wsss_keras.export.manifest import build_manifest, model_name, write_manifest
from wsss_keras.export.samples import CALIBRATION_LIMIT, image_folder, sample_images
from wsss_keras.export.tf_subprocess import export_in_subprocess


def export_model(model_path, out, formats=("onnx",), precisions=("fp32",), input_size=None, dynamic=False,
                 output="logits", calibration=None, samples=None, eval_data=None, eval_split="val", eval_limit=50,
                 opset=DEFAULT_OPSET, min_agreement=None, int8_scope="full", onnx_attention="standard", echo=print):
    """Export a trained `.keras` model; returns the manifests written.

    Args:
        model_path: the trained model file.
        out: output folder; with one artifact it lands there, with several each gets
            `out/<format>_<precision>/`; a `manifest.json` sits beside each.
        formats: of "saved_model", "onnx", "tflite".
        precisions: "fp32", "fp16", "int8": TFLite takes all three, ONNX fp32 and int8
            (onnxruntime's quantisation, `onnx_int8`), SavedModel and Triton are float32.
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
            op type; ONNX: static) or "weights" (only convolutions and dense layers int8; ONNX:
            dense layers, dynamic, no calibration); `INT8_SCOPES`.
        onnx_attention: "standard" (ONNX's own ops) or "onnxruntime" (each attention as
            onnxruntime's contrib MultiHeadAttention: faster there, onnxruntime only).

    Raises:
        ModelError: not a trained model. ExportError: the model cannot be exported as asked.
        ExportCheckError: an artifact's outputs part from the Keras model's (artifact and
        manifest are kept for inspection).
    """
    from wsss_keras.backend import current_backend

    from wsss_keras.pipelines.model_io import check_model_file

    pairs = checked_pairs(formats, precisions, output, int8_scope, calibration)
    if onnx_attention not in ONNX_ATTENTIONS:
        raise ExportError(f"ONNX attention {onnx_attention!r}: choose one of {', '.join(ONNX_ATTENTIONS)}.")
    calibration, samples = image_folder(calibration, "calibration"), image_folder(samples, "sample")
    check_model_file(model_path)  # before a TensorFlow subprocess is started for a file that is no model
    if current_backend() != "tensorflow":
        return export_in_subprocess({
            "model_path": os.fspath(model_path), "out": os.fspath(out), "formats": list(formats),
            "precisions": list(precisions), "input_size": None if input_size is None else list(input_size),
            "dynamic": dynamic, "output": output, "calibration": calibration, "samples": samples,
            "eval_data": eval_data, "eval_split": eval_split, "eval_limit": eval_limit, "opset": opset,
            "min_agreement": min_agreement, "int8_scope": int8_scope, "onnx_attention": onnx_attention}, echo)
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
        manifest = export_artifact(
            graph, fmt, precision, artifact_folder(out, pairs, fmt, precision), model_path, name, input_size, output,
            dynamic, opset, calibration_images, check_images, eval_dataset if precision != "fp32" else None,
            eval_limit, None if precision == "fp32" else min_agreement, int8_scope, echo, onnx_attention)
        manifests.append(manifest)
        if not manifest["check"]["passed"]:
            failures.append(f"{fmt} {precision}: {manifest['check']['message']}")
    if failures:
        raise ExportCheckError("self-check failed: " + "; ".join(failures) + f" (artifacts and manifests kept in {out}).")
    return manifests


def checked_pairs(formats, precisions, output, int8_scope, calibration):
    """`check_request`'s (format, precision) pairs, once `output`, `int8_scope` and int8's
    calibration images are checked too; raises ExportError."""
    pairs = check_request(formats, precisions)
    if output not in OUTPUTS:
        raise ExportError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}.")
    if int8_scope not in INT8_SCOPES:
        raise ExportError(f"int8 scope {int8_scope!r}: choose one of {', '.join(INT8_SCOPES)}.")
    # ONNX int8 with scope "weights" quantises activations per input at run time: no calibration.
    calibrated = [fmt for fmt, precision in pairs if precision == "int8" and (fmt != "onnx" or int8_scope == "full")]
    if calibrated and calibration is None:
        raise ExportError(f"{FORMAT_NAMES[calibrated[0]]} int8 needs calibration images: pass --calibration DIR "
                          "(a folder of images like the ones the model will see).")
    return pairs


def export_artifact(graph, fmt, precision, folder, model_path, name, input_size, output, dynamic, opset,
                    calibration_images, check_images, eval_dataset, eval_limit, min_agreement, int8_scope, echo,
                    onnx_attention="standard"):
    """Write, check and describe one artifact in `folder` (the one before is removed); returns
    its manifest, written beside it, whether its check passed or not."""
    os.makedirs(folder, exist_ok=True)
    echo(f"[export] {fmt} {precision} -> {folder}")
    target = artifact_path(folder, fmt, name)
    if os.path.isdir(target):
        shutil.rmtree(target)
    path, check = write_checked(graph, fmt, precision, folder, calibration_images, opset, model_path, name,
                                lambda artifact: self_check(graph, artifact, fmt, precision, check_images,
                                                            eval_dataset, eval_limit, echo, min_agreement),
                                echo, int8_scope, onnx_attention)
    if onnx_attention == "onnxruntime" and check.get("fused", {}).get("attention") == 0:
        echo(f"[export] {fmt}: no attention in the form onnxruntime's MultiHeadAttention replaces (one whose "
             "probabilities nothing else reads); the file stays standard ONNX")
    manifest = build_manifest(graph, os.fspath(model_path), path, fmt, precision, input_size, output, dynamic, opset, check)
    write_manifest(manifest, folder, path)
    return manifest


def write_checked(graph, fmt, precision, folder, calibration_images, opset, model_path, name, check_artifact, echo,
                  int8_scope="full", onnx_attention="standard"):
    """Write one artifact (`name`: Triton's model name) and check it: (path, check record). int8
    tries its float fallbacks until one passes, else keeps the attempt whose labels agreed best."""
    attempts = write_artifacts(graph, fmt, precision, folder, calibration_images, opset, name, int8_scope,
                               onnx_attention)
    best = None  # (agreement, flatbuffer bytes, check) of the best failed int8 attempt
    while True:
        try:
            path, notes = next(attempts)
        except StopIteration:
            break
        except Exception as error:
            raise ExportError(f"{model_path}: {fmt} {precision} export failed ({type(error).__name__}: "
                              f"{first_lines(error)}).") from None
        again = "trying again with " if best is not None else ""
        if "int8_ops" in notes:
            echo(f"[export] int8: {again}only {', '.join(notes['int8_ops'])} in int8")
        elif again and "float_ops" in notes:
            echo(f"[export] int8: {again}{', '.join(notes['float_ops'])} in float")
        elif again:
            echo(f"[export] int8: {again}the products of two activations (attention) in float")
        check = {**check_artifact(path), **notes}
        if check["passed"]:
            break
        if precision == "int8" and (best is None or (check["label_agreement"] or 0) > best[0]):
            with open(path, "rb") as handle:
                best = (check["label_agreement"] or 0, handle.read(), check)
        if precision == "int8":
            # Said before the next level starts: each calibrates the whole model again, which at
            # full size (ViT-B/16 at 448) took 18-19 minutes a level on a 2-core CPU.
            echo(f"[export] int8: {check.get('message', 'the check failed')}; quantising again with more ops in "
                 "float where a level is left (each calibrates the whole model again)")
    attempts.close()
    if not check["passed"] and best is not None and best[2] is not check:
        with open(path, "wb") as handle:
            handle.write(best[1])
        check = best[2]
        echo(f"[export] int8: keeping the attempt that agreed best ({100 * best[0]:.2f} %)")
    return path, check
