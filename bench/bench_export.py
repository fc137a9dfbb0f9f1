"""The quickstart model deployed: latency (batch 1 and 8), size and val mIoU of Keras on each
backend, ONNX Runtime, and LiteRT float32 / float16 / int8 (both int8 scopes). Prints figures,
asserts nothing.

    python bench/bench_export.py [--run DIR] [--repeat 10] [--threads 2]

--run is a `wsss quickstart --out DIR` folder (its model `toco_doei/model.keras`, its data
`data/`); without it the quickstart runs first into a temporary folder. The artifacts come from
`wsss export` (ONNX fp32/int8 and TFLite fp32/fp16/int8, int8 calibrated on the train images,
once with its default `--int8-scope full` and once with `weights`: ONNX's dynamic). Every
runtime gets the same inputs: uint8 images of the network's size (the synthetic images' own,
128) for latency (the exported graphs resize inside, the Keras arms get the normalised image),
and the val images for mIoU (one view, no flip: the quickstart's predict adds a flip).
Each Keras backend runs in its own process (Keras fixes its backend at import).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

KERAS_ARM = r"""
import json, sys, time
import numpy as np
from keras import ops
from wsss_keras.data import open_dataset
from wsss_keras.data.transforms import normalize
from wsss_keras.evaluation.metrics import ConfusionMatrix
from wsss_keras.ops.cam import resize_bilinear
from wsss_keras.pipelines.inference import MultiScaleSegmentation
from wsss_keras.pipelines.model_io import load_model

model_path, data, repeat, side = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = load_model(model_path)
size = (side, side)
runner = MultiScaleSegmentation(model)
rng = np.random.default_rng(0)
timings = {}
for batch in (1, 8):
    images = normalize(rng.integers(0, 256, (batch,) + size + (3,)).astype(np.uint8), model.image_mean, model.image_std)
    runner.predict_on_batch(images)
    runner.predict_on_batch(images)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.asarray(runner.predict_on_batch(images))
        times.append(time.perf_counter() - start)
    timings[batch] = 1000 * float(np.median(times))
dataset = open_dataset(data, "val")
matrix = ConfusionMatrix(dataset.num_classes + 1)
for index in range(len(dataset)):
    image = dataset.load_image(index)
    view = ops.convert_to_numpy(resize_bilinear(normalize(image, model.image_mean, model.image_std)[None], size))
    logits = resize_bilinear(ops.convert_to_tensor(np.asarray(runner.predict_on_batch(view))), image.shape[:2])
    matrix.update(np.asarray(ops.convert_to_numpy(logits))[0].argmax(-1), dataset.load_label_map(index))
