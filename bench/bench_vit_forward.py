"""ViT-B/16 forward at 448, batch 1, on every runtime the project offers, interleaved in one
run next to Hugging Face transformers' ViTModel in PyTorch eager and the CPU's own float32
matrix-product rate. Prints figures, asserts nothing.

    python bench/bench_vit_forward.py [--size 448] [--repeats 7] [--threads 2] [--weights random|FILE]
        [--contenders sgemm,hf,tensorflow,jax,torch,onnx_tf2onnx,onnx,onnx_attention,onnx_int8,onnx_int8_weights,
                      litert_fp32]
        [--litert-int8]
        [--keep DIR] [--json PATH] [--note TEXT]

The network is ToCo's (recipe toco_voc: ViT-B/16 and its heads) with random weights or a
checkpoint; Keras runs its `segment_logits` through `predict_on_batch` (tf.function on
TensorFlow, jit on JAX, no-grad eager on PyTorch) on normalised float images, the exported
graphs take the uint8 image and return logits and labels at its size (`wsss export`'s graph).
`onnx_tf2onnx` is the graph as tf2onnx writes it, `onnx` the same after the project's
rewrites for onnxruntime's fused kernels (`wsss_keras.export.onnx_fusion`, what `wsss export`
writes), `onnx_attention` with `--onnx-attention onnxruntime` as well; their node counts,
before and after onnxruntime's own optimisation, are printed too.
The int8 files are calibrated on 8 random images: their times hold, their labels mean nothing
for random weights (agreement is the export self-check's business, on a trained model).

Each contender lives in its own process (Keras fixes its backend at import), pinned to the
first --threads cores with its library's thread count set to --threads; after two warm-up
runs each, the parent asks them in turn (A, B, C, A, B, C, ...) for one timed forward, so a
load change on this shared machine touches every contender alike. `sgemm` times numpy's
float32 (2048 x 2048) @ (2048 x 2048) in the same rotation: its rate is the peak the
fractions are of. ViT-B/16's forward is counted as its matrix products' FLOPs (patch
embedding, QKV, attention, projection, MLP; about 156 GFLOP at 448).
"""

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = ("sgemm", "hf", "tensorflow", "jax", "torch", "onnx_tf2onnx", "onnx", "onnx_attention", "onnx_int8",
              "onnx_int8_weights", "litert_fp32", "litert_int8")
LABELS = {
    "sgemm": "numpy float32 matmul 2048^3 (peak)",
    "hf": "HF transformers ViTModel, PyTorch eager",
    "tensorflow": "Keras, TensorFlow",
    "jax": "Keras, JAX",
    "torch": "Keras, PyTorch",
    "onnx_tf2onnx": "ONNX Runtime fp32, tf2onnx graph",
    "onnx": "ONNX Runtime fp32, wsss export (fused)",
    "onnx_attention": "ONNX Runtime fp32, --onnx-attention onnxruntime",
    "onnx_int8": "ONNX Runtime int8, static QDQ (--int8-scope full)",
    "onnx_int8_weights": "ONNX Runtime int8, dynamic (--int8-scope weights)",
    "litert_fp32": "LiteRT fp32",
    "litert_int8": "LiteRT int8 (weights scope)",
}
SGEMM_SIDE = 2048


