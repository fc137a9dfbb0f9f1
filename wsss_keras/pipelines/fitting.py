"""The training loop every method's stages share: the optimiser a recipe table asks for, the
step-counted fit with its logs, checkpoints and resumption, and how a model is saved.

Below the per-method pipelines (`toco`, `amr`, `ssc`, `weclip`, `irn`, `segmentation`), which
import it; it imports none of them, so a trainer never reaches back up into `train`, the
command that dispatches to them.
"""

import contextlib
import json
import os
import shutil
import time

from wsss_keras.errors import WSSSError
from wsss_keras.recipes import recipe_error, recipe_source, section

MODEL_FILE = "model.keras"
# Step counters some models keep themselves, advanced once per training batch: ToCo's and SSC's
# `train_steps`, SSR's `cmpa_step`. Under accumulation they would count micro-batches, so
# `fit_steps` refuses such a model unless it has an `accumulate` attribute (set to K, for it
# to divide by).
STEP_COUNTERS = ("train_steps", "cmpa_step")


def saved_recipe(recipe):
    """The recipe as a model saves it (without the file path, which is machine-specific)."""
    tables = dict(recipe)
    tables["recipe"] = {key: value for key, value in recipe["recipe"].items() if key != "path"}
    return tables


def make_optimizer(recipe, table, steps, model=None, defaults=None, adam_group=None):
    """The optimiser a recipe table asks for, on a poly schedule with linear warm-up.

    Keys of the table: `optimizer` ("adamw", ToCo's PolyWarmupAdamW; or "sgd", IRN's
    PolyOptimizer), `learning_rate`, `warmup_steps`, `power`, `weight_decay`, `momentum` (SGD),
    `lr_multipliers` ({variable-path substring: factor}, added to the model's own groups) and
    `accumulate` (K, default 1: each optimiser step averages the gradients of K micro-batches,
    Keras's `gradient_accumulation_steps`; `fit_steps` splits the table's batch into them).

    Args:
        recipe: the loaded recipe.
        table: the table holding the stage's settings ("train", "irn", "segmentation", ...).
        steps: the schedule's length.
        model: the model to train; its own parameter groups (`lr_multipliers`, and for SGD
            `weight_decay_multipliers`), when it has them, come before the table's.
        defaults: fallback values for keys the table leaves out.
        adam_group: for SGD, an optional second group trained with Adam (SSC's decoder): a dict
            with `paths` (variable-path substrings) and `learning_rate`, `beta_1`, `beta_2`,
            `epsilon`, `power` (its own poly schedule over the same steps).
    """
    from wsss_keras.training.schedules import PolyWarmup

    settings = section(recipe, table)
    defaults = defaults or {}

    def setting(key, fallback):
        # Looked up in the table itself, so a recording table (tests) sees what is read.
        return settings[key] if key in settings else defaults.get(key, fallback)

    kind = setting("optimizer", "adamw")
    accumulate = accumulation(recipe, table, settings)
    if "batch_size" in settings:  # early, before the stage loads anything; fit_steps checks the loader's too
        check_accumulation(recipe, table, int(settings["batch_size"]), accumulate)
    multipliers = {**dict(getattr(model, "lr_multipliers", None) or {}), **dict(setting("lr_multipliers", {}))}
    schedule = PolyWarmup(
        float(setting("learning_rate", 6e-5)), int(setting("warmup_steps", 0)), steps,
        power=float(setting("power", 0.9)),
    )
    optimizer = _optimizer(recipe, table, kind, schedule, steps, setting, model, multipliers, adam_group,
                           gradient_accumulation_steps=accumulate if accumulate > 1 else None)
    optimizer.recipe_table = table  # for fit_steps's messages
    return optimizer


