"""The Keras callbacks every training stage runs (`pipelines.fitting.fit_steps`): progress with
ETA, per-window loss logs (CSV and TensorBoard), checkpoints every N steps and on SIGTERM or
Ctrl-C, and a stop with a message when the loss stops being finite.

A stage trains as one Keras epoch over its steps (`data.loader.StepStream`), so a run can resume
at any step. Keras reports each loss as its running mean since the epoch began; the callbacks
turn that back into per-window means: with m_k the mean after k steps, the steps j+1..k averaged
(k·m_k − j·m_j) / (k − j).
"""

import csv
import math
import os
import signal
import sys
import threading
import time

import keras

from wsss_keras.training.checkpoints import write_checkpoint


class StepClock:
    """The step count shared by the callbacks: `start` (0, or the resumed step) plus the
    batches done in this `fit`."""

    def __init__(self, start, steps):
        self.start, self.steps, self.done = int(start), int(steps), 0

    @property
    def step(self):
        return self.start + self.done


def _numbers(logs):
    return {key: float(value) for key, value in (logs or {}).items() if _is_number(value)}


def _is_number(value):
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


class WindowMeans:
    """Per-window means of Keras's running means (see the module's docstring)."""

    def __init__(self):
        self.done, self.means = 0, {}

    def update(self, done, logs):
        """The mean of each logged value over the batches since the last update, or None
        when no batch was done since."""
        numbers = _numbers(logs)
        if done <= self.done:
            return None
        window = {key: (done * value - self.done * self.means.get(key, 0.0)) / (done - self.done)
                  for key, value in numbers.items()}
        self.done, self.means = done, numbers
        return window


