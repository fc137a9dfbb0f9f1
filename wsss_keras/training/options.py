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
            TF_CONFIG is set).
    """

    resume: bool | None = None
    checkpoint_every: int | None = None
    log_every: int | None = None
    tensorboard: bool = True
    precision: str = "float32"
    distribute: str = "none"
    replicas: int = 1  # set by `training_session`

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


def data_parallel_scope():
    """(context manager, replicas) for data-parallel training on the current backend."""
    import keras

    from wsss_keras.errors import WSSSError

    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        return _jax_data_parallel(devices), len(devices)
    if backend == "tensorflow":
        import os

        import tensorflow as tf

        # TF_CONFIG describes a multi-worker cluster; without it, every local GPU is a replica, or
        # with no GPU every logical CPU device (how data-parallel training is tested on a CPU).
        if os.environ.get("TF_CONFIG"):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            strategy = tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
        return strategy.scope(), strategy.num_replicas_in_sync
    raise WSSSError(f"--distribute data-parallel: the {backend} backend trains on one device here; use "
                    "--backend jax (keras.distribution) or --backend tensorflow (tf.distribute) for several devices.")


@contextlib.contextmanager
def _jax_data_parallel(devices):
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
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
            scope, replicas = data_parallel_scope()
            if replicas < 2:
                echo("[distribute] one device found: data-parallel training runs as single-device training "
                     "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N for JAX)")
            options = dataclasses.replace(options, replicas=replicas)
            with scope, training_options(options):
                yield options
        else:
            with training_options(options):
                yield options
    finally:
        keras.config.set_dtype_policy(previous_policy)