def _optimizer(recipe, table, kind, schedule, steps, setting, model, multipliers, adam_group, **common):
    from wsss_keras.training.schedules import PolyWarmup

    if kind == "adamw":
        from wsss_keras.training.optimizers import GroupedAdamW

        return GroupedAdamW(schedule, lr_multipliers=multipliers, weight_decay=float(setting("weight_decay", 0.01)),
                            **common)
    if kind == "sgd":
        from wsss_keras.training.optimizers import GroupedSGD, GroupedSGDWithAdam

        options = dict(
            lr_multipliers=multipliers, momentum=float(setting("momentum", 0.0)),
            weight_decay=float(setting("weight_decay", 1e-4)),
            weight_decay_multipliers=dict(getattr(model, "weight_decay_multipliers", None) or {}), **common,
        )
        if not adam_group:
            return GroupedSGD(schedule, **options)
        adam_schedule = PolyWarmup(float(adam_group["learning_rate"]), 0, steps, power=float(adam_group.get("power", 0.9)))
        return GroupedSGDWithAdam(
            schedule, adam_paths=tuple(adam_group["paths"]), adam_learning_rate=adam_schedule,
            adam_beta_1=float(adam_group.get("beta_1", 0.5)), adam_beta_2=float(adam_group.get("beta_2", 0.999)),
            adam_epsilon=float(adam_group.get("epsilon", 1e-8)), **options,
        )
    raise recipe_error(recipe, f"[{table}] optimizer = {kind!r}; choose \"adamw\" or \"sgd\".")


def accumulation(recipe, table, settings=None):
    """The table's `accumulate` (micro-batches per optimiser step, default 1), checked."""
    settings = section(recipe, table) if settings is None else settings
    value = settings.get("accumulate", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise recipe_error(recipe, f"[{table}] accumulate = {value!r}; give a whole number >= 1 (1: no accumulation).")
    return value


def check_accumulation(recipe, table, batch_size, accumulate, replicas=1):
    """Raise a one-line recipe error unless `batch_size` splits into `accumulate` micro-batches
    that each split evenly over `replicas`."""
    parts = accumulate * replicas
    if accumulate > 1 and batch_size % parts:
        over = f" over {replicas} replicas" if replicas > 1 else ""
        lower, upper = batch_size // parts * parts, (batch_size // parts + 1) * parts
        sizes = " or ".join(str(size) for size in (lower, upper) if size > 0)
        raise recipe_error(
            recipe, f"[{table}] batch_size = {batch_size} does not split into accumulate = {accumulate} equal "
            f"micro-batches{over}; set batch_size to a multiple of {parts} ({sizes}) or accumulate to a divisor of "
            f"{batch_size // replicas if batch_size % replicas == 0 else batch_size}."
        )


def _accumulate_steps(model):
    """The compiled optimiser's `gradient_accumulation_steps` (1 when none), and the recipe
    table it came from (`make_optimizer`), through a `LossScaleOptimizer` (mixed_float16)."""
    optimizer = getattr(model, "optimizer", None)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return int(getattr(inner, "gradient_accumulation_steps", None) or 1), getattr(inner, "recipe_table", None)


def _averaged_over_replicas(compute_loss):
    """Under tf.distribute, Keras sums the replicas' gradients and expects each replica's loss
    divided by the replica count (its `Loss` objects do that); the methods' own `compute_loss`
    returns the plain mean over the replica's batch, so it is divided here, for this run only."""
    import tensorflow as tf

    def averaged(*args, **kwargs):
        loss = compute_loss(*args, **kwargs)
        return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)

    return averaged


def _split_batch(batch, part, parts):
    """Micro-batch `part` of `parts` of a loader batch: every array cut on axis 0, through
    tuples, lists and dicts (the targets); anything without a batch axis is kept whole."""
    if isinstance(batch, dict):
        return {key: _split_batch(value, part, parts) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_split_batch(value, part, parts) for value in batch)
    if getattr(batch, "ndim", 0) >= 1:
        size = batch.shape[0] // parts
        return batch[part * size:(part + 1) * size]
    return batch


def _micro_batches(stream, parts):
    """A PyDataset whose item s·parts + j is micro-batch j of the stream's item s (see
    `fit_steps`). Each loader batch is read once: the micro-batches of a step are cut from one
    cached read, whichever worker thread asks first (a few steps are kept, as many as the
    prefetch queue can hold)."""
    import threading

    import keras

    class MicroBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=stream.workers, use_multiprocessing=stream.use_multiprocessing,
                             max_queue_size=stream.max_queue_size)
            self._reset()

        def _reset(self):
            self._lock, self._cache = threading.Lock(), {}

        def __getstate__(self):  # worker processes (use_multiprocessing) get their own cache
            return {key: value for key, value in self.__dict__.items() if key not in ("_lock", "_cache")}

        def __setstate__(self, state):
            self.__dict__.update(state)
            self._reset()

        def __len__(self):
            return len(stream) * parts

        def __getitem__(self, index):
            step, part = divmod(int(index), parts)
            with self._lock:
                entry = self._cache.get(step)
                if entry is None:
                    entry = self._cache[step] = {"lock": threading.Lock(), "batch": None}
                    while len(self._cache) > int(stream.max_queue_size or 10) + 2:
                        self._cache.pop(next(iter(self._cache)))
            with entry["lock"]:
                if entry["batch"] is None:
                    entry["batch"] = stream[step]
                batch = entry["batch"]
            if part == parts - 1:
                with self._lock:
                    self._cache.pop(step, None)
            return _split_batch(batch, part, parts)

    return MicroBatches()


