"""Training in two processes on 127.0.0.1 (`wsss launch`) gives the losses and weights of a
single-process run over the same global batches, on TensorFlow and on JAX; and the variables
that describe a cluster (`training.cluster`) are parsed and refused with one-line errors.

Each engine runs a tiny ToCo and a tiny AMR (`tests/helpers.py`, with SGD as in
tests/test_distribute.py) for 3 steps of global
batches of 4 images (2 per process) twice: once as 2 processes started by `wsss launch`, once
as one process, both from the same seed, loader and recipe. What "the same" means per engine:

- JAX: the processes run one program over the global batch, sharded (keras.distribution's
  DataParallel over both processes' devices): every batch statistic (AMR's gates, ToCo's
  balanced seg loss), every random draw (ToCo's local crops, from the replicated seed state)
  is the one of a single process over all 4 images. Compared with one process on one device.
- TensorFlow: MultiWorkerMirroredStrategy runs the step once per worker on its 2 images, so
  batch statistics are per worker and both workers draw the same random numbers from the
  mirrored seed state (as two replicas of MirroredStrategy do; tests/test_distribute.py).
  Compared with one process of MirroredStrategy over two logical CPU devices, which computes
  exactly that per-replica step, on the same global batch: the only thing that differs is that
  the replicas are in two processes, exchanging gradients over the network.

Tolerance: sums over two devices or processes round differently in float32 (about 1e-7
relative per operation); three steps of SGD (linear in the gradient, unlike Adam, whose
g / sqrt(v) can turn rounding in a near-zero gradient into a whole step) on weights of order
1 keep the difference near 1e-7 in practice; losses are compared at rel 1e-4 / abs 1e-5 and every model variable
(weights, BatchNorm statistics, optimiser-free state such as the EMA teacher and seeds) at
abs 1e-4, as tests/test_distribute.py does. A sharding or ordering mistake (a process
training on the other's images, a skipped all-reduce) moves losses by 1e-2 or more.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import tiny_synthetic

from wsss_keras.errors import WSSSError
from wsss_keras.training.cluster import (
    ClusterError,
    check_batch,
    cluster_from_env,
    cluster_timeout,
    free_port,
    wait_for_coordinator,
)

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 3
TOLERANCE = 1e-4

WORKER = textwrap.dedent("""
    import csv, json, os, sys
    backend, data, out, mode = sys.argv[1:5]
    sys.path.insert(0, {here!r})
    if backend == "tensorflow" and mode == "single":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras import ops
    from wsss_keras.pipelines.fitting import fit_steps
    from wsss_keras.training.options import TrainingOptions, training_session

    distribute = "none" if (backend == "jax" and mode == "single") else "data-parallel"
    with training_session(TrainingOptions(distribute=distribute, log_every=1, tensorboard=False,
                                          resume=False)) as options:
        from helpers import plain_training_loader, tiny_amr_for_training, tiny_toco_for_training, toco_training_loader
        for method in ("toco", "amr"):
            if method == "toco":
                model, loader = tiny_toco_for_training(), toco_training_loader(data, 4)
                # SGD (AMR's is already): its update is linear in the gradient, so float32 rounding
                # in the all-reduce stays rounding; Adam's g / sqrt(v) can turn it, in a near-zero
                # gradient, into a whole step (as in tests/test_distribute.py).
                model.compile(optimizer=keras.optimizers.SGD(0.05))
            else:
                model, loader = tiny_amr_for_training(), plain_training_loader(data, 32, 4)
            folder = os.path.join(out, method)
            fit_steps(model, loader, {steps}, folder, "model.keras", {{"recipe": {{"name": "mp-" + method}}}})
            trainable = {{id(v) for v in model.trainable_variables}}
            state = {{f"{{'t' if id(v) in trainable else 'v'}}{{i:04d}}": ops.convert_to_numpy(v)
                     for i, v in enumerate(model.variables)}}
            np.savez(os.path.join(out, f"{{method}}-state-p{{options.process_id}}.npz"), **state)
            print("REPLICAS", method, options.replicas, options.num_processes, flush=True)
