"""Teacher against compact students on a finished run: val mIoU per class over seeds, with and
without distillation, parameters, file size per format, and latency at batch 1 and 8 for Keras,
ONNX Runtime and LiteRT float32 / int8; then the same size and latency columns for the
paper-size teacher (ToCo's ViT-B/16 at 448, random weights) against untrained students at 448
and 512. Prints figures, asserts nothing (issue #27).

    python bench/bench_student.py [--run DIR] [--data DIR] [--archs segformer_b0,mobilenet_v3_small]
        [--seeds 0,1,2] [--kd-weights 0,0.5] [--kd-archs segformer_b0] [--steps 400] [--input-size 128]
        [--repeat 20] [--threads 2] [--keep DIR] [--no-paper] [--paper-sizes 448,512] [--paper-repeat 5]
        [--paper-teacher-int8] [--json PATH] [--tiny]

--run is a finished run folder (a `wsss quickstart --out Q` folder Q is taken as Q/toco_doei with
--data Q/data); without it the quickstart runs first into a temporary folder. Each student
(arch, seed, KD weight) is trained by `train_student` in its own folder (under --keep, or a
temporary one) holding symlinks to the run's `pseudo_labels/` and teacher file, so seeds and KD
arms do not overwrite each other's `student_<arch>.keras`; with --keep a rerun skips the students
already trained. `settings["seed"]` seeds the weights and the loader; every arm of one seed sees
the same seed. KD arms (`--kd-weights`, on the archs of --kd-archs) are paired by seed against
KD 0 (Student's t 95 % interval of the paired difference, `quality_common.paired_interval`).

Quality: teacher and students are scored on the val split with one view, no flip
(`predict_folder` + `score_folders`: per-class IoU). The students of the first seed at KD 0 are
exported (`export_model`: ONNX, TFLite fp32, TFLite int8 calibrated on the train images, at the
students' input size, output labels; the int8 self-check's label agreement and verdict are
recorded as the export gives them, thresholds unchanged) and each artifact is scored on every
val image, next to the Keras model on the same loop, so "int8 within 1 mIoU of float32" reads
off. The run's teacher is exported the same way.

Latency: arms are interleaved (each repeat runs every arm once, in turn, so a load change on
a shared machine hits all of them alike), all on the same uint8 images at the network's input
size (the Keras arm gets them normalised and runs `segment_logits` in a `tf.function` on
TensorFlow). ONNX Runtime, LiteRT and TensorFlow's thread pools all use --threads threads. The
machine's load average is recorded before and after. Paper-size: the ToCo ViT-B/16 network is
built as `wsss run toco_voc --weights random` builds it (`pipelines.toco.build_model`, 21 VOC
classes), the students by `build_student` (21 classes, untrained); ViT-B runs batch 1 only. The
int8 self-check of an untrained network compares near-random labels, so the paper-size int8
exports are written with `min_agreement=0` (the first full-int8 attempt is kept): their size and
latency are those of a full-int8 graph, their agreement means nothing. The teacher's int8 export
(100 calibration images at 448 through ViT-B) is off unless --paper-teacher-int8.

--tiny trains tiny networks for a few steps at 64 px and skips the paper-size part: a proof
that the script runs, not a measurement.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

TINY = {
    "segformer_b0": {"backbone": {"hidden_dims": [8, 12, 16, 20], "layerwise_num_heads": [1, 1, 1, 1],
                                  "layerwise_depths": [1, 1, 1, 1]}, "projection_filters": 16},
    "mobilenet_v3_small": {"head_channels": 16},
}
FORMATS = (("onnx", "fp32", "onnx"), ("tflite", "fp32", "tflite_fp32"), ("tflite", "int8", "tflite_int8"))


def quiet(line):
    pass


def score(model, dataset, folder):
    """{miou, iou per class} (percent) of `model`'s predictions on `dataset` (one view, no flip)."""
    from wsss_keras.evaluation.folders import score_folders
    from wsss_keras.pipelines.predict import predict_folder
    from wsss_keras.pipelines.run import ground_truth_dir

    predict_folder(model, dataset, folder, overlay=False)
    scores, _ = score_folders(folder, ground_truth_dir(dataset), dataset.class_names, dataset.names)
    figures = scores.as_dict()
    return {"miou": 100 * figures["miou"], "iou": {name: 100 * value for name, value in figures["iou"].items()}}