def vit_b16_gflop(size, patch=16, width=768, depth=12, mlp=3072):
    """Matrix-product GFLOP of one ViT-B/16 forward at `size` x `size` (class token included)."""
    patches = (size // patch) ** 2
    tokens = patches + 1
    per_block = 2 * tokens * width * (3 * width + width + 2 * mlp) + 2 * 2 * tokens * tokens * width
    return (2 * patches * patch * patch * 3 * width + depth * per_block) / 1e9


# Building the artifacts (TensorFlow subprocesses) -------------------------------------------

def build_model(path, size, weights):
    import keras

    from wsss_keras.data.classes import VOC_CLASSES
    from wsss_keras.pipelines.toco import build_model as build_toco
    from wsss_keras.recipes import load_recipe

    dataset = type("Classes", (), {"num_classes": len(VOC_CLASSES), "class_names": list(VOC_CLASSES)})()
    model = build_toco(load_recipe("toco_voc"), dataset, weights=weights)
    model.segment_logits(keras.ops.zeros((1, size, size, 3)))
    model.save(path)


def export_artifact(model_path, kind, out, size):
    """One artifact of `wsss export`'s deployment graph (output "logits") at `size`."""
    import keras

    from wsss_keras.export.build import deployment_graph
    from wsss_keras.export.formats import write_artifacts
    from wsss_keras.pipelines.model_io import load_model

    graph = deployment_graph(load_model(model_path), (size, size), output="logits")
    if kind == "onnx_tf2onnx":
        graph.export(out, format="onnx", opset_version=17, verbose=False,
                     input_signature=[keras.InputSpec(shape=(None, None, None, 3), dtype="uint8", name="image")])
        return
    fmt, precision = ("onnx", "int8") if kind.startswith("onnx_int8") else ("tflite", kind.split("_")[1])
    calibration = None
    if precision == "int8":  # random images: this bench times int8, it does not score it
        calibration = list(np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8))
    folder = tempfile.mkdtemp(dir=os.path.dirname(out))
    # int8: the first level each format tries (TFLite: --int8-scope weights).
    path, _ = next(write_artifacts(graph, fmt, precision, folder, calibration,
                                   int8_scope="full" if kind == "onnx_int8" else "weights"))
    shutil.move(path, out)
    shutil.rmtree(folder)


def network_gflop(path, size, threads):
    """GFLOP of the matrix products (MatMul, FusedMatMul, Gemm, Conv) one forward of the ONNX
    file at `size` runs, from the shapes onnxruntime's profiler records: ToCo's network is
    ViT-B/16 plus its heads, more than the encoder alone that Hugging Face's row runs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = threads, True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = os.path.join(scratch, "profile")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, size, size, 3), np.uint8)})
        with open(session.end_profiling(), encoding="utf-8") as handle:
            events = json.load(handle)
    flop = 0
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        shapes = [next(iter(entry.values())) for entry in args.get("input_type_shape", [])]
        outputs = [next(iter(entry.values())) for entry in args.get("output_type_shape", [])]
        if not shapes or not outputs:
            continue
        if args.get("op_name") in ("MatMul", "FusedMatMul", "Gemm"):
            flop += 2 * int(np.prod(outputs[0])) * shapes[0][-1]
        elif args.get("op_name") == "Conv":
            flop += 2 * int(np.prod(outputs[0])) * int(np.prod(shapes[1][1:]))
    return flop / 1e9


def op_counts(path):
    """Node types of the ONNX file, and of onnxruntime's optimised graph of it."""
    import onnx
    import onnxruntime

    def count(model):
        return dict(collections.Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type
                                        for n in model.graph.node).most_common())

    with tempfile.TemporaryDirectory() as scratch:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(scratch, "optimised.onnx")
        onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        optimised = count(onnx.load(options.optimized_model_filepath, load_external_data=False))
    return {"file": count(onnx.load(path, load_external_data=False)), "onnxruntime": optimised}


def litert_op_counts(path):
    """Op types of a LiteRT file (through the interpreter's op listing), or None where this
    LiteRT version does not list them."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        details = Interpreter(model_path=path)._get_ops_details()
    except AttributeError:
        return None
    return dict(collections.Counter(op["op_name"] for op in details).most_common())


def _tensorflow_child(*arguments):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, __file__, *arguments], env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode:
        sys.exit(f"{' '.join(arguments)} failed:\n{result.stderr[-3000:]}")


def build_artifacts(args, folder, contenders):
    """The model and every exported file the contenders need, in `folder` (kept between runs)."""
    model_path = args.weights if args.weights.endswith(".keras") else os.path.join(folder, f"toco_vit_b16_{args.size}.keras")
    if not os.path.isfile(model_path):
        print(f"[bench] building ToCo ViT-B/16 ({args.weights} weights) -> {model_path}", flush=True)
        _tensorflow_child("--build-model", model_path, "--size", str(args.size), "--weights", args.weights)
    files = {"model": model_path}
    for kind, name in (("onnx_tf2onnx", "tf2onnx.onnx"), ("onnx_int8", "int8.onnx"),
                       ("onnx_int8_weights", "int8_dynamic.onnx"), ("litert_fp32", "fp32.tflite"),
                       ("litert_int8", "int8.tflite")):
        if kind not in contenders and not (kind == "onnx_tf2onnx" and {"onnx", "onnx_attention"} & set(contenders)):
            continue
        files[kind] = os.path.join(folder, f"{args.size}_{name}")
        if not os.path.isfile(files[kind]):
            start = time.perf_counter()
            print(f"[bench] exporting {kind} -> {files[kind]}", flush=True)
            _tensorflow_child("--export", model_path, kind, files[kind], "--size", str(args.size))
            print(f"[bench] {kind} in {time.perf_counter() - start:.0f} s", flush=True)
    from wsss_keras.export.onnx_fusion import fuse_onnx_file

    for kind, attention in (("onnx", False), ("onnx_attention", True)):
        if kind in contenders:
            files[kind] = os.path.join(folder, f"{args.size}_{'attention' if attention else 'fused'}.onnx")
            shutil.copyfile(files["onnx_tf2onnx"], files[kind])
            files[f"{kind}_fused"] = fuse_onnx_file(files[kind], attention)
    return files


# The contenders (one persistent process each) ------------------------------------------------

def pin(threads):
    """This process on the first `threads` usable cores; returns the cores."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    return cores


