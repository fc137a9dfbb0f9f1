"""ViT-B/16 training step (forward, backward, AdamW) on each Keras backend, interleaved in one run
next to Hugging Face transformers' ViTModel trained in plain PyTorch. Random weights; prints
figures, asserts nothing.

    python bench/bench_train_step.py [--size 224] [--batch 4] [--repeats 7] [--threads 2]
        [--contenders sgemm,pytorch,tensorflow,jax,torch,jax_rank3] [--json PATH] [--note TEXT]

The Keras contenders train the project's `ViTEncoder` with a linear head on the class token
through `train_on_batch` (tf.function on TensorFlow, jit on JAX, eager on PyTorch); `pytorch`
trains the same shapes with `torch.optim.AdamW` (the reference every ratio is to).
`jax_rank3` is the JAX contender with the transformer's `TokenDense` layers computing as
`keras.layers.Dense` does, on the rank-3 token tensor: the route the project took before
`TokenDense` (wsss_keras/backbones/token_dense.py says why it is slower).
`sgemm` is numpy's float32 matrix product, the machine's peak in the same rotation; a step's
matrix-product FLOPs (about 3x the forward's) over it give each row's % of peak.

Each contender is a persistent process pinned to the first --threads cores with its library's
threads set (bench_vit_forward's workers); after two warm-up steps each, the parent asks them
in turn (A, B, C, A, B, C, ...) for one step, so load changes on a shared machine touch every
contender alike.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_vit_forward import (
    SGEMM_SIDE,
    contender,
    interleave,
    keras_threads,
    pin,
    serve,
    start_workers,
    timing_row,
    vit_b16_gflop,
)

CLASSES = 20
CONTENDERS = ("sgemm", "pytorch", "tensorflow", "jax", "torch", "jax_rank3")
LABELS = {
    "sgemm": "numpy float32 matmul 2048³ (peak)",
    "pytorch": "PyTorch + transformers ViTModel (reference)",
    "tensorflow": "Keras, TensorFlow",
    "jax": "Keras, JAX",
    "torch": "Keras, PyTorch",
    "jax_rank3": "Keras, JAX, rank-3 Dense products (before TokenDense)",
}


def data(size, batch):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype("float32")
    labels = (rng.random((batch, CLASSES)) < 0.1).astype("float32")
    return images, labels


def keras_step(kind, size, batch, threads):
    """One `train_on_batch` of the project's ViT-B/16 with a class-token head."""
    import keras

    keras_threads(kind, threads)
    if kind == "jax_rank3":
        from wsss_keras.backbones.token_dense import TokenDense

        TokenDense.call = keras.layers.Dense.call
    from wsss_keras.backbones.vit import ARCHS, ViTEncoder

    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.encoder = ViTEncoder(**ARCHS["vit_b16"])
            self.head = keras.layers.Dense(CLASSES)

        def call(self, images):
            return self.head(self.encoder(images)["tokens"][:, 0])

    model = Classifier()
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    images, labels = data(size, batch)
    return lambda: float(model.train_on_batch(images, labels))


def pytorch_step(size, batch, threads):
    """One step of transformers' ViTModel with a class-token head and torch's AdamW."""
    import torch
    from transformers import ViTConfig, ViTModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(image_size=size, patch_size=16, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072), add_pooling_layer=False)
    head = torch.nn.Linear(768, CLASSES)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-4)
    images, labels = (torch.from_numpy(array) for array in data(size, batch))
    images = images.permute(0, 3, 1, 2).contiguous()
    loss_function = torch.nn.BCEWithLogitsLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(head(model(pixel_values=images).last_hidden_state[:, 0]), labels)
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def worker(kind, size, batch, threads):
    cores = pin(threads)
    if kind == "sgemm":
        step = contender("sgemm", {}, size, threads)
    elif kind == "pytorch":
        step = pytorch_step(size, batch, threads)
    else:
        step = keras_step(kind, size, batch, threads)
    serve(step, cores)


def report(args, times, failed):
    medians = {kind: 1000 * float(np.median(values)) for kind, values in times.items()}
    peak = 2 * SGEMM_SIDE ** 3 / 1e9 / (medians["sgemm"] / 1000) if "sgemm" in medians else None
    work = 3 * args.batch * vit_b16_gflop(args.size)  # forward + two products per product backward
    reference = medians.get("pytorch")
    title = (f"ViT-B/16 training step (forward, backward, AdamW), {args.size}x{args.size}, batch {args.batch}, "
             f"{args.threads} threads, median of {args.repeats} interleaved (matrix products: {work:.0f} GFLOP)")
    table = ["| framework | median ms | min ms | vs PyTorch | % of sgemm peak |", "|---|---:|---:|---:|---:|"]
    if peak:
        table.append(f"| {LABELS['sgemm']} ({peak:.0f} GFLOP/s; floor {1000 * work / peak:.0f} ms) | "
                     f"{medians['sgemm']:.1f} | | | 100 % |")
    rows = {}
    for kind, values in times.items():
        if kind == "sgemm":
            continue
        row = rows[kind] = timing_row(values, reference, "x_pytorch", work, peak)
        ratio = f"{row['x_pytorch']:.2f}x" if "x_pytorch" in row else "-"
        fraction = f"{100 * row['fraction_of_peak']:.0f} %" if "fraction_of_peak" in row else "-"
        table.append(f"| {LABELS[kind]} | {row['median_ms']:.0f} | {row['min_ms']:.0f} | {ratio} | {fraction} |")
    for kind, reason in failed.items():
        table.append(f"| {LABELS[kind]} | failed: {reason[:120]} | | | |")
    markdown = "\n".join(table) + (
        f"\n\nEach contender in its own process on {args.threads} pinned cores, asked in turn "
        f"(`bench/bench_train_step.py`); load average at the end {os.getloadavg()[0]:.1f}"
        + (f"; {args.note}" if args.note else "") + ".")
    print(f"\n{title}\n{markdown}")
    return {"title": title, "markdown": markdown, "size": args.size, "batch": args.batch, "threads": args.threads,
            "repeats": args.repeats, "sgemm_gflops": peak and round(peak, 1), "step_gflop": round(work, 1),
            "rows": rows, "failed": failed, "load_average": os.getloadavg()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {','.join(CONTENDERS)}")
    parser.add_argument("--json", default=None, help="also write the figures here (bench_all.py reads them)")
    parser.add_argument("--note", default=None, help="the machine's state, for the record")
    parser.add_argument("--worker", choices=CONTENDERS)  # internal: the children
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.size, args.batch, args.threads)
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown:
        parser.error(f"--contenders: unknown {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    arguments = ["--size", str(args.size), "--batch", str(args.batch)]
    workers, failed = start_workers(contenders, arguments, args.threads, script=os.path.abspath(__file__))
    result = report(args, interleave(workers, args.repeats), failed)
    from results_io import write_results

    write_results(args.json, "bench_train_step", result.pop("title"), **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
