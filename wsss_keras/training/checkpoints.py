"""Training checkpoints: the model's weights, the optimiser's state and the step, written so that
an interruption at any moment leaves the previous checkpoint whole.

A checkpoint is `step_<N>.weights.h5` (every model variable, the CMPA prototypes and other
non-trainable state included) and `step_<N>.optimizer.npz` (every optimiser variable: moments,
iteration count, loss scale; and the states of the model's random-number generators, which
`save_weights` leaves out), each written under a temporary name and renamed into place
(atomic on POSIX and Windows), and `latest.json` naming them, replaced last. A reader follows
`latest.json` only, so it never sees a half-written file; the two newest checkpoints are kept.
"""

import json
import os
import re

import numpy as np

from wsss_keras.errors import WSSSError

LATEST_FILE = "latest.json"
KEEP = 2


class CheckpointError(WSSSError):
    """A checkpoint is missing, unreadable or does not fit the model being trained."""


def _replace_atomically(write, path):
    """`write(temporary path)`, then rename it to `path`."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f"tmp-{os.getpid()}-{name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _optimizer_variables(model):
    optimizer = getattr(model, "optimizer", None)
    return list(optimizer.variables) if optimizer is not None else []


def _random_states(model):
    """The states of the model's `keras.random.SeedGenerator`s (ToCo's local crops, dropout
    masks): in `model.variables` but not in `model.weights`, so `save_weights` skips them and a
    resumed run would otherwise draw step 0's random numbers again."""
    weights = {id(weight) for weight in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def write_checkpoint(model, folder, step, extra=None):
    """Save `model` (weights and optimiser state) as the checkpoint of `step` in `folder`."""
    from keras import ops

    os.makedirs(folder, exist_ok=True)
    stem = f"step_{int(step):08d}"
    weights, optimizer = f"{stem}.weights.h5", f"{stem}.optimizer.npz"
    _replace_atomically(model.save_weights, os.path.join(folder, weights))
    arrays = {f"v{index:05d}": ops.convert_to_numpy(variable) for index, variable in enumerate(_optimizer_variables(model))}
    random_states = {f"seed{index:05d}": ops.convert_to_numpy(variable)
                     for index, variable in enumerate(_random_states(model))}

    def save_optimizer(path):
        with open(path, "wb") as handle:
            np.savez(handle, **arrays, **random_states)

    _replace_atomically(save_optimizer, os.path.join(folder, optimizer))
    record = {"step": int(step), "weights": weights, "optimizer": optimizer, "optimizer_variables": len(arrays),
              "random_states": len(random_states), **(extra or {})}

    def save_record(path):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)

    _replace_atomically(save_record, os.path.join(folder, LATEST_FILE))
    _prune(folder, keep={weights, optimizer})
    return record


def _prune(folder, keep):
    """Remove all but the KEEP newest checkpoints (never those in `keep`) and stray temporaries."""
    steps = sorted({int(m.group(1)) for m in (re.match(r"step_(\d+)\.", f) for f in os.listdir(folder)) if m})
    old = set(steps[:-KEEP])
    for name in os.listdir(folder):
        match = re.match(r"step_(\d+)\.", name)
        if (match and int(match.group(1)) in old and name not in keep) or name.startswith("tmp-"):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def latest_checkpoint(folder):
    """The record of the newest whole checkpoint in `folder` (with its folder), or None."""
    path = os.path.join(folder, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable ({error}); delete {folder} to start over.") from None
    for key in ("weights", "optimizer"):
        if not os.path.isfile(os.path.join(folder, record.get(key, ""))):
            raise CheckpointError(f"{path} names {record.get(key)!r}, which is missing; delete {folder} to start over.")
    return {**record, "folder": folder}


def restore_checkpoint(model, record):
    """Load a checkpoint's weights, optimiser state and random-number states into a built,
    compiled `model`."""
    folder = record["folder"]
    try:
        model.load_weights(os.path.join(folder, record["weights"]))
    except (ValueError, KeyError, OSError) as error:
        raise CheckpointError(f"{folder}/{record['weights']}: does not fit this model ({str(error)[:200]}); "
                              "was the recipe changed since? Delete the checkpoints to start over.") from None
    variables = _optimizer_variables(model)
    with np.load(os.path.join(folder, record["optimizer"])) as arrays:
        stored = [arrays[name] for name in sorted(name for name in arrays.files if name.startswith("v"))]
        seeds = [arrays[name] for name in sorted(name for name in arrays.files if name.startswith("seed"))]
    if len(stored) != len(variables) or any(tuple(a.shape) != tuple(v.shape) for a, v in zip(stored, variables)):
        raise CheckpointError(f"{folder}/{record['optimizer']}: {len(stored)} optimiser variables, the optimiser has "
                              f"{len(variables)} (or their shapes differ); was the recipe changed since? Delete the "
                              "checkpoints to start over.")
    for variable, value in zip(variables, stored):
        variable.assign(value)
    random_states = _random_states(model)
    # A checkpoint written before random states were saved has none: it resumes with fresh ones.
    if seeds and [tuple(a.shape) for a in seeds] != [tuple(v.shape) for v in random_states]:
        raise CheckpointError(f"{folder}/{record['optimizer']}: {len(seeds)} random-number states, the model has "
                              f"{len(random_states)}; was the recipe changed since? Delete the checkpoints to start over.")
    for variable, value in zip(random_states, seeds):
        variable.assign(value)
