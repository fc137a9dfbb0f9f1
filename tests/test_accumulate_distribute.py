"""Gradient accumulation with data parallelism on two virtual CPU devices (as tests/test_distribute.py
sets them up): each micro-batch splits over the replicas, so batches of 4 as two micro-batches of
2 over 2 replicas give the weights of batches of 4 on one device; a micro-batch that does not
split over the replicas is a one-line recipe error. Each backend runs in its own process."""

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import tiny_synthetic

SCRIPT = textwrap.dedent("""
    import os, sys
    backend, data, out = sys.argv[1:4]
    if backend == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from test_accumulate import STEPS, build, recipe, weights_of
    from wsss_keras.errors import RecipeError
    from wsss_keras.pipelines.fitting import fit_steps
    from wsss_keras.training.options import TrainingOptions, training_session

    results = {}
    for mode, accumulate in (("none", 1), ("data-parallel", 2)):
        with training_session(TrainingOptions(distribute=mode, log_every=1, tensorboard=False, resume=False)) as options:
            model, loader = build(data, accumulate)
            initial = weights_of(model)
            fit_steps(model, loader, STEPS, os.path.join(out, mode), "model.keras", recipe(accumulate), echo=print)
            results[mode] = (options.replicas, weights_of(model))
    (one, single), (two, parallel) = results["none"], results["data-parallel"]
    print("REPLICAS", one, two)
    print("MOVED", max(float(np.abs(a - b).max()) for a, b in zip(single, initial)))
    print("MAXDIFF", max(float(np.abs(a - b).max()) for a, b in zip(single, parallel)))
    with training_session(TrainingOptions(distribute="data-parallel", tensorboard=False, resume=False)):
        model, loader = build(data, 4, table_batch_size=None)
        try:
            fit_steps(model, loader, STEPS, os.path.join(out, "four"), "model.keras", recipe(4), echo=print)
        except RecipeError as error:
            print("ERROR", error)
""")


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_micro_batches_split_over_replicas_match_one_device(backend, tmp_path):
    data = tiny_synthetic(tmp_path / "data", n_train=8, n_val=2, size=40, classes="3")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, backend, data, str(tmp_path / "runs")], env=env,
                            capture_output=True, text=True, timeout=600, check=False,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()
             if line.startswith(("REPLICAS", "MOVED", "MAXDIFF", "ERROR"))}
    assert lines["REPLICAS"] == "1 2", result.stdout
    assert float(lines["MOVED"]) > 1e-3
    assert float(lines["MAXDIFF"]) < 1e-4, result.stdout
    assert "each the mean gradient of 2 micro-batches of 2, 2 replicas of 1" in result.stdout
    assert lines["ERROR"].endswith("[train] batch_size = 4 does not split into accumulate = 4 equal micro-batches over "
                                   "2 replicas; set batch_size to a multiple of 8 (8) or accumulate to a divisor of 2.")