class StepCounter(keras.callbacks.Callback):
    """Advances the shared clock; first in the list, so the others see the new step."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_train_batch_end(self, batch, logs=None):
        self.clock.done = batch + 1


class StepTimes(keras.callbacks.Callback):
    """Wall time per step and compilations after the first steps, for the stage's summary.

    A step's time is the interval between two batch ends, so it holds the loader's work too;
    the first interval holds the compilation and is reported apart. `compiles_after_warmup`
    counts compilations after the first `warmup` steps (JAX only, `training.compiles`): above
    zero, the step is being traced again.
    """

    def __init__(self, warmup=2):
        super().__init__()
        self.warmup = warmup
        self.intervals = []
        self._last = None
        self._compiles_at_warmup = self._compiles_at_end = None

    def on_train_begin(self, logs=None):
        from wsss_keras.training.compiles import compile_count

        self._count = compile_count
        self._count()  # starts the count before the first step compiles
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.intervals.append(now - self._last)
        self._last = now
        # Counted at every step's end, so what Keras and saving compile after the last step is not.
        self._compiles_at_end = self._count()
        if len(self.intervals) == self.warmup:
            self._compiles_at_warmup = self._compiles_at_end

    def summary(self):
        """{"first_step_seconds", "seconds_per_step" (median of the later steps), and
        "compiles_after_warmup" where counted}; empty before any step."""
        if not self.intervals:
            return {}
        later = sorted(self.intervals[1:])
        record = {
            "first_step_seconds": round(self.intervals[0], 4),
            "seconds_per_step": round(later[len(later) // 2], 4) if later else None,
        }
        if self._compiles_at_end is not None and self._compiles_at_warmup is not None:
            record["compiles_after_warmup"] = self._compiles_at_end - self._compiles_at_warmup
        return record


class StepProgress(keras.callbacks.Callback):
    """Progress with ETA and the losses of the last window: a bar redrawn in place on a
    terminal, a line every `every` steps otherwise (logs, CI).

    Why not `keras.utils.Progbar` (Keras 3.15), checked: (1) it takes any POSIX process for a
    terminal (`"posix" in sys.modules`), so with stdout in a file it writes a redraw of `\\b`s,
    `\\r` and colour codes every 0.05 s into the log, and its `verbose=2` writes one line at the
    end only, not one every `every` steps; (2) its ETA divides the time since it was made by
    the step number, so a run resumed at step 900 of 1,000 showed an ETA of 0.011 s after ten
    10 ms steps, the true one 0.9 s (ours divides by the steps done in this run); (3) its `\\r`
    redraw erases a stage label printed before it. Not `rich.progress` either: its live display
    hides the terminal's cursor until `stop()`, and Keras does not call `on_train_end` when
    `fit` raises (a second Ctrl-C, out of memory), so the user's shell would be left without
    a cursor. The bar itself is the one `stream.write` below.
    """

    def __init__(self, clock, echo=print, every=50, stage="train", stream=None):
        super().__init__()
        self.clock, self.echo, self.every, self.stage = clock, echo, max(1, int(every)), stage
        self.stream = stream if stream is not None else sys.stdout
        self.bar = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start_time = None
        self.window = WindowMeans()
        self.losses = {}
        self.last_draw = 0.0

    def on_train_begin(self, logs=None):
        self.start_time = time.perf_counter()

    def _eta(self):
        elapsed = time.perf_counter() - self.start_time
        rate = elapsed / max(self.clock.done, 1)
        return elapsed, rate * (self.clock.steps - self.clock.step)

    def _losses_text(self):
        return " ".join(f"{key.replace('_loss', '')} {value:.3f}" for key, value in sorted(self.losses.items()))

    def on_train_batch_end(self, batch, logs=None):
        step, steps = self.clock.step, self.clock.steps
        boundary = step % self.every == 0 or step == steps
        if boundary:
            self.losses = self.window.update(self.clock.done, logs) or self.losses
        elapsed, eta = self._eta()
        if self.bar:
            now = time.perf_counter()
            if boundary or now - self.last_draw > 0.5:
                self.last_draw = now
                width = 24
                filled = int(width * step / steps)
                self.stream.write(f"\r[{self.stage}] [{'=' * filled}{'.' * (width - filled)}] {step}/{steps} "
                                  f"{self._losses_text()} ETA {_clock(eta)}\033[K")
                self.stream.flush()
                if step == steps:
                    self.stream.write("\n")
        elif boundary:
            self.echo(f"[{self.stage}] step {step}/{steps} {self._losses_text()} ({elapsed:.0f} s, ETA {eta:.0f} s)")
        if step >= steps:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.bar and self.clock.step < self.clock.steps:
            self.stream.write("\n")


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class StepLog(keras.callbacks.Callback):
    """Every `every` steps, a CSV row (step, seconds, learning rate, each loss's window mean)
    and, with `tensorboard_dir`, the same scalars for TensorBoard. A resumed run keeps the rows
    up to its step and appends after them."""

    def __init__(self, clock, csv_path, every=50, tensorboard_dir=None):
        super().__init__()
        self.clock, self.csv_path, self.every, self.tensorboard_dir = clock, csv_path, max(1, int(every)), tensorboard_dir
        self.window = WindowMeans()
        self.writer = None
        self.columns = None
        self.start_time = None
        self.rows = []

    def on_train_begin(self, logs=None):
        self.rows = self._kept_rows()
        # A resumed run's seconds go on from the kept rows'.
        self.start_time = time.perf_counter() - (float(self.rows[-1]["seconds"]) if self.rows else 0.0)
        self.columns = list(self.rows[0].keys()) if self.rows else None
        self._rewrite()
        if self.tensorboard_dir:
            try:
                import tensorflow as tf  # the summary writer
            except ImportError:
                # A JAX or PyTorch machine may run without TensorFlow (a GPU image, say): the CSV
                # log holds the same rows.
                print(f"[train] no TensorBoard scalars in {self.tensorboard_dir}: they need TensorFlow "
                      f"(pip install tensorflow); {self.csv_path} has the same rows", file=sys.stderr)
                self.tensorboard_dir = None
                return
            self.writer = tf.summary.create_file_writer(self.tensorboard_dir)

    def _kept_rows(self):
        if not os.path.isfile(self.csv_path) or self.clock.start == 0:
            return []
        with open(self.csv_path, newline="", encoding="utf-8") as handle:
            return [row for row in csv.DictReader(handle) if int(row.get("step", 0)) <= self.clock.start]

    def _rewrite(self):
        with open(self.csv_path, "w", newline="", encoding="utf-8") as handle:
            if self.columns:
                writer = csv.DictWriter(handle, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self.rows)

    def _learning_rate(self):
        # `self.model`: on JAX, reading it writes fit's state back, without which the optimiser's
        # variables have no value mid-epoch. A schedule's rate is evaluated at the current step.
        optimizer = getattr(self.model, "optimizer", None)
        try:
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        except Exception:  # a schedule that cannot be evaluated here: leave the column empty
            return ""

    def on_train_batch_end(self, batch, logs=None):
        step = self.clock.step
        if step % self.every and step != self.clock.steps:
            return
        window = self.window.update(self.clock.done, logs)
        if window is None:
            return
        row = {"step": step, "seconds": round(time.perf_counter() - self.start_time, 2),
               "learning_rate": self._learning_rate(), **dict(sorted(window.items()))}
        if self.columns is None:
            self.columns = list(row)
            self._rewrite()
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        self.rows.append(row)
        if self.writer is not None:
            import tensorflow as tf

            with self.writer.as_default():
                for key, value in row.items():
                    if key not in ("step", "seconds") and value != "":
                        tf.summary.scalar(key, float(value), step=step)
            self.writer.flush()

    @property
    def last(self):
        """The last window's row (losses and learning rate), for the run's summary."""
        return dict(self.rows[-1]) if self.rows else {}

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


class Checkpointing(keras.callbacks.Callback):
    """Checkpoints every `every` steps (0: never, except on a signal) into `folder`; on SIGTERM
    or the first Ctrl-C, checkpoints after the current step and stops (`interrupted` holds the
    signal's name); a loss that is not finite stops training at once, without a checkpoint, so
    the last one is the last good state (`diverged` holds the step and losses)."""

    def __init__(self, clock, folder, every=0):
        super().__init__()
        self.clock, self.folder, self.every = clock, folder, int(every)
        self.requested = None
        self.interrupted = None
        self.diverged = None
        self.last_saved = None
        self._previous = {}

    def _on_signal(self, number, frame):
        if self.requested is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = signal.Signals(number).name

    def on_train_begin(self, logs=None):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._on_signal)

    def _restore_handlers(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def save(self):
        # `self.model` (not `_model`): on JAX it writes fit's state back into the variables.
        write_checkpoint(self.model, self.folder, self.clock.step)
        self.last_saved = self.clock.step

    def on_train_batch_end(self, batch, logs=None):
        numbers = _numbers(logs)
        if any(not math.isfinite(value) for value in numbers.values()):
            self.diverged = {"step": self.clock.step, "losses": numbers}
            self._model.stop_training = True
            return
        if self.requested is not None:
            self.save()
            self.interrupted = self.requested
            self._model.stop_training = True
            return
        if self.every and self.clock.step % self.every == 0 and self.clock.step < self.clock.steps:
            self.save()

    def on_train_end(self, logs=None):
        self._restore_handlers()