def _per_optimizer_step(callbacks, parts):
    """One Keras callback that hands `callbacks` every `parts`-th training batch as one batch
    (`fit_steps` with accumulation), numbered in optimiser steps: their clocks, logs, progress,
    checkpoints and timings count optimiser steps, and a checkpoint is only ever written after
    the last micro-batch of a step, when the optimiser's accumulators are empty again."""
    import keras

    class PerOptimizerStep(keras.callbacks.Callback):
        def set_model(self, model):
            super().set_model(model)
            for callback in callbacks:
                callback.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            params = dict(params or {})
            if params.get("steps"):
                params["steps"] = params["steps"] // parts
            for callback in callbacks:
                callback.set_params(params)

        def _forward(self, hook, *args, **kwargs):
            for callback in callbacks:
                getattr(callback, hook)(*args, **kwargs)

        def on_train_begin(self, logs=None):
            self._forward("on_train_begin", logs)

        def on_train_end(self, logs=None):
            self._forward("on_train_end", logs)

        def on_epoch_begin(self, epoch, logs=None):
            self._forward("on_epoch_begin", epoch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self._forward("on_epoch_end", epoch, logs)

        def on_train_batch_begin(self, batch, logs=None):
            if batch % parts == 0:
                self._forward("on_train_batch_begin", batch // parts, logs)

        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % parts == 0:
                self._forward("on_train_batch_end", (batch + 1) // parts - 1, logs)

    return PerOptimizerStep()


class TrainingInterrupted(WSSSError):
    """Training stopped on SIGTERM or Ctrl-C after writing a checkpoint; `exit_code` is the
    shell's convention for that signal (143, 130)."""

    def __init__(self, message, signal_name):
        import signal

        super().__init__(message)
        self.exit_code = 128 + int(signal.Signals[signal_name])


def fit_steps(model, loader, steps, out_dir, model_file, recipe, stage="train", echo=print, summary=None, callbacks=(),
              options=None):
    """Fit a compiled `model` for `steps` steps of `loader`; save it and its logs into `out_dir`.

    Every training stage of every method ends here, so they all print the same progress, write
    the same logs and checkpoints, resume the same way and stop on a diverged loss. They leave
    `<model_file>`, `<stem>_log.csv` (one row per `log_every` steps: the losses' means over
    those steps and the learning rate) and `<stem>_summary.json` (`train_log.csv` /
    `train_summary.json` for the main model), and while training
    `checkpoints/<stem>/` (removed once the model is saved) and `tensorboard/<stem>/`.

    Gradient accumulation: when the model's optimiser accumulates K gradients (`make_optimizer`
    from a table with `accumulate = K`), each loader batch (the table's `batch_size`, the global
    batch) is cut into K micro-batches of batch_size / K images, fit runs over steps · K of them,
    and the optimiser applies the mean of their gradients once per step. Everything counted
    in steps (the learning-rate schedule, warm-up, logs, progress, checkpoints, resuming) counts
    optimiser steps, as without accumulation; a checkpoint is only written at a step's end, when
    the accumulators are empty. With a loss that is a mean over the batch, the step is the one
    the whole batch would give, except that BatchNorm (where not frozen) normalises each
    micro-batch with its own statistics: the known difference from a true large batch. A model
    with its own step counter (`STEP_COUNTERS`) must expose `accumulate` for fit_steps to set,
    else it is refused: its counter would count micro-batches. Under --precision mixed_float16
    a micro-batch whose scaled gradients overflow is skipped by Keras's loss-scale optimizer
    without counting, so that step averages a micro-batch of the next one in (rare: after the
    first steps the loss scale has settled).

    Args:
        model: a compiled Keras model whose `compute_loss` reads the loader's targets.
        loader: a `SegmentationLoader`; step s trains on batch s % len(loader) of epoch
            s // len(loader) (`StepStream`), so a resumed run reads what an uninterrupted one would.
        steps: optimiser steps.
        model_file: the file name of the saved model inside `out_dir`; the log files take its
            stem (`segmenter.keras` -> `segmenter_log.csv`), except `model.keras` -> `train_*`.
        recipe: the loaded recipe (its name and path go into messages and the summary).
        stage: the stage's name, the prefix of its messages.
        summary: extra entries for the summary JSON.
        callbacks: further Keras callbacks (SSR's prototype refresh); one with a `start_step`
            attribute is told the step training starts at.
        options: a `TrainingOptions` (default: the command's, `training.options.current_options`).

    Raises:
        TrainingInterrupted: SIGTERM or Ctrl-C; a checkpoint was written, rerun to resume.
        WSSSError: the loss stopped being finite; the last good checkpoint is kept.

    Returns:
        the path of the saved model.
    """
    from wsss_keras.training.options import current_options

    options = options or current_options()
    os.makedirs(out_dir, exist_ok=True)
    if options.num_processes > 1:
        with _process_files(options) as files_dir:
            return _fit_steps(model, loader, steps, out_dir, model_file, recipe, stage, echo, summary, callbacks,
                              options, files_dir)
    return _fit_steps(model, loader, steps, out_dir, model_file, recipe, stage, echo, summary, callbacks, options,
                      out_dir)


@contextlib.contextmanager
def _process_files(options):
    """Where this process of a multi-process run writes its files: OUT for the chief
    (process 0), a scratch folder, removed afterwards, for the others. They write the same
    files as the chief there (not nothing) because under tf.distribute reading some variables
    (ON_READ ones: BatchNorm statistics) is a collective every worker must join."""
    import tempfile

    if options.is_chief:
        yield None
        return
    scratch = tempfile.mkdtemp(prefix=f"wsss-process{options.process_id}-")
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fit_steps(model, loader, steps, out_dir, model_file, recipe, stage, echo, summary, callbacks, options, files_dir):
    import keras

    from wsss_keras.data.loader import StepStream
    from wsss_keras.training.callbacks import (
        Checkpointing,
        StepClock,
        StepCounter,
        StepLog,
        StepProgress,
        StepTimes,
    )
    from wsss_keras.training.checkpoints import restore_checkpoint
    from wsss_keras.training.keras_internals import (
        build_for_restore,
        compute_loss_wrapped,
    )

    files_dir = files_dir or out_dir  # None: the chief's, OUT itself
    stem = "train" if model_file == MODEL_FILE else os.path.splitext(model_file)[0]
    folder = os.path.join(out_dir, "checkpoints", stem)
    # Every process resumes from the chief's checkpoints (OUT is shared); only the chief writes them.
    write_folder = os.path.join(files_dir, "checkpoints", stem)
    record = _resume_record(folder, steps, stage, options)
    start = record["step"] if record else 0
    accumulate = _prepare_accumulation(model, loader, recipe, stage, options)
    if loader.batch_size % options.replicas:
        raise WSSSError(f"[{stage}] the batch of {loader.batch_size} images is the global batch and must split evenly "
                        f"over the {options.replicas} replicas; set this stage's batch_size in {recipe_source(recipe)} "
                        f"to a multiple of {options.replicas}.")
    if options.num_processes > 1:
        from wsss_keras.training.cluster import recipe_digest
        from wsss_keras.training.options import check_same_everywhere

        # Processes started with different recipes or steps would train on mismatched batches
        # (or deadlock in a collective); the resumed step must agree too.
        check_same_everywhere(options, recipe_digest(saved_recipe(recipe), stage, steps, start, loader.batch_size,
                                                     len(loader), accumulate, options.replicas),
                              f"[{stage}] the recipe ({recipe_source(recipe)}), steps, batch or resumed step")
    if options.resume and record is None:
        echo(f"[{stage}] no checkpoint in {folder}; starting at step 0")
    echo(_start_line(recipe, stage, steps, loader, accumulate, options, start))
    clock = StepClock(start, steps)
    log_every = options.log_interval(steps)
    progress = StepProgress(clock, echo, every=log_every, stage=stage)
    log = StepLog(clock, os.path.join(files_dir, f"{stem}_log.csv"), every=log_every,
                  tensorboard_dir=os.path.join(files_dir, "tensorboard", stem) if options.tensorboard else None)
    if files_dir != out_dir and start:
        _copy_if_there(os.path.join(out_dir, f"{stem}_log.csv"), log.csv_path)  # the rows a resumed log keeps
    checkpointing = Checkpointing(clock, write_folder, every=options.checkpoint_interval(steps))
    for callback in callbacks:
        if hasattr(callback, "start_step"):
            callback.start_step = start
    # Several processes: each reads only its rows of every global batch.
    shard = (options.process_id, options.num_processes, accumulate) if options.num_processes > 1 else None
    stream = StepStream(loader, start, steps) if shard is None else StepStream(loader, start, steps, shard=shard)
    if accumulate > 1:
        stream = _micro_batches(stream, accumulate)  # item s·K + j: micro-batch j of step start + s
    times = StepTimes()
    if record:
        build_for_restore(model, stream[0])  # so that the checkpoint can fill the variables
        restore_checkpoint(model, record)
    per_replica = options.replicas > 1 and keras.backend.backend() == "tensorflow"
    data, fit_options, built = stream, {}, contextlib.nullcontext()
    if per_replica and options.num_processes > 1:
        data, fit_options = _tf_per_worker_dataset(stream), {"steps_per_epoch": len(stream)}
        built = _built_before_fit(model, None if record else stream[0])
    begun = time.perf_counter()
    with compute_loss_wrapped(model, _averaged_over_replicas) if per_replica else contextlib.nullcontext(), built:
        # shuffle=False: Keras would otherwise shuffle the order of a PyDataset's batches; the
        # order is the StepStream's, so that a resumed run reads what an uninterrupted one would.
        step_callbacks = [StepCounter(clock), progress, log, checkpointing, times, *callbacks]
        if accumulate > 1:
            step_callbacks = [_per_optimizer_step(step_callbacks, accumulate)]
        model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=step_callbacks, **fit_options)
    seconds = time.perf_counter() - begun
    _raise_if_stopped(checkpointing, record, folder, stage, recipe, options, clock)
    path = _save_model(model, files_dir, model_file, write_folder)
    record = {
        "recipe": recipe["recipe"]["name"], "stage": stage, "backend": keras.backend.backend(), "steps": steps,
        **({"accumulate": accumulate} if accumulate > 1 else {}), "train_seconds": round(seconds, 1),
        **({"resumed_at": start} if start else {}),
        **({"processes": options.num_processes} if options.num_processes > 1 else {}), **(summary or {}),
        **times.summary(), "final": {key: value for key, value in log.last.items() if key not in ("step", "seconds")},
    }
    with open(os.path.join(files_dir, f"{stem}_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    if options.num_processes > 1:
        from wsss_keras.training.options import check_same_everywhere

        # A barrier: no process goes on (to a stage that loads the model) before the chief has written it.
        check_same_everywhere(options, "0", f"[{stage}] the end of training")
        path = os.path.join(out_dir, model_file)
    echo(f"[{stage}] saved {path}" if options.is_chief else f"[{stage}] done; process 0 saved {path}")
    return path


def _copy_if_there(source, target):
    if os.path.isfile(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)


@contextlib.contextmanager
def _built_before_fit(model, batch):
    """Two Keras 3.15 (TensorFlow) gaps of `fit` under MultiWorkerMirroredStrategy, bridged for
    this fit only (Keras internals):

    - `fit` builds a model with a strategy by reducing the first distributed batch with
      `strategy.reduce`, which the strategy refuses for a nested batch (images, targets
      dict). The model is built here from this worker's `batch` (None: built already), and
      its private `_distribute_strategy` unset, so `fit` skips that and still trains under
      the strategy of the enclosing scope (`distribute_strategy` falls back to
      tf.distribute.get_strategy()).
    - `fit` reduces every log across workers with `strategy.reduce("MEAN", value, axis=0)`,
      which fails for a scalar: each step's logs are given a batch axis of 1 here. The
      metrics are summed over every replica as they update, so each worker holds the global
      value already, and the mean of the copies is that value."""
    import tensorflow as tf

    from wsss_keras.training.keras_internals import build_for_restore

    if batch is not None:
        build_for_restore(model, batch)
    train_step = model.train_step

    def with_batch_axis(data):
        logs = train_step(data)
        return {key: tf.reshape(value, [1]) if getattr(value, "shape", None) == () else value
                for key, value in logs.items()}

    saved = model._distribute_strategy
    model._distribute_strategy = None
    model.__dict__["train_step"] = with_batch_axis
    try:
        yield
    finally:
        model._distribute_strategy = saved
        model.__dict__.pop("train_step", None)


def _tf_per_worker_dataset(stream):
    """`stream` (this worker's shard of every batch) as the input of one worker of
    MultiWorkerMirroredStrategy. Given a plain dataset, tf.distribute would take each element
    as a global batch and auto-shard it by elements, so every worker would read every image;
    `distribute_datasets_from_function` takes the dataset as this worker's own, as it is.
    Keras's `PyDatasetAdapter` (internal, Keras 3.15) turns the PyDataset into a tf.data
    pipeline as `fit` itself would."""
    import tensorflow as tf
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(stream, shuffle=False)
    return tf.distribute.get_strategy().distribute_datasets_from_function(lambda context: adapter.get_tf_dataset())


def _resume_record(folder, steps, stage, options):
    """The checkpoint record to resume from (None: start at step 0, clearing leftovers)."""
    from wsss_keras.training.checkpoints import latest_checkpoint

    record = None if options.resume is False else latest_checkpoint(folder)
    if record is None and os.path.isdir(folder) and options.is_chief:
        shutil.rmtree(folder)  # --restart, or leftovers without a whole checkpoint (the chief's files)
    if record is not None and record["step"] >= steps:
        raise WSSSError(f"[{stage}] {folder} holds a checkpoint at step {record['step']}, past this run's {steps} "
                        "steps; pass --restart to start over, or the steps it was started with.")
    return record


def _prepare_accumulation(model, loader, recipe, stage, options):
    """The optimiser's micro-batches per step (1: none), checked against the batch, and told to
    a model that counts its own steps."""
    accumulate, table = _accumulate_steps(model)
    if accumulate == 1:
        return 1
    check_accumulation(recipe, table or stage, loader.batch_size, accumulate, options.replicas)
    # A class names its counter (`step_counter`), so an unbuilt model, which has no counter
    # variable yet, is recognised too.
    counter = getattr(model, "step_counter", None) or next((name for name in STEP_COUNTERS if hasattr(model, name)), None)
    if counter is not None:
        if not hasattr(model, "accumulate"):
            raise WSSSError(
                f"[{stage}] accumulate = {accumulate}: {type(model).__name__} counts its own steps ({counter}) once "
                "per batch it trains on, so its step-dependent losses would count micro-batches; set accumulate = 1 "
                f"in [{table or stage}] of {recipe_source(recipe)}."
            )
        model.accumulate = accumulate
    return accumulate


def _start_line(recipe, stage, steps, loader, accumulate, options, start):
    import keras

    return (
        f"[{stage}] {recipe['recipe']['name']}: {steps} steps of {loader.batch_size} images "
        f"({steps / len(loader):.1f} epochs), backend {keras.backend.backend()}"
        + (f", each the mean gradient of {accumulate} micro-batches of {loader.batch_size // accumulate}"
           if accumulate > 1 else "")
        + (f", {options.replicas} replicas of {loader.batch_size // accumulate // options.replicas}"
           if options.replicas > 1 else "")
        + (f", {options.precision}" if options.precision != "float32" else "")
        + (f", resuming at step {start}" if start else "")
    )


def _raise_if_stopped(checkpointing, record, folder, stage, recipe, options, clock):
    """A diverged loss or a signal ended the fit early: say so, with the checkpoint kept."""
    if checkpointing.diverged:
        kept = (f"the checkpoint of step {checkpointing.last_saved or record['step']} in {folder} is kept"
                if (checkpointing.last_saved or record) else "no checkpoint was written before it")
        losses = ", ".join(f"{key} {value}" for key, value in checkpointing.diverged["losses"].items())
        hint = " or train in float32 (--precision float32)" if options.precision != "float32" else ""
        raise WSSSError(f"[{stage}] training diverged at step {checkpointing.diverged['step']} ({losses}); {kept}. "
                        f"Lower the learning_rate of this stage in {recipe_source(recipe)}{hint}.")
    if checkpointing.interrupted:
        raise TrainingInterrupted(f"[{stage}] stopped by {checkpointing.interrupted} after step {clock.step}; checkpoint "
                                  f"in {folder}. Run the same command again to resume.", checkpointing.interrupted)


def _save_model(model, out_dir, model_file, folder):
    """Write the model file whole (renamed into place) and remove the stage's checkpoints."""
    path = os.path.join(out_dir, model_file)
    temporary = os.path.join(out_dir, f"tmp-{os.getpid()}-{model_file}")
    model.save(temporary)
    os.replace(temporary, path)  # a model file is whole or absent
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(folder))  # OUT/checkpoints, once no stage has one left
    except OSError:
        pass
    return path
