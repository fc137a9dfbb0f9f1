"""Checkpoints and resuming on the current backend: a run stopped by a real SIGTERM mid-epoch and
resumed ends with the weights of an uninterrupted run, for a toy CAM network and for tiny ToCo,
SSR and AMR models with state beyond their weights (random crops, dropout masks, the EMA
teacher, the step counter, the CMPA prototypes, BatchNorm statistics, the optimiser's moments
and schedule); a checkpoint is never half-written; a loss that stops being finite stops
training and keeps the last good checkpoint."""

import csv
import os
import signal

import keras
import numpy as np
import pytest
from helpers import (
    plain_training_loader,
    sigterm_during_step,
    tiny_amr_for_training,
    tiny_ssr_for_training,
    tiny_synthetic,
    tiny_toco_for_training,
    toco_training_loader,
)

from wsss_keras.data.layouts import open_dataset
from wsss_keras.data.loader import SegmentationLoader
from wsss_keras.data.transforms import TrainTransform
from wsss_keras.errors import WSSSError
from wsss_keras.methods.cam_baseline import CamBaseline
from wsss_keras.pipelines.fitting import TrainingInterrupted, fit_steps
from wsss_keras.training.checkpoints import (
    latest_checkpoint,
    restore_checkpoint,
    write_checkpoint,
)
from wsss_keras.training.options import TrainingOptions

RECIPE = {"recipe": {"name": "resume-test"}}
STEPS = 12  # 10 images in batches of 2: 5 steps per epoch, so the run crosses two epoch ends


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_synthetic(tmp_path_factory.mktemp("resume") / "data", n_train=10, n_val=2, size=40)


def fresh_run(data, loader_class=SegmentationLoader, learning_rate=3e-3):
    keras.utils.set_random_seed(0)
    loader = loader_class(open_dataset(data, "train"), 2, TrainTransform(crop_size=32, scale_range=(0.7, 1.3)),
                          shuffle=True, seed=0, drop_remainder=True)
    model = CamBaseline(6, widths=(8, 16), convs_per_stage=1)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))  # Adam: its moments must resume too
    return model, loader


def weights_of(model):
    return [keras.ops.convert_to_numpy(weight) for weight in model.weights]


