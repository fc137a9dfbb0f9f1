"""The training loop every method's stages share: the optimiser a recipe table asks for, the
step-counted fit with its logs, checkpoints and resumption, and how a model is saved.

Below the per-method pipelines (`toco`, `amr`, `ssc`, `weclip`, `irn`, `segmentation`), which
import it; it imports none of them, so a trainer never reaches back up into `train`, the
command that dispatches to them.
"""

import json
import os
import shutil
import time

from wsss_keras.errors import WSSSError
from wsss_keras.recipes import recipe_error, recipe_source, section

MODEL_FILE = "model.keras"


def saved_recipe(recipe):
    """The recipe as a model saves it (without the file path, which is machine-specific)."""
    tables = dict(recipe)
    tables["recipe"] = {key: value for key, value in recipe["recipe"].items() if key != "path"}
    return tables


def make_optimizer(recipe, table, steps, model=None, defaults=None, adam_group=None):
    """The optimiser a recipe table asks for, on a poly schedule with linear warm-up.

    Keys of the table: `optimizer` ("adamw", ToCo's PolyWarmupAdamW; or "sgd", IRN's
    PolyOptimizer), `learning_rate`, `warmup_steps`, `power`, `weight_decay`, `momentum` (SGD)
    and `lr_multipliers` ({variable-path substring: factor}, added to the model's own groups).

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
    multipliers = {**dict(getattr(model, "lr_multipliers", None) or {}), **dict(setting("lr_multipliers", {}))}
    schedule = PolyWarmup(
        float(setting("learning_rate", 6e-5)), int(setting("warmup_steps", 0)), steps,
        power=float(setting("power", 0.9)),
    )
    if kind == "adamw":
        from wsss_keras.training.optimizers import GroupedAdamW

        return GroupedAdamW(schedule, lr_multipliers=multipliers, weight_decay=float(setting("weight_decay", 0.01)))
    if kind == "sgd":
        from wsss_keras.training.optimizers import GroupedSGD, GroupedSGDWithAdam

        options = dict(
            lr_multipliers=multipliers, momentum=float(setting("momentum", 0.0)),
            weight_decay=float(setting("weight_decay", 1e-4)),
            weight_decay_multipliers=dict(getattr(model, "weight_decay_multipliers", None) or {}),
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


def _average_loss_over_replicas(model):
    """Under tf.distribute, Keras sums the replicas' gradients and expects each replica's loss
    divided by the replica count (its `Loss` objects do that); the methods' own `compute_loss`
    returns the plain mean over the replica's batch, so it is divided here, for this run only."""
    import tensorflow as tf

    method = model.compute_loss

    def compute_loss(*args, **kwargs):
        loss = method(*args, **kwargs)
        return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)

    model.__dict__["compute_loss"] = compute_loss


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
    from wsss_keras.training.checkpoints import latest_checkpoint, restore_checkpoint
    from wsss_keras.training.options import current_options

    options = options or current_options()
    os.makedirs(out_dir, exist_ok=True)
    stem = "train" if model_file == MODEL_FILE else os.path.splitext(model_file)[0]
    folder = os.path.join(out_dir, "checkpoints", stem)
    record = None if options.resume is False else latest_checkpoint(folder)
    if record is None and os.path.isdir(folder):
        shutil.rmtree(folder)  # --restart, or leftovers without a whole checkpoint
    if record is not None and record["step"] >= steps:
        raise WSSSError(f"[{stage}] {folder} holds a checkpoint at step {record['step']}, past this run's {steps} "
                        "steps; pass --restart to start over, or the steps it was started with.")
    start = record["step"] if record else 0
    if loader.batch_size % options.replicas:
        raise WSSSError(f"[{stage}] the batch of {loader.batch_size} images is the global batch and must split evenly "
                        f"over the {options.replicas} replicas; set this stage's batch_size in {recipe_source(recipe)} "
                        f"to a multiple of {options.replicas}.")
    if options.resume and record is None:
        echo(f"[{stage}] no checkpoint in {folder}; starting at step 0")
    echo(
        f"[{stage}] {recipe['recipe']['name']}: {steps} steps of {loader.batch_size} images "
        f"({steps / len(loader):.1f} epochs), backend {keras.backend.backend()}"
        + (f", {options.replicas} replicas of {loader.batch_size // options.replicas}" if options.replicas > 1 else "")
        + (f", {options.precision}" if options.precision != "float32" else "")
        + (f", resuming at step {start}" if start else "")
    )
    clock = StepClock(start, steps)
    log_every = options.log_interval(steps)
    progress = StepProgress(clock, echo, every=log_every, stage=stage)
    log = StepLog(clock, os.path.join(out_dir, f"{stem}_log.csv"), every=log_every,
                  tensorboard_dir=os.path.join(out_dir, "tensorboard", stem) if options.tensorboard else None)
    checkpointing = Checkpointing(clock, folder, every=options.checkpoint_interval(steps))
    for callback in callbacks:
        if hasattr(callback, "start_step"):
            callback.start_step = start
    stream = StepStream(loader, start, steps)
    times = StepTimes()
    if options.replicas > 1 and keras.backend.backend() == "tensorflow":
        _average_loss_over_replicas(model)
    if record:
        # Build the model's and the optimiser's variables from one batch, as `fit` does itself
        # (on TensorFlow only when tracing its first step), so the checkpoint can fill them.
        model._symbolic_build(data_batch=stream[0])
        restore_checkpoint(model, record)
    begun = time.perf_counter()
    try:
        # shuffle=False: Keras would otherwise shuffle the order of a PyDataset's batches; the
        # order is the StepStream's, so that a resumed run reads what an uninterrupted one would.
        model.fit(stream, epochs=1, verbose=0, shuffle=False,
                  callbacks=[StepCounter(clock), progress, log, checkpointing, times, *callbacks])
    finally:
        model.__dict__.pop("compute_loss", None)  # `_average_loss_over_replicas`'s wrapper
    seconds = time.perf_counter() - begun
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
    path = os.path.join(out_dir, model_file)
    temporary = os.path.join(out_dir, f"tmp-{os.getpid()}-{model_file}")
    model.save(temporary)
    os.replace(temporary, path)  # a model file is whole or absent
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(folder))  # OUT/checkpoints, once no stage has one left
    except OSError:
        pass
    record = {
        "recipe": recipe["recipe"]["name"], "stage": stage, "backend": keras.backend.backend(), "steps": steps,
        "train_seconds": round(seconds, 1), **({"resumed_at": start} if start else {}), **(summary or {}),
        **times.summary(),
        "final": {key: value for key, value in log.last.items() if key not in ("step", "seconds")},
    }
    with open(os.path.join(out_dir, f"{stem}_summary.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    echo(f"[{stage}] saved {path}")
    return path