def contender(kind, files, size, threads):
    """A function running one forward of contender `kind` on a fixed image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    if kind == "sgemm":
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        a, b = (rng.standard_normal((SGEMM_SIDE, SGEMM_SIDE)).astype(np.float32) for _ in range(2))
        return lambda: a @ b
    if kind == "hf":
        import torch
        from transformers import ViTConfig, ViTModel

        torch.set_num_threads(threads)
        model = ViTModel(ViTConfig(), add_pooling_layer=False).eval()  # ViT-B/16's defaults
        pixels = torch.from_numpy(rng.standard_normal((1, 3, size, size)).astype(np.float32))

        def forward():
            with torch.no_grad():
                return model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state

        return forward
    if kind.startswith("onnx"):
        # The session the student bench times, its threads set alike.
        from bench_student import onnx_arm

        run = onnx_arm(files[kind], threads)
        return lambda: run(image)
    if kind.startswith("litert"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=files[kind], num_threads=threads)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], image.shape)
        interpreter.allocate_tensors()

        def invoke():
            interpreter.set_tensor(detail["index"], image)
            interpreter.invoke()

        return invoke
    import keras

    from wsss_keras.data.transforms import normalize
    from wsss_keras.pipelines.model_io import load_model

    keras_threads(kind, threads)
    network = load_model(files["model"])

    class Logits(keras.Model):  # predict_on_batch compiles `call`: here the segmentation logits
        def call(self, images):
            return network.segment_logits(images)

    logits = Logits()
    pixels = keras.ops.convert_to_numpy(normalize(image, network.image_mean, network.image_std))
    return lambda: keras.ops.convert_to_numpy(logits.predict_on_batch(pixels))


def keras_threads(backend, threads):
    """The intra-op threads of a Keras backend's library (JAX's come from XLA_FLAGS, set by
    `thread_environment` before it starts)."""
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)


def worker(kind, files, size, threads):
    """Serve timed forwards of contender `kind` (see `serve`)."""
    cores = pin(threads)
    serve(contender(kind, files, size, threads), cores)


def serve(forward, cores):
    """Serve timed calls of `forward` on stdin / stdout: READY after two warm-ups, then a time per 'run'."""
    forward(), forward()
    print(f"READY {json.dumps({'cores': cores})}", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        forward()
        print(f"TIME {time.perf_counter() - start}", flush=True)


def thread_environment(kind, threads):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    backend = kind.split("_")[0]  # "jax_rank3" and the like: a variant on that backend
    if backend in ("tensorflow", "jax", "torch"):
        env["KERAS_BACKEND"] = backend
    if backend == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true "
                            f"intra_op_parallelism_threads={threads}").strip()
    return env


def start_workers(contenders, arguments, threads, script=__file__):
    """Each contender's process (`script --worker KIND ARGUMENTS --threads N`), started one at a
    time (their set-up would contend)."""
    workers, failed = {}, {}
    for kind in contenders:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, script, "--worker", kind, *arguments, "--threads", str(threads)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=thread_environment(kind, threads))
        line = process.stdout.readline()
        while line and not line.startswith("READY"):
            line = process.stdout.readline()
        if not line:
            process.wait()
            failed[kind] = (process.stderr.read().strip().splitlines() or ["no output"])[-1][-300:]
            print(f"[bench] {kind}: failed ({failed[kind]})", flush=True)
            continue
        workers[kind] = process
        print(f"[bench] {kind}: ready in {time.perf_counter() - start:.0f} s", flush=True)
    return workers, failed


def interleave(workers, repeats):
    """{kind: [seconds per repeat]}: every repeat asks each worker once, in turn."""
    times = {kind: [] for kind in workers}
    for _ in range(repeats):
        for kind, process in workers.items():
            process.stdin.write("run\n")
            process.stdin.flush()
            line = process.stdout.readline()
            while line and not line.startswith("TIME"):
                line = process.stdout.readline()
            times[kind].append(float(line.split()[1]))
    for process in workers.values():
        process.stdin.close()
        process.wait()
    return times


def timing_row(values, reference_ms, ratio_key, work_gflop, peak):
    """A contender's figures from its times (seconds): median, min and each (ms), `ratio_key`:
    median over `reference_ms` (when there is one), and the fraction of the sgemm `peak`
    (GFLOP/s) that `work_gflop` in the median time makes (when there is a peak)."""
    median = 1000 * float(np.median(values))
    row = {"median_ms": round(median, 1), "min_ms": round(1000 * min(values), 1),
           "times_ms": [round(1000 * value, 1) for value in values]}
    if reference_ms:
        row[ratio_key] = round(median / reference_ms, 3)
    if peak:
        row["fraction_of_peak"] = round(work_gflop / (median / 1000) / peak, 3)
    return row


def report(args, files, times, failed):
    """Print the table and node counts; returns the figures and a Markdown table."""
    medians = {kind: 1000 * float(np.median(values)) for kind, values in times.items()}
    gflop = vit_b16_gflop(args.size)
    # The exported and Keras rows run ToCo's whole network; its products counted on the float graph.
    float_graph = files.get("onnx") or files.get("onnx_tf2onnx")
    network = network_gflop(float_graph, args.size, args.threads) if float_graph else gflop
    peak = 2 * SGEMM_SIDE ** 3 / 1e9 / (medians["sgemm"] / 1000) if "sgemm" in medians else None
    hf = medians.get("hf")
    title = (f"ViT-B/16 forward at {args.size}, batch 1, {args.threads} threads, median of {args.repeats} "
             f"interleaved ({args.weights} weights; matrix products: ViT-B/16 {gflop:.0f} GFLOP, ToCo's network "
             f"{network:.0f})")
    print(f"\n{title}")
    header = ["contender", "median ms", "min ms", "x HF eager", "% of sgemm peak"]
    table = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|---:|"]
    if peak:
        print(f"sgemm peak: {peak:.0f} GFLOP/s ({medians['sgemm']:.1f} ms for 2048^3); floors: ViT-B/16 "
              f"{1000 * gflop / peak:.0f} ms, ToCo's network {1000 * network / peak:.0f} ms")
        table.append(f"| numpy float32 matmul 2048³ (the peak: {peak:.0f} GFLOP/s; floors: ViT-B/16 "
                     f"{1000 * gflop / peak:.0f} ms, ToCo's network {1000 * network / peak:.0f} ms) | "
                     f"{medians['sgemm']:.1f} | | | 100 % |")
    print(f"{'contender':<52}{'median ms':>10}{'min ms':>9}{'x HF':>7}{'% of peak':>11}")
    rows = {}
    for kind, values in times.items():
        if kind == "sgemm":
            continue
        row = rows[kind] = timing_row(values, hf, "x_hf", gflop if kind == "hf" else network, peak)
        ratio = f"{row['x_hf']:.2f}" if "x_hf" in row else "-"
        fraction = f"{100 * row['fraction_of_peak']:.0f} %" if "fraction_of_peak" in row else "-"
        print(f"{LABELS[kind]:<52}{row['median_ms']:10.0f}{row['min_ms']:9.0f}{ratio:>7}{fraction:>11}")
        table.append(f"| {LABELS[kind]} | {row['median_ms']:.0f} | {row['min_ms']:.0f} | {ratio} | {fraction} |")
    for kind, reason in failed.items():
        print(f"{LABELS[kind]:<52} failed: {reason}")
        table.append(f"| {LABELS[kind]} | failed: {reason[:120]} | | | |")
    counts, notes = {}, []
    for kind in ("onnx_tf2onnx", "onnx", "onnx_attention"):
        if kind in files:
            counts[kind] = op_counts(files[kind])
            file_ops, optimised = counts[kind]["file"], counts[kind]["onnxruntime"]
            line = (f"{sum(file_ops.values())} nodes in the file, {sum(optimised.values())} after onnxruntime's "
                    "optimisation: " + ", ".join(f"{op} {optimised.get(op, 0)}" for op in
                                                 ("LayerNormalization", "com.microsoft:Gelu",
                                                  "com.microsoft:MultiHeadAttention", "Erf", "GlobalAveragePool",
                                                  "Softmax", "Cast", "Reshape")))
            print(f"{kind}: {line}")
            notes.append(f"{LABELS[kind]}: {line}.")
    # LiteRT has a GELU builtin (its converter matches the erf form) but no LayerNorm or CPU
    # attention builtin: the counts show which of the three its graph reaches.
    for kind in ("litert_fp32", "litert_int8"):
        if kind in files and (ops := litert_op_counts(files[kind])):
            counts[kind] = {"file": ops}
            line = f"{sum(ops.values())} ops: " + ", ".join(
                f"{op} {ops.get(op, 0)}" for op in ("GELU", "MEAN", "RSQRT", "SQUARED_DIFFERENCE", "SOFTMAX",
                                                     "BATCH_MATMUL", "FULLY_CONNECTED"))
            print(f"{kind}: {line}")
            notes.append(f"{LABELS[kind]}: {line}.")
    markdown = "\n".join(table) + ("\n\n" + "\n".join(f"- {note}" for note in notes) if notes else "")
    markdown += ("\n\nThe % column is the row's matrix-product FLOPs (Hugging Face's: the encoder's; the others: "
                 "ToCo's network, the encoder and its heads) per second, over the float32 sgemm peak; int8 rows "
                 "exceed 100 % because int8 products (VNNI) have a higher peak. Each contender in its own "
                 f"process on {args.threads} pinned cores, asked in turn (`bench/bench_vit_forward.py`); load "
                 f"average at the end {os.getloadavg()[0]:.1f}" + (f"; {args.note}" if args.note else "") + ".")
    return {"title": title, "markdown": markdown, "size": args.size, "threads": args.threads,
            "repeats": args.repeats, "weights": args.weights, "gflop": round(gflop, 1),
            "network_gflop": round(network, 1),
            "sgemm_gflops": peak and round(peak, 1), "sgemm_ms": medians.get("sgemm"), "rows": rows,
            "failed": failed, "op_counts": counts, "fused": {k: v for k, v in files.items() if k.endswith("_fused")},
            "load_average": os.getloadavg()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="random", help="random, or a ToCo ViT-B/16 checkpoint the recipe takes, "
                                                            "or a .keras model")
    parser.add_argument("--contenders", default=",".join(c for c in CONTENDERS if c != "litert_int8"),
                        help=f"comma-separated, of {','.join(CONTENDERS)}")
    parser.add_argument("--litert-int8", action="store_true", help="add litert_int8 (its export is slow at 448)")
    parser.add_argument("--keep", default=None, help="keep the model and exported files here (reused when there)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--note", default=None, help="the machine's state, for the record")
    # internal: the children
    parser.add_argument("--worker", choices=CONTENDERS)
    parser.add_argument("--files", default="{}")
    parser.add_argument("--build-model", default=None)
    parser.add_argument("--export", nargs=3, default=None, metavar=("MODEL", "KIND", "OUT"))
    args = parser.parse_args()
    if args.build_model:
        return build_model(args.build_model, args.size, args.weights)
    if args.export:
        return export_artifact(*args.export, args.size)
    if args.worker:
        return worker(args.worker, json.loads(args.files), args.size, args.threads)

    contenders = [c for c in args.contenders.split(",") if c] + (["litert_int8"] if args.litert_int8 else [])
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        parser.error(f"--contenders: unknown {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    folder = args.keep or tempfile.mkdtemp(prefix="bench_vit_")
    os.makedirs(folder, exist_ok=True)
    try:
        files = build_artifacts(args, folder, contenders)
        arguments = ["--files", json.dumps({k: v for k, v in files.items() if not k.endswith("_fused")}),
                     "--size", str(args.size)]
        workers, failed = start_workers(contenders, arguments, args.threads)
        result = report(args, files, interleave(workers, args.repeats), failed)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    sys.path.insert(0, HERE)
    from results_io import write_results

    write_results(args.json, "bench_vit_forward", result.pop("title"), **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