class SigtermAt(keras.callbacks.Callback):
    """Sends this process a real SIGTERM at the end of a batch."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_weights(data, tmp_path):
    quiet = TrainingOptions(checkpoint_every=0, log_every=2, tensorboard=False)
    model, loader = fresh_run(data)
    fit_steps(model, loader, STEPS, str(tmp_path / "whole"), "model.keras", RECIPE, echo=lambda line: None,
              options=quiet)
    expected = weights_of(model)

    previous_handler = signal.getsignal(signal.SIGTERM)
    model, loader = fresh_run(data)
    lines = []
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after step 7.*Run the same command again"):
        fit_steps(model, loader, STEPS, str(tmp_path / "cut"), "model.keras", RECIPE, echo=lines.append,
                  callbacks=[SigtermAt(5)], options=TrainingOptions(checkpoint_every=4, log_every=2, tensorboard=False))
    assert signal.getsignal(signal.SIGTERM) == previous_handler  # our handler is gone again
    folder = str(tmp_path / "cut" / "checkpoints" / "train")
    record = latest_checkpoint(folder)
    assert record["step"] == 7 and record["step"] % 5 != 0  # mid-epoch: the signal lands in step 6's callbacks
    assert not os.path.exists(tmp_path / "cut" / "model.keras")
    assert not [name for name in os.listdir(folder) if name.startswith("tmp-")]

    model, loader = fresh_run(data)  # a new process would build the same untrained model
    lines = []
    fit_steps(model, loader, STEPS, str(tmp_path / "cut"), "model.keras", RECIPE, echo=lines.append,
              options=TrainingOptions(log_every=2, tensorboard=False))
    assert any("resuming at step 7" in line for line in lines), lines
    for got, want in zip(weights_of(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not os.path.exists(tmp_path / "cut" / "checkpoints") and os.path.isfile(tmp_path / "cut" / "model.keras")
    with open(tmp_path / "cut" / "train_log.csv", newline="") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [2, 4, 6, 8, 10, 12]  # rows after the checkpoint were dropped and written again


def prototype_callbacks(model, loader):
    from wsss_keras.pipelines.ssr import prototype_refresh

    return [prototype_refresh(RECIPE, model, loader, echo=lambda line: None)]


# method: (model builder, loader builder, callbacks builder as the method's pipeline passes them)
STATEFUL_METHODS = {
    "toco": (tiny_toco_for_training, toco_training_loader, lambda model, loader: []),
    "ssr-epoch-bank": (lambda: tiny_ssr_for_training("epoch"), lambda data: plain_training_loader(data, 16),
                       prototype_callbacks),
    "ssr-recent-bank": (lambda: tiny_ssr_for_training("recent"), lambda data: plain_training_loader(data, 16),
                        prototype_callbacks),
    "amr": (tiny_amr_for_training, lambda data: plain_training_loader(data, 32), lambda model, loader: []),
}
METHOD_STEPS, METHOD_CUT = 6, 3  # 8 images in batches of 2: the run crosses an epoch end at step 4


@pytest.fixture(scope="module")
def method_data(tmp_path_factory):
    return tiny_synthetic(tmp_path_factory.mktemp("resume-methods") / "data", n_train=8, n_val=2, size=40, classes="3")


def full_state(model):
    """Every variable of the model (weights, non-trainable state, random-seed states) and of
    its optimiser, with its path (which holds the layers' unique names, so differs between
    two builds of one model: variables are matched by position)."""
    variables = list(model.variables) + list(model.optimizer.variables)
    return [(variable.path, keras.ops.convert_to_numpy(variable)) for variable in variables]


def logged_losses(folder):
    with open(os.path.join(folder, "train_log.csv"), newline="") as handle:
        return [{key: float(value) for key, value in row.items() if key != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("method", sorted(STATEFUL_METHODS))
def test_a_stateful_method_stopped_halfway_and_resumed_ends_as_the_uninterrupted_run(method, method_data, tmp_path):
    build, make_loader, make_callbacks = STATEFUL_METHODS[method]
    options = TrainingOptions(checkpoint_every=0, log_every=1, tensorboard=False)

    def run(folder, stop_at=None):
        model, loader = build(), make_loader(method_data)  # what a new process builds
        callbacks = make_callbacks(model, loader) + ([sigterm_during_step(stop_at)] if stop_at else [])
        fit_steps(model, loader, METHOD_STEPS, str(folder), "model.keras", RECIPE, echo=lambda line: None,
                  callbacks=callbacks, options=options)
        return model

    whole = run(tmp_path / "whole")
    with pytest.raises(TrainingInterrupted, match=f"after step {METHOD_CUT}"):
        run(tmp_path / "cut", stop_at=METHOD_CUT)
    assert latest_checkpoint(str(tmp_path / "cut" / "checkpoints" / "train"))["step"] == METHOD_CUT
    resumed = run(tmp_path / "cut")

    expected, got = full_state(whole), full_state(resumed)
    assert [value.shape for _, value in got] == [value.shape for _, value in expected]
    # Same operations on the same inputs from the same state: on CPU each backend repeats them
    # bit for bit; 1e-6 leaves room only for a reduction order a thread pool might change.
    for (path, value), (_, want) in zip(got, expected):
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7, err_msg=path)
    # Per-step losses: the log recovers them from Keras's running means, (k·m_k − j·m_j)/(k − j),
    # and the resumed run's means restart at step 3, so they agree to float32 rounding of sums
    # over at most 6 steps (about 1e-6 of the losses, which are of order 1).
    want_losses, got_losses = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "cut")
    assert [row["step"] for row in got_losses] == list(range(1, METHOD_STEPS + 1))
    assert len(want_losses) == METHOD_STEPS and set(got_losses[0]) == set(want_losses[0])
    for got_row, want_row in zip(got_losses, want_losses):
        for key, want in want_row.items():
            assert got_row[key] == pytest.approx(want, rel=1e-5, abs=1e-5), (got_row["step"], key, got_row, want_row)

    # The state the run must carry across the cut is there and moved (else the test proves little).
    state = dict(expected)
    if method == "toco":
        assert int(keras.ops.convert_to_numpy(whole.train_steps)) == METHOD_STEPS
        seeds = [path for path in state if path.endswith("seed_generator_state")]
        assert seeds and all(state[path][1] > 0 for path in seeds), seeds  # crops were drawn
        teacher = keras.ops.convert_to_numpy(whole.teacher_head.fc1.kernel)
        assert not np.allclose(teacher, keras.ops.convert_to_numpy(whole.projection_head.fc1.kernel))
        # the step counter switches the seg loss on at step 4 (0-based): the 5th logged step
        assert want_losses[3]["seg_loss"] == 0.0 and want_losses[4]["seg_loss"] > 0.0
    if method.startswith("ssr"):
        assert float(keras.ops.convert_to_numpy(whole.prototypes_ready)) == 1.0
        assert np.abs(keras.ops.convert_to_numpy(whole.image_prototypes)).max() > 0.1


def test_checkpoints_are_never_half_written(data, tmp_path, monkeypatch):
    model, loader = fresh_run(data)
    fit_steps(model, loader, 3, str(tmp_path / "run"), "model.keras", RECIPE, echo=lambda line: None,
              options=TrainingOptions(checkpoint_every=0, tensorboard=False))
    folder = str(tmp_path / "ckpt")
    write_checkpoint(model, folder, 3)
    saved = weights_of(model)

    def torn_write(path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x89HDF\r\n half a file")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_weights", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(model, folder, 4)
    monkeypatch.undo()
    assert latest_checkpoint(folder)["step"] == 3
    assert sorted(os.listdir(folder)) == ["latest.json", "step_00000003.optimizer.npz", "step_00000003.weights.h5"]
    for weight in model.weights:
        weight.assign(np.zeros(weight.shape, weight.dtype))
    restore_checkpoint(model, latest_checkpoint(folder))
    for got, want in zip(weights_of(model), saved):
        np.testing.assert_array_equal(got, want)


class PoisonedLoader(SegmentationLoader):
    """Images of NaN in the third batch of the second epoch (step 8)."""

    def batch_at(self, epoch, batch_index, order=None):
        images, targets = super().batch_at(epoch, batch_index, order)
        if (epoch, batch_index) == (1, 2):
            images = np.full_like(images, np.nan)
        return images, targets


def test_a_diverged_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    model, loader = fresh_run(data, PoisonedLoader)
    with pytest.raises(WSSSError, match=r"diverged at step 8 .*checkpoint of step 6 .* is kept"):
        fit_steps(model, loader, STEPS, str(tmp_path / "run"), "model.keras", RECIPE, echo=lambda line: None,
                  options=TrainingOptions(checkpoint_every=3, tensorboard=False))
    record = latest_checkpoint(str(tmp_path / "run" / "checkpoints" / "train"))
    assert record["step"] == 6 and not os.path.exists(tmp_path / "run" / "model.keras")
    model, _ = fresh_run(data)
    model.fit(np.zeros((2, 32, 32, 3), "float32"), {"labels": np.zeros((2, 6), "float32")}, epochs=1, verbose=0)
    restore_checkpoint(model, record)
    assert all(np.isfinite(w).all() for w in weights_of(model))


def test_tensorboard_and_log_rows(data, tmp_path):
    model, loader = fresh_run(data)
    fit_steps(model, loader, 6, str(tmp_path / "run"), "segmenter.keras", RECIPE, echo=lambda line: None,
              options=TrainingOptions(log_every=3))
    with open(tmp_path / "run" / "segmenter_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [3, 6]
    assert float(rows[0]["learning_rate"]) == pytest.approx(3e-3) and np.isfinite(float(rows[1]["loss"]))
    events = os.listdir(tmp_path / "run" / "tensorboard" / "segmenter")
    assert any(name.startswith("events.out.tfevents") for name in events)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_finite_losses(data, tmp_path, precision):
    from wsss_keras.training.options import training_session

    with training_session(TrainingOptions(precision=precision, log_every=1, tensorboard=False)):
        model, loader = fresh_run(data)
        fit_steps(model, loader, 3, str(tmp_path / "run"), "model.keras", RECIPE, echo=lambda line: None)
    assert model.dtype_policy.name == precision and keras.config.dtype_policy().name == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    with open(tmp_path / "run" / "train_log.csv", newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 3 and all(np.isfinite(losses))