""")


def _environment(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "WSSS_CLUSTER_TIMEOUT": "120"}
    for name in ("TF_CONFIG", "XLA_FLAGS", "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                 "KERAS_DISTRIBUTION_PROCESS_ID", "SLURM_NTASKS", "SLURM_PROCID", "WSSS_COORDINATOR"):
        env.pop(name, None)
    return env


def _losses(folder):
    import csv

    with open(os.path.join(folder, "train_log.csv"), encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items() if key not in ("seconds", "learning_rate")}
                for row in csv.DictReader(handle)]


def _state(path, trainable_only=False):
    with np.load(path) as arrays:
        names = sorted(arrays.files, key=lambda name: name[1:])
        return [arrays[name].astype("float64") for name in names if name.startswith("t") or not trainable_only]


def _largest_difference(a, b):
    assert len(a) == len(b)
    return max(float(np.abs(x - y).max()) if x.size else 0.0 for x, y in zip(a, b))


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_two_processes_match_one(backend, tmp_path):
    data = tiny_synthetic(tmp_path / "data", n_train=8, n_val=2, size=40, classes="3")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(here=HERE, steps=STEPS))
    env = _environment(backend)
    single_out, multi_out = tmp_path / "single", tmp_path / "multi"
    # Both at once: the single-process run's start-up overlaps the two processes'.
    single = subprocess.Popen([sys.executable, str(script), backend, data, str(single_out), "single"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE)
    multi = subprocess.run([sys.executable, "-m", "wsss_keras.cli", "--backend", backend, "launch", "--nproc", "2",
                            "--port", str(free_port()), "--logs", str(tmp_path / "logs"), "--", "python", str(script),
                            backend, data, str(multi_out), "multi"], env=env, capture_output=True, text=True, check=False,
                           timeout=600, cwd=HERE)
    single_output = single.communicate(timeout=600)[0]
    logs = "".join((tmp_path / "logs" / f"process-{i}.log").read_text()[-3000:] for i in range(2)
                   if (tmp_path / "logs" / f"process-{i}.log").exists())
    assert multi.returncode == 0, multi.stdout[-2000:] + multi.stderr[-2000:] + logs
    assert single.returncode == 0, single_output[-3000:]
    assert "REPLICAS toco 2 2" in multi.stdout and "REPLICAS amr 2 2" in multi.stdout, multi.stdout[-2000:]
    figures = {}
    for method in ("toco", "amr"):
        # Only process 0 wrote the run's files.
        assert sorted(os.listdir(multi_out / method)) == sorted(os.listdir(single_out / method)), method
        want, got = _losses(single_out / method), _losses(multi_out / method)
        assert len(want) == len(got) == STEPS, (want, got)
        loss_gap = 0.0
        for want_row, got_row in zip(want, got):
            assert set(want_row) == set(got_row), (want_row, got_row)
            for key, value in want_row.items():
                assert got_row[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (method, key, want, got)
                loss_gap = max(loss_gap, abs(got_row[key] - value))
        reference = _state(single_out / f"{method}-state-p0.npz")
        chief = _state(multi_out / f"{method}-state-p0.npz")
        weight_gap = _largest_difference(reference, chief)
        assert weight_gap < TOLERANCE, (method, weight_gap)
        # Both processes hold the same model; on TensorFlow except BatchNorm's moving statistics
        # (ToCo's stem), which each worker keeps of its own images, as each replica of
        # MirroredStrategy does (whose saved model holds replica 0's, as the chief's does).
        trainable_only = backend == "tensorflow"
        shared = _largest_difference(_state(multi_out / f"{method}-state-p0.npz", trainable_only),
                                     _state(multi_out / f"{method}-state-p1.npz", trainable_only))
        assert shared < 1e-6, (method, shared)
        figures[method] = {"loss": loss_gap, "weights": weight_gap}
    print("FIGURES", backend, json.dumps(figures))


def test_launch_names_the_failed_process_and_stops_the_others(tmp_path):
    """One process fails at once, the other would sleep for ten minutes: the launcher stops it
    and exits with the failure's status, naming process 1 and its log."""
    script = "import os, sys, time\nif os.environ['KERAS_DISTRIBUTION_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(600)\n"
    result = subprocess.run([sys.executable, "-m", "wsss_keras.cli", "launch", "--nproc", "2", "--backend", "jax",
                             "--logs", str(tmp_path / "logs"), "--", "python", "-c", script],
                            env=_environment("jax"), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert "process 1 of 2 failed (exit status 3)" in result.stderr, result.stderr
    assert str(tmp_path / "logs" / "process-1.log") in result.stderr


@pytest.mark.parametrize("arguments, message", [
    (["--backend", "torch"], "the torch backend trains on one device"),
    (["--backend", "jax", "--", "wsss", "train", "r", "--data", "d", "--out", "o"], "--distribute data-parallel"),
])
def test_launch_refuses_up_front(arguments, message, tmp_path):
    command = arguments if "--" in arguments else [*arguments, "--", "wsss", "train", "r", "--distribute",
                                                                "data-parallel"]
    result = subprocess.run([sys.executable, "-m", "wsss_keras.cli", "launch", "--nproc", "2", *command],
                            env=_environment("jax"), capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            check=False)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# The environment, parsed: no processes started.

def test_launch_variables_give_the_cluster():
    from wsss_keras.commands.launch import child_environment

    env = child_environment({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "tensorflow", 3, 2, 4000)
    cluster = cluster_from_env(env)
    assert (cluster.num_processes, cluster.process_id, cluster.coordinator) == (3, 2, "127.0.0.1:4000")
    assert json.loads(env["TF_CONFIG"]) == {"cluster": {"worker": ["127.0.0.1:4000", "127.0.0.1:4001", "127.0.0.1:4002"]},
                                            "task": {"type": "worker", "index": 2}}
    assert "XLA_FLAGS" not in env
    del env["TF_CONFIG"]  # the same cluster from the JAX variables alone
    assert cluster_from_env(env) == cluster.__class__(3, 2, cluster.addresses, cluster_from_env(env).source)


def test_slurm_and_kubernetes_variables():
    slurm = cluster_from_env({"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "WSSS_COORDINATOR": "node1:1234"})
    assert (slurm.num_processes, slurm.process_id, slurm.coordinator, slurm.is_chief) == (4, 3, "node1:1234", False)
    assert slurm.addresses[3] == "node1:1237"
    indexed = cluster_from_env({"JOB_COMPLETION_INDEX": "0", "WSSS_NUM_PROCESSES": "2",
                                "KERAS_DISTRIBUTION_JOB_ADDRESSES": "train-0.svc:5000,train-1.svc:5000"})
    assert indexed.is_chief and indexed.addresses == ("train-0.svc:5000", "train-1.svc:5000")
    # An interactive SLURM shell, a plain run: no cluster without an address or with one process.
    assert cluster_from_env({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None
    assert cluster_from_env({"WSSS_NUM_PROCESSES": "1", "WSSS_PROCESS_ID": "0", "WSSS_COORDINATOR": "h:1"}) is None
    assert cluster_from_env({}) is None


@pytest.mark.parametrize("env, message", [
    ({"WSSS_NUM_PROCESSES": "2", "WSSS_PROCESS_ID": "2", "WSSS_COORDINATOR": "h:1"}, "WSSS_PROCESS_ID=2: out of range"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "-1", "WSSS_COORDINATOR": "h:1"}, "SLURM_PROCID=-1: out of range"),
    ({"WSSS_NUM_PROCESSES": "two", "WSSS_PROCESS_ID": "0", "WSSS_COORDINATOR": "h:1"}, "'two': not a whole number"),
    ({"WSSS_NUM_PROCESSES": "2", "WSSS_COORDINATOR": "h:1"}, "no process id"),
    ({"WSSS_NUM_PROCESSES": "2", "WSSS_PROCESS_ID": "1"}, "no coordinator; set WSSS_COORDINATOR"),
    ({"WSSS_NUM_PROCESSES": "2", "WSSS_PROCESS_ID": "1", "WSSS_COORDINATOR": "nohost"}, "'nohost' is not host:port"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "3", "KERAS_DISTRIBUTION_PROCESS_ID": "0",
      "KERAS_DISTRIBUTION_JOB_ADDRESSES": "a:1,b:1"}, "names 2 addresses but KERAS_DISTRIBUTION_NUM_PROCESSES=3"),
    ({"WSSS_COORDINATOR": "h:1"}, "no process count"),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}'},
     "task index 5: out of range for 2 workers"),
    ({"TF_CONFIG": "{not json"}, "not a TensorFlow cluster"),
    ({"WSSS_CLUSTER_TIMEOUT": "soon"}, "WSSS_CLUSTER_TIMEOUT='soon'"),
])
def test_bad_cluster_variables_are_one_line_errors(env, message):
    with pytest.raises(ClusterError) as error:
        cluster_from_env(env)
        cluster_timeout(env)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value, WSSSError)


def test_global_batch_must_split_over_all_devices():
    check_batch(8, 4, "[train]")
    with pytest.raises(ClusterError, match=r"batch_size 6 does not split over 4 devices.*multiple of 4 \(4 or 8\)"):
        check_batch(6, 4, "[train]")


def test_unreachable_coordinator_times_out_with_its_address():
    port = free_port()  # nothing listens there
    cluster = cluster_from_env({"WSSS_NUM_PROCESSES": "2", "WSSS_PROCESS_ID": "1", "WSSS_COORDINATOR": f"127.0.0.1:{port}"})
    with pytest.raises(ClusterError, match=rf"coordinator 127.0.0.1:{port} .*unreachable for 1 s"):
        wait_for_coordinator(cluster, 1.0, sleep=0.1)


def test_shards_are_the_single_process_batch():
    """Process i's rows of every micro-batch, put together, are the batch a single process cuts."""
    from wsss_keras.data.loader import shard_positions

    positions = list(range(16, 24))
    assert shard_positions(positions, 0, 2) + shard_positions(positions, 1, 2) == positions
    # Accumulating 2 micro-batches: micro-batch j of both processes is micro-batch j of the batch.
    zero, one = shard_positions(positions, 0, 2, 2), shard_positions(positions, 1, 2, 2)
    assert zero == [16, 17, 20, 21] and one == [18, 19, 22, 23]
    with pytest.raises(WSSSError, match="multiple of 4"):
        shard_positions(range(6), 0, 2, 2)
