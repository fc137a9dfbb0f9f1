"""The training progress (`StepProgress`): a line every N steps in logs, a bar redrawn in place on
a terminal; both show the losses of the last window and an ETA that holds on a resumed run."""

import io

import pytest

from wsss_keras.training import callbacks
from wsss_keras.training.callbacks import StepClock, StepProgress


class Model:
    stop_training = False


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(monkeypatch, stream, start=900, steps=1000, batches=10, every=5):
    """Resume at `start` of `steps` and run `batches` one-second steps, with loss 1.0 for the
    first half and 0.5 after (Keras logs the running mean since the epoch began)."""
    now = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    clock, lines = StepClock(start, steps), []
    progress = StepProgress(clock, echo=lines.append, every=every, stage="train", stream=stream)
    model = Model()
    progress.set_model(model)
    progress.on_train_begin()
    losses = []
    for batch in range(batches):
        now[0] += 1.0
        losses.append(1.0 if batch < batches // 2 else 0.5)
        clock.done = batch + 1
        progress.on_train_batch_end(batch, {"loss": sum(losses) / len(losses)})
    progress.on_train_end()
    return lines, model


def test_logs_get_a_line_every_n_steps_with_the_window_losses_and_a_resumed_eta(monkeypatch):
    lines, model = _run(monkeypatch, io.StringIO())
    # Ten steps of one second done, 90 to go: the ETA counts this run's steps, not the resumed ones.
    assert lines == ["[train] step 905/1000 loss 1.000 (5 s, ETA 95 s)",
                     "[train] step 910/1000 loss 0.500 (10 s, ETA 90 s)"]
    assert not model.stop_training


def test_a_terminal_gets_one_line_redrawn_in_place(monkeypatch):
    terminal = Terminal()
    lines, model = _run(monkeypatch, terminal, start=90, steps=100)
    text = terminal.getvalue()
    assert not lines  # nothing echoed as separate lines
    frames = text.rstrip("\n").split("\r")[1:]
    assert text.endswith("\n") and "\n" not in text.rstrip("\n")
    assert frames[-1] == "[train] [========================] 100/100 loss 0.500 ETA 0:00\033[K"
    assert any(frame.startswith("[train] [" + "=" * 22 + "..] 95/100 loss 1.000 ETA 0:05") for frame in frames)
    assert model.stop_training  # the last step ends fit


@pytest.mark.parametrize(("seconds", "text"), [(59, "0:59"), (61, "1:01"), (3725, "1:02:05")])
def test_eta_clock(seconds, text):
    assert callbacks._clock(seconds) == text
