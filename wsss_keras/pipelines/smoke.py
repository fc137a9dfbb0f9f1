"""`wsss run RECIPE --smoke N`: every stage of a recipe at its real size, briefly, measured.

A paper recipe runs for hours; a crash in its fifth stage, a batch that does not fit or a step
that compiles again every time should show in minutes. The smoke run keeps everything the
recipe sets (networks, image and crop sizes, batch sizes, losses) and shortens only two things:
each training stage runs N optimiser steps (what the recipe counts in steps scales with them,
as `--steps` does), and each split is cut to its first few images (at least the largest batch
of the recipe, so every training batch is full). It then prints one row per stage: seconds per
step or per image, peak host and accelerator memory, compilations after the first steps
(retracing), and whether what the stage wrote is sane (CAMs finite and in [0, 1], label maps
within the classes or 255, finite losses).
"""

import contextlib
import glob
import json
import os
import sys
import threading
import time

import numpy as np

from wsss_keras.errors import WSSSError
from wsss_keras.pipelines.fitting import MODEL_FILE
from wsss_keras.recipes import labelled_split, recipe_source, section

_FEW_IMAGES = 4
IGNORE_LABEL = 255
# Training stages: the model file they write (its `<stem>_summary.json` has the step times) and
# the recipe table of their batch size.
_TRAINING_FILES = {
    "train_clip": ("clip.keras", "clip"),
    "train_dino": ("dino.keras", "dino"),
    "train_cam": ("cam_network.keras", "cam_network"),
    "train": (MODEL_FILE, "train"),
    "train_irn": ("irn.keras", "irn"),
    "train_seg": ("segmenter.keras", "segmentation"),
}


def training_table(stage):
    """The recipe table a training stage reads its batch_size and accumulate from (None: not a
    training stage)."""
    return "student" if stage == "train_student" else _TRAINING_FILES.get(stage, (None, None))[1]


# Per-image stages: the folder and file pattern they write, and the recipe table whose split they
# read (with its default).
_PER_IMAGE_SPLITS = {
    "superpixels": ("train", "train"), "cams": ("cams", "train"), "ir_labels": ("ir_labels", None),
    "pseudo_labels": ("pseudo_labels", None), "predict": ("predict", "val"),
}
_PER_IMAGE_OUTPUTS = {
    "superpixels": ("superpixels", "*.png"),
    "cams": ("cams", "*.npz"),
    "ir_labels": ("ir_labels", "*.png"),
    "pseudo_labels": ("pseudo_labels", "*.png"),
    "predict": ("predictions", "*.png"),
}
_OUT_OF_MEMORY = ("out of memory", "resource_exhausted", "resource exhausted", "oom when allocating", "cannot allocate memory")


def smoke_image_count(recipe):
    """How many images each split keeps: a handful, and at least the recipe's largest batch."""
    batches = [int(table["batch_size"]) for table in recipe.values() if isinstance(table, dict) and "batch_size" in table]
    return max([_FEW_IMAGES, *batches])


def _host_peak_bytes():
    """Peak resident memory of this process since the last `_reset_host_peak` (VmHWM)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_host_peak():
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0); elsewhere the peak is the process's.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def _available_memory():
    """(MemAvailable, MemTotal) in bytes from Linux's /proc/meminfo, or None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024, int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


class _MemoryWatchdog:
    """Calls `on_exhausted()` once when the host's available memory falls under `margin` of its
    total, checking every `interval` seconds in a daemon thread.

    Why: when host memory runs out the kernel kills the process outright (SIGKILL), which no
    `except` sees, and a smoke run would end with the shell's "Killed" and no figure. Reporting
    just before that leaves the stage, its peak and the fix in smoke.json and on the terminal.
    """

    def __init__(self, on_exhausted, margin=0.02, interval=0.2, read=_available_memory):
        self.on_exhausted, self.margin, self.interval, self.read = on_exhausted, margin, interval, read
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.read() is not None:  # nothing to watch without /proc/meminfo
            self._thread = threading.Thread(target=self._watch, name="wsss-smoke-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self):
        while not self._stop.wait(self.interval):
            reading = self.read()
            if reading is not None and reading[0] < self.margin * reading[1]:
                self.on_exhausted()
                return


def _exit_now(message):
    """Print the one-line error and end the process at once (the kernel would kill it next)."""
    print(f"Error: {message}", file=sys.stderr, flush=True)
    os._exit(1)


class _Accelerator:
    """Peak memory of the first accelerator, per stage where the backend can reset it."""

    def __init__(self):
        import keras

        self.backend = keras.backend.backend()

    def reset(self):
        if self.backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        elif self.backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                tf.config.experimental.reset_memory_stats("GPU:0")

    def peak_bytes(self):
        """Bytes, or None without an accelerator. JAX cannot reset its peak: there it is the
        process's so far."""
        if self.backend == "torch":
            import torch

            return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] if tf.config.list_logical_devices("GPU") else None
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        stats = device.memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    def name(self):
        if self.backend == "jax":
            import jax

            device = jax.devices()[0]
            return None if device.platform == "cpu" else device.device_kind
        if self.backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
        return tf.config.experimental.get_device_details(devices[0]).get("device_name", "GPU") if devices else None


