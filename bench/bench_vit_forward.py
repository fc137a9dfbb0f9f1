"""Forward time and peak memory of ViT-B/16 at 448×448, batch 1, on each Keras backend, next to
Hugging Face transformers' ViTModel in plain PyTorch. Random weights; prints figures, asserts nothing.

Each measurement runs in its own subprocess (Keras fixes its backend at import, and peak RSS
is per process). Keras is timed two ways: `model.predict_on_batch` (tf.function on
TensorFlow, jit on JAX, eager no-grad on PyTorch) and a plain eager call.

Usage:
    python bench/bench_vit_forward.py [--repeats 5] [--size 448]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _rss_mb():
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(function, repeats):
    function()  # warm-up (compilation, allocation)
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), 1000 * float(np.min(times))


def run_keras(size, repeats):
    import keras

    from wsss_keras.backbones.vit import ARCHS, ViTEncoder

    model = ViTEncoder(**ARCHS["vit_b16"])
    images = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype("float32")
    model(images[:, :32, :32])  # build
    before = _rss_mb()
    median, best = _time(lambda: keras.ops.convert_to_numpy(model.predict_on_batch(images)["tokens"]), repeats)
    eager_median, _ = _time(lambda: keras.ops.convert_to_numpy(model(images)["tokens"]), max(2, repeats // 2))
    return dict(median_ms=median, min_ms=best, eager_median_ms=eager_median, rss_before_mb=before,
                peak_rss_mb=_peak_mb())


def run_hf(size, repeats):
    import torch
    from transformers import ViTConfig, ViTModel

    model = ViTModel(ViTConfig(), add_pooling_layer=False).eval()  # ViT-B/16 defaults
    pixels = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, size, size)).astype("float32"))
    before = _rss_mb()

    def forward():
        with torch.no_grad():
            return model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state

    median, best = _time(forward, repeats)
    return dict(median_ms=median, min_ms=best, rss_before_mb=before, peak_rss_mb=_peak_mb(),
                threads=torch.get_num_threads())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--worker", choices=["tensorflow", "jax", "torch", "hf"])
    args = parser.parse_args()
    if args.worker:
        result = run_hf(args.size, args.repeats) if args.worker == "hf" else run_keras(args.size, args.repeats)
        print("RESULT " + json.dumps(result))
        return
    print(f"ViT-B/16 forward, batch 1, {args.size}x{args.size} ({(args.size // 16) ** 2 + 1} tokens), "
          f"{os.cpu_count()} CPU cores, median of {args.repeats}")
    print(f"{'implementation':<34}{'median ms':>10}{'min ms':>9}{'eager ms':>10}{'peak RSS MB':>13}{'RSS before':>12}")
    for worker in ("tensorflow", "jax", "torch", "hf"):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        if worker != "hf":
            env["KERAS_BACKEND"] = worker
        process = subprocess.run([sys.executable, __file__, "--worker", worker, "--size", str(args.size),
                                  "--repeats", str(args.repeats)], env=env, capture_output=True, text=True)
        lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        label = "HF transformers ViTModel (PyTorch)" if worker == "hf" else f"wsss_keras ViTEncoder, {worker}"
        if process.returncode or not lines:
            print(f"{label:<34} failed: {process.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(lines[0][len("RESULT "):])
        eager = f"{r['eager_median_ms']:10.0f}" if "eager_median_ms" in r else f"{'-':>10}"
        print(f"{label:<34}{r['median_ms']:10.0f}{r['min_ms']:9.0f}{eager}{r['peak_rss_mb']:13.0f}"
              f"{r['rss_before_mb']:12.0f}")


if __name__ == "__main__":
    main()