print("RESULT " + json.dumps({"ms1": timings[1], "ms8": timings[8], "miou": 100 * matrix.scores().miou}))
"""


def keras_arm(backend, model_path, data, repeat, side):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", KERAS_ARM, model_path, data, str(repeat), str(side)], env=env,
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"Keras on {backend} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def median_ms(run, images, repeat):
    run(images)
    run(images)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def artifact_arm(run, size, data, repeat):
    """Latency and val mIoU of `run(uint8 images) -> {"labels": ...}`."""
    from wsss_keras.data import open_dataset
    from wsss_keras.evaluation.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    figures = {f"ms{batch}": median_ms(run, rng.integers(0, 256, (batch,) + size + (3,)).astype(np.uint8), repeat)
               for batch in (1, 8)}
    dataset = open_dataset(data, "val")
    matrix = ConfusionMatrix(dataset.num_classes + 1)
    for index in range(len(dataset)):
        matrix.update(np.asarray(run(dataset.load_image(index)[None])["labels"])[0], dataset.load_label_map(index))
    figures["miou"] = 100 * matrix.scores().miou
    return figures


def export_with_cli(model_path, options, out):
    """`wsss export` on TensorFlow in a subprocess; prints its progress lines, returns the process."""
    process = subprocess.run([sys.executable, "-m", "wsss_keras.cli", "--backend", "tensorflow", "export", model_path,
                              *options, "--out", out],
                             capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    print("\n".join(line for line in process.stdout.splitlines() if line.startswith(("[", "wrote"))))
    if process.returncode != 0:
        # A failed self-check keeps its artifact: report it below rather than stop.
        print(process.stderr.strip().splitlines()[-1])
    return process


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a `wsss quickstart --out DIR` folder (default: run the quickstart)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime and LiteRT threads")
    parser.add_argument("--json", default=None, help="also write the figures here (bench_all.py reads them)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export"))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run
        if run_dir is None:
            from wsss_keras.pipelines.quickstart import run_quickstart

            run_dir = os.path.join(scratch, "quickstart")
            run_quickstart(run_dir, echo=lambda line: None)
        model_path, data = os.path.join(run_dir, "toco_doei", "model.keras"), os.path.join(run_dir, "data")
        # The network runs at the synthetic images' own size (the quickstart predicts at it).
        with open(os.path.join(data, "synthetic.json"), encoding="utf-8") as handle:
            side = int(json.load(handle)["size"])
        out = os.path.join(scratch, "artifacts")
        common = ["--calibration", data, "--eval-data", data, "--input-size", str(side), str(side)]
        # int8 twice: its default scope (every op it can; ONNX static) and --int8-scope weights
        # (TFLite: convolutions and dense layers; ONNX: dense layers, dynamic).
        weights_out = os.path.join(out, "weights")
        exported = [export_with_cli(model_path, ["--format", "onnx", "--format", "tflite", "--precision", "fp32",
                                                 "--precision", "fp16", "--precision", "int8", *common], out),
                    export_with_cli(model_path, ["--format", "onnx", "--format", "tflite", "--precision", "int8",
                                                 "--int8-scope", "weights", *common], weights_out)]
        folders = {key: os.path.join(out, key) for key in ("onnx_fp32", "onnx_int8", "tflite_fp32", "tflite_fp16",
                                                            "tflite_int8")}
        folders.update({f"{key}_weights": os.path.join(weights_out, key) for key in ("onnx_int8", "tflite_int8")})
        checks = {}
        for key, folder in folders.items():
            manifest_path = os.path.join(folder, "manifest.json")
            if not os.path.isfile(manifest_path):
                print("\n".join(process.stderr[-3000:] for process in exported))
                return 1
            with open(manifest_path, encoding="utf-8") as handle:
                checks[key] = json.load(handle)["check"]
        size = (side, side)
        rows = []
        keras_mb = os.path.getsize(model_path) / 1e6
        for backend in ("tensorflow", "jax", "torch"):
            rows.append((f"Keras, {backend}", keras_mb, keras_arm(backend, model_path, data, args.repeat, side)))

        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        for key, name in (("onnx_fp32", "fp32"), ("onnx_int8", "int8, static"), ("onnx_int8_weights", "int8, dynamic")):
            onnx_path = os.path.join(folders[key], "model.onnx")
            session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            names = [output.name for output in session.get_outputs()]

            def run_onnx(images, session=session, names=names):
                return dict(zip(names, session.run(None, {"image": images})))

            rows.append((f"ONNX Runtime {name}", os.path.getsize(onnx_path) / 1e6,
                         {**artifact_arm(run_onnx, size, data, args.repeat), "check": checks[key]}))
        from wsss_deploy.litert_runner import LiteRTSegmenter

        for precision, name in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8"), ("int8_weights", "int8, weights only")):
            path = os.path.join(folders[f"tflite_{precision}"], "model.tflite")
            runner = LiteRTSegmenter(path, threads=args.threads)
            rows.append((f"LiteRT {name}", os.path.getsize(path) / 1e6,
                         {**artifact_arm(runner.run, size, data, args.repeat), "check": checks[f"tflite_{precision}"]}))

    title = (f"quickstart model (ToCo + DOEI), network input {size[0]}x{size[1]}, {args.threads} threads, "
             f"median of {args.repeat}; mIoU on the synthetic val set")
    header = ("| runtime | size (MB) | batch 1 (ms) | speed-up over Keras TF, batch 1 | batch 8 (ms) | mIoU (val) "
              "| self-check: label agreement |")
    table = [header, "|---|---|---|---|---|---|---|"]
    keras_tf = rows[0][2]["ms1"]  # Keras predict on TensorFlow, the backend that exports
    for name, megabytes, figures in rows:
        check = figures.get("check")
        agreement = "(reference)" if check is None else f"{100 * check['label_agreement']:.2f} %" + (
            "" if check["passed"] else " (under its mark)") + (
            f"; int8: only {', '.join(check['int8_ops'])}" if check.get("int8_ops") else
            f"; float: {', '.join(check['float_ops'])}" if check.get("float_ops") else
            "; products of two activations in float" if check.get("activation_products") == "float" else "")
        table.append(f"| {name} | {megabytes:.2f} | {figures['ms1']:.1f} | {keras_tf / figures['ms1']:.2f}x "
                     f"| {figures['ms8']:.1f} | {figures['miou']:.1f} "
                     f"| {agreement} |")
    print(f"\n{title}\n" + "\n".join(table))
    from results_io import write_results

    write_results(args.json, "bench_export", title, markdown="\n".join(table),
                  rows=[{"runtime": name, "mb": megabytes, **{k: v for k, v in figures.items() if k != "check"}}
                        for name, megabytes, figures in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