def is_out_of_memory(error):
    """Whether `error` is an allocation failure (host or accelerator) rather than a bug."""
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__} {error}".lower()
    return any(marker in text for marker in _OUT_OF_MEMORY)


def _check_label_maps(paths, num_classes):
    from PIL import Image

    for path in paths:
        values = np.unique(np.asarray(Image.open(path)))
        bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
        if bad.size:
            return f"{os.path.basename(path)} holds label {int(bad[0])}, outside 0..{num_classes - 1} and {IGNORE_LABEL}"
    return "ok"


def _check_cams(paths):
    from wsss_keras.evaluation.cams import load_cams

    for path in paths:
        cams, _ = load_cams(path)
        cams = np.asarray(cams, dtype=np.float32)
        if not np.all(np.isfinite(cams)):
            return f"{os.path.basename(path)} holds non-finite CAMs"
        if cams.size and (cams.min() < 0.0 or cams.max() > 1.0):
            return f"{os.path.basename(path)} holds CAMs in [{cams.min():.3g}, {cams.max():.3g}], outside [0, 1]"
    return "ok"


def _check_losses(summary):
    losses = {key: value for key, value in (summary.get("final") or {}).items() if key != "learning_rate"}
    bad = [key for key, value in losses.items() if not np.isfinite(float(value))]
    return f"loss {bad[0]} is not finite" if bad else "ok"


def _gib(value):
    return "-" if value is None else f"{value / 2 ** 30:.2f}"


