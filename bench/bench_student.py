"""Teacher against compact students on a finished run: val mIoU per class, parameters, file size
per format, and latency at batch 1 and 8 for Keras, ONNX Runtime and LiteRT float32 / int8.
Prints one JSON document; asserts nothing.

    python bench/bench_student.py --run DIR --data DIR [--archs segformer_b0,mobilenet_v3_small]
        [--steps 2000] [--input-size 256] [--kd-weight 0] [--repeat 10] [--threads 2] [--tiny]

--run is a finished run folder (for `wsss quickstart --out Q`: Q/toco_doei, --data Q/data); each
student is trained there by `train_student` (skipped when `student_<arch>.keras` exists), then
exported with `export_model` (ONNX, TFLite fp32 and int8 calibrated on the train images) into a
temporary folder. Latency arms are interleaved: each repeat runs every arm once, in turn, so a
load change on a shared machine hits all of them alike; ONNX Runtime and LiteRT use --threads
threads (Keras's own thread pools are left as they are). Every arm gets the same uint8 images at
the student's input size; the Keras arm gets them normalised. --tiny trains tiny networks for a
few steps at 64 px: a proof that the script runs, not a measurement.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TINY = {
    "segformer_b0": {"backbone": {"hidden_dims": [8, 12, 16, 20], "layerwise_num_heads": [1, 1, 1, 1],
                                  "layerwise_depths": [1, 1, 1, 1]}, "projection_filters": 16},
    "mobilenet_v3_small": {"head_channels": 16},
}


def score(model, dataset, folder):
    """{miou, iou per class} of `model`'s predictions on `dataset` (one view, no flip)."""
    from wsss_keras.evaluation.folders import score_folders
    from wsss_keras.pipelines.predict import predict_folder
    from wsss_keras.pipelines.run import ground_truth_dir

    predict_folder(model, dataset, folder, overlay=False)
    scores, _ = score_folders(folder, ground_truth_dir(dataset), dataset.class_names, dataset.names)
    figures = scores.as_dict()
    return {"miou": figures["miou"], "iou": figures["iou"]}


def onnx_arm(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def litert_arm(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    shape = [None]

    def run(images):
        if shape[0] != images.shape:  # resizing re-plans the graph: only when the batch changes
            interpreter.resize_tensor_input(detail["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(detail["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def keras_arm(model):
    from wsss_keras.data.transforms import normalize

    return lambda images: model.segment_logits(normalize(images, model.image_mean, model.image_std))


def interleaved_latency(arms, side, repeat, batches=(1, 8)):
    """{arm: {"batch_1": median ms, "batch_8": ...}}; each repeat runs every arm once, in turn."""
    rng = np.random.default_rng(0)
    results = {name: {} for name in arms}
    for batch in batches:
        images = rng.integers(0, 256, (batch, side, side, 3)).astype(np.uint8)
        times = {name: [] for name in arms}
        for run in arms.values():  # warm-up: graph building, allocation
            run(images)
        for _ in range(repeat):
            for name, run in arms.items():
                start = time.perf_counter()
                run(images)
                times[name].append(time.perf_counter() - start)
        for name in arms:
            results[name][f"batch_{batch}"] = round(1000 * float(np.median(times[name])), 3)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="finished run folder (pseudo_labels/, model.keras or segmenter.keras)")
    parser.add_argument("--data", required=True, help="the dataset the run was trained on")
    parser.add_argument("--archs", default="segformer_b0,mobilenet_v3_small")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--kd-weight", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and LiteRT threads")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 64 px: proves the script runs")
    args = parser.parse_args()

    from wsss_keras.data.layouts import open_dataset
    from wsss_keras.export.api import export_model
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.student import find_teacher, student_file, train_student

    side = 64 if args.tiny else args.input_size
    val = open_dataset(args.data, "val")
    teacher_path = find_teacher(args.run)
    report = {"run": os.path.abspath(args.run), "input_size": side, "threads": args.threads, "repeat": args.repeat,
              "tiny": args.tiny, "models": {}}
    arms = {}
    with tempfile.TemporaryDirectory() as scratch:
        teacher = load_model(teacher_path)
        report["models"]["teacher"] = {
            "file": os.path.basename(teacher_path), "parameters": int(teacher.count_params()),
            "bytes": {"keras": os.path.getsize(teacher_path)},
            "val": score(teacher, val, os.path.join(scratch, "teacher")),
        }
        arms["teacher/keras"] = keras_arm(teacher)
        for arch in [a for a in args.archs.split(",") if a]:
            path = os.path.join(args.run, student_file(arch))
            if not os.path.isfile(path):
                settings = {"input_size": side, "kd_weight": args.kd_weight, **(TINY.get(arch, {}) if args.tiny else {})}
                if args.tiny:
                    settings["batch_size"] = 2
                train_student(args.run, args.data, arch, steps=2 if args.tiny else args.steps, settings=settings,
                              echo=lambda line: None)
            student = load_model(path)
            out = os.path.join(scratch, f"export_{arch}")
            files, errors = {"keras": path}, {}
            for fmt, precision, key in (("onnx", "fp32", "onnx"), ("tflite", "fp32", "tflite_fp32"),
                                        ("tflite", "int8", "tflite_int8")):
                folder = os.path.join(out, key)
                try:  # one failing format (tf2onnx on some keras-hub graphs) must not hide the others
                    export_model(path, folder, formats=(fmt,), precisions=(precision,), output="labels",
                                 calibration=os.path.join(args.data, "JPEGImages"), echo=lambda line: None)
                    files[key] = os.path.join(folder, "model.onnx" if fmt == "onnx" else "model.tflite")
                except Exception as error:  # noqa: BLE001 (recorded in the report, per format)
                    errors[key] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            report["models"][arch] = {
                "file": os.path.basename(path), "parameters": int(student.network.count_params()),
                "bytes": {fmt: os.path.getsize(file) for fmt, file in files.items()}, "export_errors": errors,
                "val": score(student, val, os.path.join(scratch, arch)),
            }
            arms[f"{arch}/keras"] = keras_arm(student)
            if "onnx" in files:
                arms[f"{arch}/onnx"] = onnx_arm(files["onnx"], args.threads)
            for key in ("tflite_fp32", "tflite_int8"):
                if key in files:
                    arms[f"{arch}/litert_{key[7:]}"] = litert_arm(files[key], args.threads)
        report["latency_ms"] = interleaved_latency(arms, side, args.repeat)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