def labels_miou(run, dataset):
    """mIoU (percent) of `run(uint8 image (1, H, W, 3)) -> label map (H, W)` on every image of `dataset`."""
    from wsss_keras.evaluation.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(dataset.num_classes, dataset.class_names)
    for index in range(len(dataset)):
        matrix.update(np.asarray(run(dataset.load_image(index)[None])).reshape(dataset.load_label_map(index).shape),
                      dataset.load_label_map(index))
    return 100 * matrix.scores().miou


def onnx_arm(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def litert_arm(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    shape = [None]

    def run(images):
        if shape[0] != images.shape:  # resizing re-plans the graph: only when the shape changes
            interpreter.resize_tensor_input(detail["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(detail["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def compiled(function):
    """`function` in a tf.function on TensorFlow (what `predict_on_batch` does), else as is."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, reduce_retracing=True)


def keras_arm(model):
    """uint8 images -> logits at the network's size, through the model's normalisation."""
    from keras import ops

    from wsss_keras.data.transforms import normalize

    forward = compiled(model.segment_logits)
    return lambda images: ops.convert_to_numpy(forward(normalize(images, model.image_mean, model.image_std)))


def keras_labels(model, side):
    """uint8 image (1, H, W, 3) -> label map at its size: the image resized to the network's
    `side` (as the exported graphs do), logits upsampled back, argmax (the pipelines' way)."""
    import cv2
    from keras import ops

    from wsss_keras.ops.cam import resize_bilinear

    logits = keras_arm(model)

    def run(images):
        view = images if images.shape[1:3] == (side, side) else cv2.resize(
            images[0], (side, side), interpolation=cv2.INTER_LINEAR)[None]
        out = resize_bilinear(ops.convert_to_tensor(logits(view)), images.shape[1:3])
        return np.asarray(ops.convert_to_numpy(out)).argmax(-1)[0]

    return run


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


def export_all(path, out, side, calibration, eval_data=None, pairs=FORMATS, min_agreement=None, export=True):
    """Export `path` once per (format, precision) into out/<key>/ (one failure hides no other);
    returns ({key: artifact file}, {key: self-check record}, {key: error})."""
    from wsss_keras.export.api import export_model

    files, checks, errors = {}, {}, {}
    for fmt, precision, key in pairs:
        folder = os.path.join(out, key)
        artifact = os.path.join(folder, "model.onnx" if fmt == "onnx" else "model.tflite")
        manifest = os.path.join(folder, "manifest.json")
        start = time.perf_counter()
        if export and not (os.path.isfile(artifact) and os.path.isfile(manifest)):  # --keep: exported before
            try:
                export_model(path, folder, formats=(fmt,), precisions=(precision,), input_size=(side, side),
                             output="labels", calibration=calibration, eval_data=eval_data, eval_limit=10 ** 6,
                             min_agreement=None if precision == "fp32" else min_agreement, echo=quiet)
            except Exception as error:  # noqa: BLE001 (a failed self-check keeps its artifact: recorded below)
                errors[key] = f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"
        if os.path.isfile(manifest):
            with open(manifest, encoding="utf-8") as handle:
                checks[key] = {k: v for k, v in json.load(handle)["check"].items()}
            checks[key]["export_seconds"] = round(time.perf_counter() - start, 1)
        if os.path.isfile(artifact):
            files[key] = artifact
    return files, checks, errors


# The ViT-B teacher's ONNX file through Keras's torch-backend exporter (torch.onnx): tf2onnx's
# conversion of ViT-B/16 at 448 passed 12 GB of memory on this 24 GB machine beside another job.
TORCH_ONNX = r"""
import json, os, sys, time
import numpy as np
import keras
from wsss_keras.export.build import deployment_graph
from wsss_keras.pipelines.model_io import load_model

model_path, out, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.time()
graph = deployment_graph(load_model(model_path), (side, side), "labels")
os.makedirs(out, exist_ok=True)
path = os.path.join(out, "model.onnx")
spec = keras.InputSpec(shape=(1, side, side, 3), dtype="uint8", name="image")  # static: the tracer needs it
graph.export(path, format="onnx", input_signature=[spec], opset_version=18, verbose=False)
import onnxruntime
session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
images = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype(np.uint8)
agree = total = 0
for image in images:
    reference = keras.ops.convert_to_numpy(graph(keras.ops.convert_to_tensor(image[None]))["labels"])
    labels = session.run(None, {session.get_inputs()[0].name: image[None]})[0]
    agree += int((reference == labels).sum())
    total += reference.size
check = {"images": len(images), "label_agreement": agree / total, "passed": agree / total >= 0.999,
         "exporter": "Keras torch backend (torch.onnx), opset 18, batch fixed at 1", "note": "random images; the network's random weights"}
with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as handle:
    json.dump({"check": check}, handle)
print("exported in", round(time.time() - start), "s")
"""
TF_EXPORT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from bench_student import export_all
files, checks, errors = export_all(*json.loads(sys.argv[2]))
print("ERRORS " + json.dumps(errors))
"""


def available_mb():
    """MemAvailable of the machine, in MB."""
    with open("/proc/meminfo", encoding="utf-8") as handle:
        return next((int(line.split()[1]) // 1024 for line in handle if line.startswith("MemAvailable:")), 1 << 30)


def capped(command, cap_mb, env=None):
    """Run `command`; kill it (it alone) once its resident memory passes `cap_mb` or the machine
    has under 1 GB left (the machine is shared: a killed child loses one column, an OOM kill
    could take another job). Returns
    (return code, peak MB, stdout+stderr tail, killed)."""
    import subprocess

    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak, killed = 0, False
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/status", encoding="utf-8") as handle:
                    rss = next((int(line.split()[1]) // 1024 for line in handle if line.startswith("VmRSS:")), 0)
            except OSError:
                rss = 0
            peak = max(peak, rss)
            if rss > cap_mb or available_mb() < 1024:
                process.kill()
                killed = True
            time.sleep(0.25)
        log.seek(0)
        return process.returncode, peak, log.read()[-2000:], killed


def capped_export(path, out, side, calibration, pairs, cap_mb, torch_onnx=True, torch_first=False):
    """`export_all` in a child process under a memory cap; the ONNX file through the torch
    exporter (`TORCH_ONNX`) when tf2onnx's conversion is killed or fails. Returns
    (files, checks, errors, notes)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    errors, notes = {}, {}
    for pair in pairs:
        key = pair[2]
        if key == "onnx" and torch_first and not os.path.isfile(os.path.join(out, "onnx", "manifest.json")):
            code, tail, killed = 1, "tf2onnx not tried (--paper-teacher-onnx torch)", False
        else:
            code, peak, tail, killed = capped([sys.executable, "-c", TF_EXPORT, HERE,
                                               json.dumps([path, out, side, calibration, None, [pair], 0.0])], cap_mb, env)
            notes[key] = {"peak_mb": peak, "cap_mb": cap_mb}
        if killed:
            errors[key] = f"export killed at {peak} MB of memory (cap {cap_mb} MB, or under 1 GB left on the machine)"
        elif code != 0 or "ERRORS {}" not in tail:
            errors[key] = " ".join(tail.split())[-400:]
        if key == "onnx" and key in errors and torch_onnx:
            folder = os.path.join(out, "onnx")
            if os.path.isdir(folder):
                import shutil

                shutil.rmtree(folder)
            code, peak, tail, killed = capped([sys.executable, "-c", TORCH_ONNX, path, folder, str(side)], cap_mb,
                                              dict(env, KERAS_BACKEND="torch"))
            notes["onnx_torch"] = {"peak_mb": peak, "cap_mb": cap_mb, "returncode": code, "killed": killed}
            if code != 0:
                errors["onnx_torch"] = " ".join(tail.split())[-400:]
    files, checks, _ = export_all(path, out, side, calibration, pairs=[p for p in pairs if p[2] not in errors or
                                                                      os.path.isfile(os.path.join(out, p[2], "manifest.json"))],
                                  min_agreement=0.0, export=False)
    return files, checks, errors, notes


def runtime_arms(prefix, model, files, threads):
    arms = {f"{prefix}/keras": keras_arm(model)}
    if "onnx" in files:
        arms[f"{prefix}/onnx"] = onnx_arm(files["onnx"], threads)
    for key in ("tflite_fp32", "tflite_int8"):
        if key in files:
            arms[f"{prefix}/litert_{key[7:]}"] = litert_arm(files[key], threads)
    return arms


def arm_folder(root, run_dir, teacher_path, arch, seed, kd):
    """The folder a student (arch, seed, kd) trains in: the run's pseudo-labels and teacher, linked."""
    folder = os.path.join(root, "students", f"{arch}_seed{seed}_kd{kd:g}")
    os.makedirs(folder, exist_ok=True)
    for source in (os.path.join(run_dir, "pseudo_labels"), teacher_path):
        link = os.path.join(folder, os.path.basename(source))
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(source), link)
    return folder


def train_arm(args, root, run_dir, teacher_path, arch, seed, kd, side):
    from wsss_keras.pipelines.student import student_file, train_student

    folder = arm_folder(root, run_dir, teacher_path, arch, seed, kd)
    path = os.path.join(folder, student_file(arch))
    lock = os.path.join(folder, "training.pid")
    while not os.path.isfile(path) and os.path.isfile(lock):  # another process (--train-only) trains it
        with open(lock, encoding="utf-8") as handle:
            owner = int(handle.read().strip() or 0)
        if owner == os.getpid() or not os.path.exists(f"/proc/{owner}"):
            break
        time.sleep(10)
    if not os.path.isfile(path):
        with open(lock, "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        settings = {"input_size": side, "kd_weight": kd, "seed": seed, **(TINY.get(arch, {}) if args.tiny else {})}
        if args.tiny:
            settings["batch_size"] = 2
        start = time.perf_counter()
        try:
            train_student(folder, args.data, arch, steps=2 if args.tiny else args.steps, settings=settings, echo=quiet)
        finally:
            os.remove(lock)
        print(f"[bench_student] trained {arch} seed {seed} kd {kd:g} in {time.perf_counter() - start:.0f} s", flush=True)
    summary_path = os.path.join(folder, f"{os.path.splitext(student_file(arch))[0]}_summary.json")
    summary = {}
    if os.path.isfile(summary_path):
        with open(summary_path, encoding="utf-8") as handle:
            summary = json.load(handle)
    return path, {key: summary.get(key) for key in ("steps", "batch_size", "train_seconds", "first_step_seconds",
                                                     "seconds_per_step")}


def weight_count(model):
    """Parameters of `model` (a loaded subclassed model may not count as built for count_params)."""
    return int(sum(int(np.prod(weight.shape)) for weight in model.weights))


def spread(values):
    values = np.asarray(values, float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max()), "n": int(len(values))}


def cell(values, digits=1):
    from quality_common import mean_std_cell

    return mean_std_cell(values) if digits == 1 else " / ".join(f"{v:.{digits}f}" for v in values)


def resolve_run(args, scratch):
    """(run folder, data folder): a quickstart folder Q means Q/toco_doei and Q/data; none runs the quickstart."""
    run_dir = args.run
    if run_dir is None:
        from wsss_keras.pipelines.quickstart import run_quickstart

        run_dir = os.path.join(scratch, "quickstart")
        run_quickstart(run_dir, echo=quiet)
    if os.path.isdir(os.path.join(run_dir, "toco_doei")) and os.path.isdir(os.path.join(run_dir, "data")):
        args.data = args.data or os.path.join(run_dir, "data")
        run_dir = os.path.join(run_dir, "toco_doei")
    if args.data is None:
        sys.exit("--data: the dataset the run was trained on (needed unless --run is a quickstart folder).")
    return run_dir


def set_threads(threads):
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def paper_size(args, root, data, report):
    """Parameters, file sizes and interleaved latency of ToCo ViT-B/16 at 448 (random weights)
    against untrained students at each of --paper-sizes."""
    import keras

    from wsss_keras.data.classes import VOC_CLASSES
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.student import STUDENT_DEFAULTS, build_student
    from wsss_keras.pipelines.toco import build_model
    from wsss_keras.recipes import load_recipe

    folder = os.path.join(root, "paper")
    os.makedirs(folder, exist_ok=True)
    calibration = os.path.join(data, "JPEGImages")
    voc = types.SimpleNamespace(num_classes=len(VOC_CLASSES), class_names=list(VOC_CLASSES))
    models, arms_by_size, paper = {}, {}, {}
    teacher_side = 448
    teacher_path = os.path.join(folder, f"toco_vit_b16_{teacher_side}.keras")
    start = time.perf_counter()
    if not os.path.isfile(teacher_path):
        recipe = load_recipe("toco_voc")
        model = build_model(recipe, voc, weights="random")
        model.segment_logits(keras.ops.zeros((1, teacher_side, teacher_side, 3)))
        model.save(teacher_path)
        del model
    teacher = load_model(teacher_path)
    pairs = [pair for pair in (FORMATS if args.paper_teacher_int8 else FORMATS[:2])
             if pair[2] != "onnx" or args.paper_teacher_onnx != "none"]
    files, checks, errors, notes = capped_export(teacher_path, os.path.join(folder, "export_teacher"), teacher_side,
                                                 calibration, pairs, int(args.paper_memory_cap * 1024),
                                                 torch_first=args.paper_teacher_onnx == "torch")
    encoder = getattr(teacher, "encoder", None)
    paper["teacher"] = {
        "network": "ToCo ViT-B/16 (toco_voc, random weights)", "input_size": teacher_side,
        "parameters": weight_count(teacher),
        "encoder_parameters": weight_count(encoder) if encoder is not None else None,
        "bytes": {"keras": os.path.getsize(teacher_path), **{k: os.path.getsize(f) for k, f in files.items()}},
        "export_checks": checks, "export_errors": errors, "export_memory": notes,
        "skipped": ([] if args.paper_teacher_int8 else ["tflite_int8 (100 calibration images at 448 through ViT-B on "
                                                       "this CPU; --paper-teacher-int8 to include it)"])
                   + (["onnx (--paper-teacher-onnx none)"] if args.paper_teacher_onnx == "none" else []),
        "build_and_export_seconds": round(time.perf_counter() - start, 1),
    }
    print(f"[bench_student] paper-size teacher exported in {time.perf_counter() - start:.0f} s", flush=True)
    models["teacher"] = teacher
    arms_by_size.setdefault(teacher_side, {}).update(runtime_arms(f"teacher_{teacher_side}", teacher, files, args.threads))
    for side in args.paper_sizes:
        for arch in args.archs:
            start = time.perf_counter()
            path = os.path.join(folder, f"student_{arch}_{side}.keras")
            if not os.path.isfile(path):
                settings = {**STUDENT_DEFAULTS, "input_size": side}
                student = build_student(arch, voc, settings, recipe={"train": {"crop_size": side}})
                student.segment_logits(keras.ops.zeros((1, side, side, 3)))
                student.save(path)
            student = load_model(path)
            files, checks, errors = export_all(path, os.path.join(folder, f"export_{arch}_{side}"), side, calibration,
                                               min_agreement=0.0)
            name = f"{arch}_{side}"
            paper[name] = {
                "network": f"{arch} (untrained)", "input_size": side, "parameters": int(student.network.count_params()),
                "bytes": {"keras": os.path.getsize(path), **{k: os.path.getsize(f) for k, f in files.items()}},
                "export_checks": checks, "export_errors": errors,
                "build_and_export_seconds": round(time.perf_counter() - start, 1),
            }
            print(f"[bench_student] paper-size {name} exported in {time.perf_counter() - start:.0f} s", flush=True)
            models[name] = student
            arms_by_size.setdefault(side, {}).update(runtime_arms(name, student, files, args.threads))
    latency = {}
    for side, arms in sorted(arms_by_size.items()):
        start = time.perf_counter()
        latency.update(interleaved_latency(arms, side, args.paper_repeat, batches=(1,)))
        students = {name: run for name, run in arms.items() if not name.startswith("teacher")}
        for name, figures in interleaved_latency(students, side, args.paper_repeat, batches=(8,)).items():
            latency[name].update(figures)
        print(f"[bench_student] paper-size latency at {side} in {time.perf_counter() - start:.0f} s", flush=True)
    for name, entry in paper.items():
        entry["latency_ms"] = {arm.split("/", 1)[1]: figures for arm, figures in latency.items()
                               if arm.split("/", 1)[0] == (f"teacher_{teacher_side}" if name == "teacher" else name)}
    ratios = {}
    for arch in args.archs:
        name = f"{arch}_{teacher_side}"
        if name not in paper:
            continue
        ratios[name] = {runtime: round(paper["teacher"]["latency_ms"][runtime]["batch_1"] / figures["batch_1"], 2)
                        for runtime, figures in paper[name]["latency_ms"].items()
                        if runtime in paper["teacher"]["latency_ms"]}
        ratios[name]["parameters"] = round(paper["teacher"]["parameters"] / paper[name]["parameters"], 2)
    report["paper_size"] = {"models": paper, "teacher_over_student_batch_1": ratios, "repeat": args.paper_repeat}


def markdown(report, args):
    teacher = report["teacher"]
    names = list(teacher["val"]["iou"])
    lines = [f"Val mIoU (%, one view, no flip), {len(args.seeds)} seeds, {2 if args.tiny else args.steps} steps at {report['input_size']} px; "
             "student as % of its teacher's:", "",
             "| network | KD weight | val mIoU (mean ± std, per seed) | % of teacher | "
             + " | ".join(names) + " |", "|---|---|---|---|" + "---|" * len(names)]
    lines.append(f"| teacher ({teacher['file']}) | - | {teacher['val']['miou']:.1f} | 100 | "
                 + " | ".join(f"{teacher['val']['iou'][n]:.1f}" for n in names) + " |")
    for key, entry in report["students"].items():
        mious = [s["val"]["miou"] for s in entry["seeds"]]
        ratio = [100 * m / teacher["val"]["miou"] for m in mious]
        per_class = [float(np.nanmean([s["val"]["iou"][n] for s in entry["seeds"]])) for n in names]
        lines.append(f"| {entry['arch']} | {entry['kd_weight']:g} | {cell(mious)} | {cell(ratio)} | "
                     + " | ".join(f"{v:.1f}" for v in per_class) + " |")
    if report.get("kd"):
        lines += ["", "Distillation, paired by seed (KD minus no KD, val mIoU points):", ""]
        for key, kd in report["kd"].items():
            interval = kd["interval"]
            bounds = "" if interval is None else f"; 95 % interval {interval[1]:+.1f} to {interval[2]:+.1f}"
            lines.append(f"- {key}: {' / '.join(f'{d:+.1f}' for d in kd['differences'])} (mean "
                         f"{np.mean(kd['differences']):+.1f}{bounds}): {kd['verdict']}.")
    deploy = report["deploy"]
    lines += ["", f"Deployed at {report['input_size']} px (students: seed {args.seeds[0]}, KD 0); val mIoU on all "
              f"{report['val_images']} val images through each runtime; latency median of {args.repeat}, "
              f"{args.threads} threads, interleaved:", "",
              "| network | parameters | Keras MB | ONNX MB | TFLite fp32 MB | TFLite int8 MB | mIoU Keras / ONNX / "
              "LiteRT fp32 / int8 | int8 self-check | b1 ms Keras / ORT / LiteRT fp32 / int8 | "
              "b8 ms Keras / ORT / LiteRT fp32 / int8 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in deploy.items():
        mb = [f"{entry['bytes'][k] / 1e6:.2f}" if k in entry["bytes"] else "-"
              for k in ("keras", "onnx", "tflite_fp32", "tflite_int8")]
        runtimes = ("keras", "onnx", "litert_fp32", "litert_int8")
        miou = " / ".join(f"{entry['miou'][k]:.1f}" if k in entry["miou"] else "-" for k in runtimes)
        check = entry["export_checks"].get("tflite_int8")
        int8 = "-" if not check else (f"{100 * check['label_agreement']:.2f} % "
                                      f"({'passed' if check['passed'] else 'failed: ' + check.get('message', '')})"
                                      + (f"; int8 only {', '.join(check['int8_ops'])}" if check.get("int8_ops") else
                                         f"; float: {', '.join(check['float_ops'])}" if check.get("float_ops") else ""))
        lat = {b: " / ".join(f"{entry['latency_ms'][k][b]:.1f}" if k in entry["latency_ms"] else "-" for k in runtimes)
               for b in ("batch_1", "batch_8")}
        lines.append(f"| {name} | {entry['parameters']:,} | " + " | ".join(mb) + f" | {miou} | {int8} | "
                     f"{lat['batch_1']} | {lat['batch_8']} |")
    paper = report.get("paper_size")
    if paper:
        lines += ["", f"Paper size (random / untrained weights, 21 classes), latency median of {paper['repeat']}, "
                  f"{args.threads} threads, interleaved per input size:", "",
                  "| network | input | parameters | Keras MB | ONNX MB | TFLite fp32 MB | TFLite int8 MB | "
                  "b1 ms Keras / ORT / LiteRT fp32 / int8 | b8 ms Keras / ORT / LiteRT fp32 / int8 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, entry in paper["models"].items():
            mb = [f"{entry['bytes'][k] / 1e6:.1f}" if k in entry["bytes"] else "-"
                  for k in ("keras", "onnx", "tflite_fp32", "tflite_int8")]
            lat = {b: " / ".join(f"{entry['latency_ms'][k][b]:.0f}" if b in entry["latency_ms"].get(k, {}) else "-"
                                 for k in ("keras", "onnx", "litert_fp32", "litert_int8")) for b in ("batch_1", "batch_8")}
            lines.append(f"| {entry['network']} | {entry['input_size']} | {entry['parameters']:,} | " + " | ".join(mb)
                         + f" | {lat['batch_1']} | {lat['batch_8']} |")
        for name, ratio in paper["teacher_over_student_batch_1"].items():
            lines.append(f"\nTeacher / {name} at batch 1: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratio.items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="finished run folder, or a quickstart folder (default: run the quickstart)")
    parser.add_argument("--data", default=None, help="the dataset the run was trained on")
    parser.add_argument("--archs", default="segformer_b0,mobilenet_v3_small")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kd-weights", default="0", help="distillation weights; each non-zero one is paired with 0")
    parser.add_argument("--kd-archs", default=None, help="archs the non-zero KD weights train (default: --archs)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--input-size", type=int, default=None, help="students' input (default: the synthetic images' size)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime, LiteRT and TensorFlow threads")
    parser.add_argument("--keep", default=None, help="keep students, exports and paper-size models here (a rerun skips them)")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper-size columns")
    parser.add_argument("--paper-sizes", default="448,512")
    parser.add_argument("--paper-repeat", type=int, default=5)
    parser.add_argument("--train-only", action="store_true",
                        help="only train the students (with --keep, beside a full run: it waits for the arms trained here)")
    parser.add_argument("--paper-only", action="store_true",
                        help="only the paper-size part (with --keep: builds and exports them for a later full run)")
    parser.add_argument("--paper-memory-cap", type=float, default=8.0,
                        help="GB of memory the ViT-B export child may use before it is killed (the machine is shared)")
    parser.add_argument("--paper-teacher-onnx", default="tf2onnx", choices=("tf2onnx", "torch", "none"),
                        help="ViT-B's ONNX exporter: the project's (tf2onnx; the torch exporter when it fails), torch's, "
                             "or none (no ONNX column for ViT-B)")
    parser.add_argument("--paper-teacher-int8", action="store_true", help="also export ViT-B/16 to TFLite int8")
    parser.add_argument("--json", default=None, help="also write the figures here (bench_all.py reads them)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 64 px: proves the script runs")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.archs = [a for a in args.archs.split(",") if a]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.kd_weights = sorted({0.0, *(float(w) for w in args.kd_weights.split(",") if w)})
    kd_archs = args.archs if args.kd_archs is None else [a for a in args.kd_archs.split(",") if a]
    args.paper_sizes = [int(s) for s in args.paper_sizes.split(",") if s]
    set_threads(args.threads)
    load_before = os.getloadavg()
    began = time.perf_counter()

    from quality_common import paired_interval, verdict
    from results_io import write_results
    from wsss_keras.data.layouts import open_dataset
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.student import find_teacher

    with tempfile.TemporaryDirectory() as scratch:
        root = os.path.abspath(args.keep or scratch)
        os.makedirs(root, exist_ok=True)
        run_dir = resolve_run(args, scratch)
        if args.input_size is None:
            marker = os.path.join(args.data, "synthetic.json")
            args.input_size = 128
            if os.path.isfile(marker):
                with open(marker, encoding="utf-8") as handle:
                    args.input_size = int(json.load(handle).get("size", 128))
        side = 64 if args.tiny else args.input_size
        val = open_dataset(args.data, "val")
        calibration = os.path.join(args.data, "JPEGImages")
        teacher_path = find_teacher(run_dir)
        report = {"run": os.path.abspath(run_dir), "data": os.path.abspath(args.data), "input_size": side,
                  "threads": args.threads, "repeat": args.repeat, "steps": args.steps, "seeds": args.seeds,
                  "kd_weights": args.kd_weights, "tiny": args.tiny, "val_images": len(val)}
        import keras

        report["backend"] = keras.backend.backend()
        if args.train_only:  # several processes can share the trainings: each arm is locked while it trains
            for seed in args.seeds:
                for arch in args.archs:
                    for kd in args.kd_weights:
                        if kd == 0.0 or arch in kd_archs:
                            train_arm(args, root, run_dir, teacher_path, arch, seed, kd, side)
            return 0
        if args.paper_only:
            paper_size(args, root, args.data, report)
            print(json.dumps(report, indent=1, default=str))
            return 0
        teacher = load_model(teacher_path)
        report["teacher"] = {"file": os.path.basename(teacher_path), "parameters": int(teacher.count_params()),
                             "val": score(teacher, val, os.path.join(scratch, "pred_teacher"))}
        print(f"[bench_student] teacher val mIoU {report['teacher']['val']['miou']:.1f}", flush=True)

        # Quality: every (arch, kd, seed) trained and scored.
        students, paths = {}, {}
        for seed in args.seeds:
            for arch in args.archs:
                for kd in args.kd_weights:
                    if kd != 0.0 and arch not in kd_archs:
                        continue
                    path, summary = train_arm(args, root, run_dir, teacher_path, arch, seed, kd, side)
                    student = load_model(path)
                    figures = score(student, val, os.path.join(scratch, f"pred_{arch}_{seed}_{kd:g}"))
                    key = f"{arch}@kd{kd:g}"
                    entry = students.setdefault(key, {"arch": arch, "kd_weight": kd,
                                                      "parameters": int(student.network.count_params()), "seeds": []})
                    entry["seeds"].append({"seed": seed, "val": figures, "training": summary})
                    paths[(arch, seed, kd)] = path
                    print(f"[bench_student] {key} seed {seed}: val mIoU {figures['miou']:.1f} "
                          f"({100 * figures['miou'] / report['teacher']['val']['miou']:.1f} % of the teacher; "
                          f"{summary.get('seconds_per_step')} s/step)", flush=True)
                    del student
        teacher_miou = report["teacher"]["val"]["miou"]
        for entry in students.values():
            mious = [s["val"]["miou"] for s in entry["seeds"]]
            entry["val_miou"] = spread(mious)
            entry["percent_of_teacher"] = spread([100 * m / teacher_miou for m in mious])
        report["students"] = students
        kd_report = {}
        for arch in kd_archs:
            base = {s["seed"]: s["val"]["miou"] for s in students.get(f"{arch}@kd0", {}).get("seeds", [])}
            for kd in args.kd_weights:
                if kd == 0.0 or f"{arch}@kd{kd:g}" not in students:
                    continue
                pairs = [(s["seed"], s["val"]["miou"] - base[s["seed"]]) for s in students[f"{arch}@kd{kd:g}"]["seeds"]
                         if s["seed"] in base]
                interval = paired_interval([d for _, d in pairs])
                kd_report[f"{arch} KD {kd:g} vs 0"] = {"seeds": [s for s, _ in pairs], "differences": [d for _, d in pairs],
                                                      "interval": interval, "verdict": verdict(interval)}
        report["kd"] = kd_report

        # Deployment at the run's size: the teacher and the first seed's KD-0 students.
        deploy, arms = {}, {}
        deployed = [("teacher", teacher_path)] + [(arch, paths[(arch, args.seeds[0], 0.0)]) for arch in args.archs]
        for name, path in deployed:
            start = time.perf_counter()
            model = teacher if name == "teacher" else load_model(path)
            out = os.path.join(root, "exports", name if name == "teacher" else os.path.basename(os.path.dirname(path)))
            files, checks, errors = export_all(path, out, side, calibration, eval_data=args.data)
            miou = {"keras": labels_miou(keras_labels(model, side), val)}
            if "onnx" in files:
                miou["onnx"] = labels_miou(onnx_arm(files["onnx"], args.threads), val)
            for key in ("tflite_fp32", "tflite_int8"):
                if key in files:
                    miou[f"litert_{key[7:]}"] = labels_miou(litert_arm(files[key], args.threads), val)
            parameters = int(model.count_params() if name == "teacher" else model.network.count_params())
            deploy[name] = {"file": path, "parameters": parameters,
                            "bytes": {"keras": os.path.getsize(path), **{k: os.path.getsize(f) for k, f in files.items()}},
                            "export_checks": checks, "export_errors": errors, "miou": miou}
            arms.update(runtime_arms(name, model, files, args.threads))
            print(f"[bench_student] {name}: exported and scored in {time.perf_counter() - start:.0f} s; mIoU "
                  + ", ".join(f"{k} {v:.1f}" for k, v in miou.items()) + (f"; errors {errors}" if errors else ""),
                  flush=True)
        start = time.perf_counter()
        latency = interleaved_latency(arms, side, args.repeat)
        print(f"[bench_student] latency at {side} in {time.perf_counter() - start:.0f} s", flush=True)
        for name, entry in deploy.items():
            entry["latency_ms"] = {arm.split("/", 1)[1]: figures for arm, figures in latency.items()
                                   if arm.split("/", 1)[0] == name}
        report["deploy"] = deploy
        if not (args.tiny or args.no_paper):
            paper_size(args, root, args.data, report)
    report["load_average"] = {"before": [round(v, 2) for v in load_before],
                              "after": [round(v, 2) for v in os.getloadavg()]}
    report["seconds"] = round(time.perf_counter() - began)
    table = markdown(report, args)
    title = (f"compact students against their teacher (quickstart run, {report['backend']}), "
             f"{args.threads} threads")
    print(json.dumps(report, indent=1, default=str))
    print(f"\n{title}\n{table}")
    write_results(args.json, "bench_student", title, markdown=table,
                  note=f"threads {args.threads} (ONNX Runtime, LiteRT, TensorFlow); load average before "
                       f"{report['load_average']['before']}, after {report['load_average']['after']}", **report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
