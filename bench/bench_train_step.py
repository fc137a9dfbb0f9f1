"""Training step time of ViT-B/16 (forward, backward, AdamW) on each Keras backend, next to Hugging
Face transformers' ViTModel trained in plain PyTorch. Random weights; prints figures, asserts nothing.

    python bench/bench_train_step.py [--size 224] [--batch 4] [--repeats 5] [--json PATH]

Each arm runs in its own subprocess (Keras fixes its backend at import). The Keras arm is our
`ViTEncoder` with a linear head on the class token, trained with `train_on_batch` (tf.function
on TensorFlow, jit on JAX, eager on PyTorch); the PyTorch arm the same shapes with
`torch.optim.AdamW`. The median of `--repeats` steps after two warm-up steps.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CLASSES = 20


def _median_ms(step, repeats):
    from bench_vit_forward import _time  # two warm-up calls, then (median, min) ms of `repeats`

    return _time(step, repeats)[0]


def run_keras(size, batch, repeats):
    import keras

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
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype("float32")
    labels = (rng.random((batch, CLASSES)) < 0.1).astype("float32")
    return _median_ms(lambda: float(model.train_on_batch(images, labels)), repeats)


def run_torch(size, batch, repeats):
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(image_size=size, patch_size=16, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072), add_pooling_layer=False)
    head = torch.nn.Linear(768, CLASSES)
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    images = torch.randn(batch, 3, size, size)
    labels = (torch.rand(batch, CLASSES) < 0.1).float()
    loss_function = torch.nn.BCEWithLogitsLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(head(model(pixel_values=images).last_hidden_state[:, 0]), labels)
        loss.backward()
        optimizer.step()
        return float(loss)

    return _median_ms(step, repeats)


def in_subprocess(arm, size, batch, repeats):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if arm != "pytorch":
        env["KERAS_BACKEND"] = arm
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_train_step as b; "
            f"print('RESULT', json.dumps(b.{'run_torch' if arm == 'pytorch' else 'run_keras'}({size}, {batch}, {repeats})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"{arm} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the figures here (bench_all.py reads them)")
    args = parser.parse_args()
    arms = [("Keras, tensorflow", "tensorflow"), ("Keras, jax", "jax"), ("Keras, torch", "torch"),
            ("PyTorch + transformers (reference)", "pytorch")]
    rows = [(label, in_subprocess(arm, args.size, args.batch, args.repeats)) for label, arm in arms]
    reference = rows[-1][1]
    title = (f"ViT-B/16 training step (forward, backward, AdamW), {args.size}x{args.size}, batch {args.batch}, "
             f"{os.cpu_count()} cores, median of {args.repeats}")
    table = ["| framework | step (ms) | vs PyTorch |", "|---|---|---|"]
    for label, ms in rows:
        ratio = f"{ms / reference:.2f}x" if ms and reference else "-"
        table.append(f"| {label} | {ms:.0f} | {ratio} |" if ms else f"| {label} | failed | - |")
    print(f"\n{title}\n" + "\n".join(table))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results_io import write_results

    write_results(args.json, "bench_train_step", title, markdown="\n".join(table),
                  rows=[{"label": label, "ms": ms} for label, ms in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
