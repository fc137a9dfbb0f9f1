"""How training stages run, beyond what the recipe says: checkpoints and resuming, logs,
precision, devices. The CLI sets them once for a command (`training_options`); every training
stage reads them in `pipelines.fitting.fit_steps`.
"""

import contextlib
import dataclasses

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTIONS = ("none", "data-parallel")


@dataclasses.dataclass
class TrainingOptions:
    """Args:
        resume: True: continue from the stage's last checkpoint; False: delete it and start
            over; None (default): continue when there is one.
        checkpoint_every: steps between checkpoints; None: min(1000, max(50, steps // 10));
            0: only when interrupted.
        log_every: steps per CSV/TensorBoard row and progress line; None: max(1, steps // 20),
            at most 100.
        tensorboard: also write the logged scalars for TensorBoard (OUT/tensorboard/<stage>).
        precision: the Keras dtype policy ("float32", "mixed_float16", "mixed_bfloat16").
        distribute: "none" or "data-parallel" (JAX: keras.distribution.DataParallel;
            TensorFlow: tf.distribute.MirroredStrategy, or MultiWorkerMirroredStrategy when
            TF_CONFIG is set). Several processes (`wsss launch`, SLURM, a Kubernetes Indexed
            Job; `training.cluster`) need it: each then trains on its shard of every global batch.
    """

    resume: bool | None = None
    checkpoint_every: int | None = None
    log_every: int | None = None
    tensorboard: bool = True
    precision: str = "float32"
    distribute: str = "none"
    replicas: int = 1  # set by `training_session`: devices of all processes together
    process_id: int = 0  # set by `training_session` in a multi-process run; 0 is the chief
    num_processes: int = 1

    @property
    def is_chief(self):
        """Whether this process writes the stage's files (checkpoints, model, logs)."""
        return self.process_id == 0

    def checkpoint_interval(self, steps):
        if self.checkpoint_every is not None:
            return int(self.checkpoint_every)
        return min(1000, max(50, steps // 10))

    def log_interval(self, steps):
        return int(self.log_every) if self.log_every else min(100, max(1, steps // 20))


_current = [TrainingOptions()]


def current_options():
    return _current[-1]


@contextlib.contextmanager
def training_options(options):
    """Make `options` the ones training stages use inside the block."""
    _current.append(options)
    try:
        yield options
    finally:
        _current.pop()


def data_parallel_scope(cluster=None):
    """(context manager, replicas) for data-parallel training on the current backend; with a
    `training.cluster.Cluster`, over the devices of all its processes."""
    import keras

    from wsss_keras.errors import WSSSError

    backend = keras.backend.backend()
    if backend == "jax":
        if cluster is not None:
            _initialize_jax(cluster)
        devices = keras.distribution.list_devices()  # every process's devices, once initialised
        return _jax_data_parallel(devices, sharded=cluster is not None), len(devices)
    if backend == "tensorflow":
        import os

        import tensorflow as tf

        # TF_CONFIG describes a multi-worker cluster; without it, every local GPU is a replica, or
        # with no GPU every logical CPU device (how data-parallel training is tested on a CPU).
        if cluster is not None:
            strategy = _tf_multi_worker(cluster)
        elif os.environ.get("TF_CONFIG"):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            strategy = tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
        return strategy.scope(), strategy.num_replicas_in_sync
    raise WSSSError(f"--distribute data-parallel: the {backend} backend trains on one device here; use "
                    "--backend jax (keras.distribution) or --backend tensorflow (tf.distribute) for several devices.")


_jax_initialized = []  # the Cluster jax.distributed was started with: once per process


def _initialize_jax(cluster):
    import jax

    from wsss_keras.training.cluster import (
        ClusterError,
        cluster_timeout,
        wait_for_coordinator,
    )

    if _jax_initialized:
        if _jax_initialized[0] != cluster:
            raise ClusterError(f"this process already joined {_jax_initialized[0]}; one process joins one cluster.")
        return
    timeout = cluster_timeout()
    # Cross-process collectives on CPUs need an implementation (GPUs and TPUs bring theirs);
    # gloo works over TCP, so loopback tests and CPU clusters train as GPU ones do.
    if "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    wait_for_coordinator(cluster, timeout)
    try:
        # The heartbeat makes the others stop with an error when a process dies, instead of
        # waiting forever in a collective.
        jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                                   process_id=cluster.process_id, initialization_timeout=int(timeout),
                                   heartbeat_timeout_seconds=int(min(timeout, 60)))
    except Exception as error:  # noqa: BLE001 (JAX raises several kinds; all mean the same here)
        raise ClusterError(f"process {cluster.process_id} of {cluster.num_processes} could not join coordinator "
                           f"{cluster.coordinator} (from {cluster.source}) within {timeout:.0f} s: "
                           f"{str(error).splitlines()[0][:200]}; start every process with the same address, or "
                           "raise WSSS_CLUSTER_TIMEOUT.") from None
    _jax_initialized.append(cluster)
    # Keras's own `keras.distribution.initialize` does this too: one random seed everywhere
    # when none was set, so that every process builds the same initial weights.
    from keras.src.backend.jax.distribution_lib import initialize_rng

    initialize_rng()


def _tf_multi_worker(cluster):
    import os

    import tensorflow as tf

    from wsss_keras.training.cluster import cluster_timeout, wait_for_coordinator

    timeout = cluster_timeout()
    os.environ["TF_CONFIG"] = cluster.tf_config()  # what MultiWorkerMirroredStrategy reads
    wait_for_coordinator(cluster, timeout)
    # A collective that waits longer than the timeout (a process died) fails instead of hanging.
    communication = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=communication)


def check_same_everywhere(options, digest, what):
    """Raise in every process unless all processes of the run computed the same `digest` (a
    hex string) of `what`; a collective, so every process calls it at the same point."""
    import numpy as np

    from wsss_keras.training.cluster import ClusterError

    if options.num_processes < 2:
        return
    import keras

    value = int(digest[:7], 16)  # 28 bits: exact in int32, which every engine gathers
    if keras.backend.backend() == "jax":
        from jax.experimental import multihost_utils

        values = np.asarray(multihost_utils.process_allgather(np.asarray([value], np.int32))).reshape(-1)
    else:
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        gathered = strategy.gather(strategy.run(lambda: tf.constant([value], tf.int32)), axis=0)
        values = np.asarray(gathered).reshape(-1)
    if len(set(values.tolist())) > 1:
        raise ClusterError(f"process {options.process_id} of {options.num_processes}: {what} differs between processes "
                           f"(digests {', '.join(f'{v:07x}' for v in values.tolist())}); start every process with the "
                           "same recipe, --steps and flags.")


@contextlib.contextmanager
def _jax_data_parallel(devices, sharded=False):
    import keras

    previous = keras.distribution.distribution()
    # sharded: each process feeds its own rows of the global batch (`fit_steps`), which Keras
    # then assembles into the global array (jax.make_array_from_process_local_data).
    distribution = (keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False) if sharded
                    else keras.distribution.DataParallel(devices=devices))
    keras.distribution.set_distribution(distribution)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


@contextlib.contextmanager
def training_session(options, echo=print):
    """Everything a training command runs inside: `options` for `fit_steps`, the dtype policy of
    `options.precision` (set before any model is built), and the data-parallel scope."""
    import keras

    from wsss_keras.errors import WSSSError

    if options.precision not in PRECISIONS:
        raise WSSSError(f"--precision {options.precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if options.distribute not in DISTRIBUTIONS:
        raise WSSSError(f"--distribute {options.distribute!r}: choose one of {', '.join(DISTRIBUTIONS)}.")
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(options.precision)
    try:
        if options.distribute == "data-parallel":
            from wsss_keras.training.cluster import cluster_from_env

            cluster = cluster_from_env()
            scope, replicas = data_parallel_scope(cluster)
            if replicas < 2:
                echo("[distribute] one device found: data-parallel training runs as single-device training "
                     "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N for JAX)")
            options = dataclasses.replace(options, replicas=replicas)
            if cluster is not None:
                options = dataclasses.replace(options, process_id=cluster.process_id,
                                              num_processes=cluster.num_processes)
                echo(f"[distribute] process {cluster.process_id} of {cluster.num_processes} ({cluster.source}), "
                     f"{replicas} devices in all" + ("" if cluster.is_chief else "; process 0 writes the files"))
            with scope, training_options(options):
                yield options
        else:
            with training_options(options):
                yield options
    finally:
        keras.config.set_dtype_policy(previous_policy)