class SmokeMeter:
    """`run_recipe`'s `meter`: measures each stage and checks what it wrote; `rows` holds one
    dict per stage run."""

    def __init__(self, recipe, data, out_dir, header=None, watchdog=_MemoryWatchdog, exit_now=_exit_now):
        self.recipe, self.data, self.out_dir = recipe, data, out_dir
        self.accelerator = _Accelerator()
        self.header = dict(header or {})
        self.rows = []
        self.watchdog, self.exit_now = watchdog, exit_now

    def save(self):
        """Write `smoke.json` (the header and the rows so far): after every stage, so a run that
        is killed (out of host memory, a time limit) still leaves the stages it finished."""
        import keras

        record = {**self.header, "backend": keras.backend.backend(), "accelerator": self.accelerator.name(),
                  "stages": self.rows}
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, "smoke.json"), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)

    def _num_classes(self):
        return self.data.open(section(self.recipe, "cams").get("split", "train")).num_classes

    @contextlib.contextmanager
    def __call__(self, stage):
        from wsss_keras.training.compiles import compile_count

        _reset_host_peak()
        self.accelerator.reset()
        compiles = compile_count()
        started = time.perf_counter()
        row = {"stage": stage}
        self.rows.append(row)

        def host_memory_exhausted():
            row.update(self._measure(started, compiles))
            row["output"] = "out of memory (host, about to be killed)"
            self.save()
            self.exit_now(self._out_of_memory_message(stage, row))

        try:
            with self.watchdog(host_memory_exhausted):
                yield
        except BaseException as error:  # an interrupt too: the row says how far the stage got
            row.update(self._measure(started, compiles))
            if is_out_of_memory(error):
                row["output"] = "out of memory"
                self.save()
                raise WSSSError(self._out_of_memory_message(stage, row)) from None
            row["output"] = f"failed: {type(error).__name__}"
            self.save()
            raise
        row.update(self._measure(started, compiles))
        row.update(self._outputs(stage, row["seconds"]))
        self.save()

    def _measure(self, started, compiles_before):
        from wsss_keras.training.compiles import compile_count

        compiles = compile_count()
        return {
            "seconds": time.perf_counter() - started, "host_peak": _host_peak_bytes(),
            "accelerator_peak": self.accelerator.peak_bytes(),
            "compiles": None if compiles is None else compiles - compiles_before,
        }

    def _training_file(self, stage):
        """(model file, recipe table) of a training stage; (None, None) for the others."""
        if stage == "train_student":
            from wsss_keras.pipelines.student import student_arch, student_file

            return student_file(student_arch(self.recipe)), "student"
        return _TRAINING_FILES.get(stage, (None, None))

    def _full_steps(self, stage):
        """The recipe's own step count for a training stage (the smoke run's recipe is unscaled)."""
        from wsss_keras.step_counts import default_steps

        table = self._training_file(stage)[1]
        return int(section(self.recipe, table).get("steps") or default_steps(self.recipe["recipe"]["method"], table))

    def _split(self, stage):
        """The split a per-image stage reads (ir_labels and pseudo_labels: the CAMs' by default)."""
        table, fallback = _PER_IMAGE_SPLITS[stage]
        if fallback is None:
            return labelled_split(self.recipe, table)
        return section(self.recipe, table).get("split", fallback)

    def _out_of_memory_message(self, stage, row):
        table = self._training_file(stage)[1]
        batch = section(self.recipe, table).get("batch_size") if table else None
        accumulate = int(section(self.recipe, table).get("accumulate", 1)) if table else 1
        peak = row["accelerator_peak"] if row["accelerator_peak"] is not None else row["host_peak"]
        fix = (f"set [{table}] accumulate = {2 * accumulate} (or more) in {recipe_source(self.recipe)} to keep the batch "
               f"of {batch} in smaller micro-batches, or lower batch_size" if batch else
               "run it on a machine with more memory")
        return f"[{stage}] ran out of memory at {_gib(peak)} GiB; {fix}."

    def _outputs(self, stage, seconds):
        file_name = self._training_file(stage)[0]
        if file_name:
            stem = "train" if file_name == MODEL_FILE else os.path.splitext(file_name)[0]
            summary_path = os.path.join(self.out_dir, f"{stem}_summary.json")
            if not os.path.isfile(summary_path):  # kept from an earlier run, or nothing to train
                there = os.path.isfile(os.path.join(self.out_dir, file_name))
                return {"unit": "-", "output": "skipped (there already)" if there else "nothing to train"}
            with open(summary_path, encoding="utf-8") as handle:
                summary = json.load(handle)
            per_step = summary.get("seconds_per_step") or summary.get("first_step_seconds")
            return {
                "per_unit": per_step, "unit": "s/step", "batch": summary.get("batch_size"),
                "full_steps": self._full_steps(stage),
                "retraced": summary.get("compiles_after_warmup"), "output": f"{file_name}: {_check_losses(summary)}",
            }
        if stage in _PER_IMAGE_OUTPUTS:
            folder, pattern = _PER_IMAGE_OUTPUTS[stage]
            paths = sorted(glob.glob(os.path.join(self.out_dir, folder, pattern)))
            if not paths:
                return {"unit": "-", "output": f"{folder}/: nothing written"}
            if stage == "cams":
                check = _check_cams(paths)
            elif stage == "superpixels":
                check = "ok"
            else:
                check = _check_label_maps(paths, self._num_classes())
            return {"per_unit": seconds / len(paths), "unit": "s/image", "split": self._split(stage),
                    "output": f"{len(paths)} in {folder}/: {check}"}
        if stage == "evaluate":
            exists = os.path.isfile(os.path.join(self.out_dir, "metrics.json"))
            return {"unit": "-", "output": "metrics.json" if exists else "no metrics.json"}
        return {"unit": "-", "output": "-"}

    def sane(self):
        """Whether every stage ran and wrote sane outputs."""
        return all(row.get("output", "").endswith(("ok", "metrics.json", "skipped (there already)", "nothing to train", "-"))
                   for row in self.rows)

    def table(self):
        """The rows as an aligned text table."""
        header = ("stage", "seconds", "per step/image", "batch", "host peak GiB", "accel peak GiB", "compiles",
                  "retraced", "output")
        lines = [header]
        for row in self.rows:
            per_unit = row.get("per_unit")
            compiles, retraced = row.get("compiles"), row.get("retraced")
            lines.append((
                row["stage"], f"{row.get('seconds', 0.0):.1f}",
                "-" if per_unit is None else f"{per_unit:.3f} {row.get('unit')}",
                str(row.get("batch") or "-"), _gib(row.get("host_peak")), _gib(row.get("accelerator_peak")),
                "-" if compiles is None else str(compiles), "-" if retraced is None else str(retraced),
                row.get("output", "-"),
            ))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                         for line in lines)


def smoke_run(recipe, data_dir, out_dir, steps, weights=None, stages=None, overwrite=False,
              echo=print, progress=None):
    """Run the recipe's stages for `steps` steps each on the first images of each split, at the
    recipe's real sizes; print and return the table's rows (`SmokeMeter.rows`).

    Raises:
        WSSSError: a stage ran out of memory (the message names the figure and the batch size to
            lower); the table up to that stage is printed first.
    """
    import keras

    from wsss_keras.data.layouts import DatasetFolder
    from wsss_keras.pipelines.run import run_recipe

    images = smoke_image_count(recipe)
    data = DatasetFolder(data_dir, limit=images)
    meter = SmokeMeter(recipe, data, out_dir, header={"recipe": recipe["recipe"]["name"], "steps": steps, "images": images})
    echo(f"[smoke] {recipe['recipe']['name']}: {steps} steps per training stage, the first {images} images of each "
         f"split, the recipe's sizes otherwise; backend {keras.backend.backend()}, "
         f"accelerator {meter.accelerator.name() or 'none'}")
    try:
        run_recipe(recipe, data, out_dir, weights=weights, stages=stages, steps=steps, overwrite=overwrite, echo=echo,
                   progress=progress, meter=meter)
    finally:
        echo("[smoke] " + meter.table().replace("\n", "\n[smoke] "))
    if not meter.sane():
        raise WSSSError(f"[smoke] {recipe['recipe']['name']}: a stage wrote outputs that are not sane (table above).")
    return meter.rows
