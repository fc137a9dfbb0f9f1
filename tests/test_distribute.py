"""Data-parallel training on two virtual CPU devices (JAX: XLA_FLAGS; TensorFlow: two logical
devices) gives the losses and weights of single-device training with the same global batch.

Each backend runs in its own process (the device count is fixed before the backend starts).
The model normalises per sample (LayerNorm): BatchNorm under tf.distribute uses each replica's
own batch statistics, which changes the loss by design, not by a bug.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from helpers import tiny_synthetic

SCRIPT = textwrap.dedent("""
    import csv, os, sys
    backend, data, out = sys.argv[1:4]
    if backend == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras import ops
    from wsss_keras.data.dataset import open_dataset
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import TrainTransform
    from wsss_keras.ops.losses import multilabel_soft_margin_loss
    from wsss_keras.pipelines.train import fit_steps
    from wsss_keras.training.options import TrainingOptions, training_session

    class TinyClassifier(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(8, 3, strides=2, padding="same")
            self.norm = keras.layers.LayerNormalization()
            self.head = keras.layers.Dense(6)

        def call(self, images, training=None):
            return self.head(ops.mean(ops.relu(self.norm(self.conv(images))), axis=(1, 2)))

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return multilabel_soft_margin_loss(y["labels"], y_pred)

    results = {}
    for mode in ("none", "data-parallel"):
        with training_session(TrainingOptions(distribute=mode, log_every=1, tensorboard=False, resume=False)) as options:
            keras.utils.set_random_seed(0)
            loader = SegmentationLoader(open_dataset(data, "train"), 4, TrainTransform(crop_size=32), shuffle=True,
                                        seed=0, drop_remainder=True)
            model = TinyClassifier()
            model.compile(optimizer=keras.optimizers.SGD(0.5))
            fit_steps(model, loader, 5, os.path.join(out, mode), "model.keras", {"recipe": {"name": "dp"}},
                      echo=print)
            with open(os.path.join(out, mode, "train_log.csv")) as handle:
                losses = [float(row["loss"]) for row in csv.DictReader(handle)]
            results[mode] = (options.replicas, losses, [ops.convert_to_numpy(w) for w in model.weights])
    (one, single, w1), (two, parallel, w2) = results["none"], results["data-parallel"]
    print("REPLICAS", one, two)
    print("LOSSES", single, parallel)
    print("MAXDIFF", max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)))
""")


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_data_parallel_on_two_cpu_devices_matches_one_device(backend, tmp_path):
    data = tiny_synthetic(tmp_path / "data", n_train=12, n_val=2, size=40)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, backend, data, str(tmp_path / "runs")], env=env,
                            capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()
             if line.startswith(("REPLICAS", "LOSSES", "MAXDIFF"))}
    assert lines["REPLICAS"] == "1 2", result.stdout
    single, parallel = _two_lists(lines["LOSSES"])
    assert len(single) == len(parallel) == 5
    for a, b in zip(single, parallel):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), (single, parallel)
    assert float(lines["MAXDIFF"]) < 1e-4
    assert "2 replicas of 2" in result.stdout


def _two_lists(text):
    import ast

    first, second = text.split("] [")
    return ast.literal_eval(first + "]"), ast.literal_eval("[" + second)
