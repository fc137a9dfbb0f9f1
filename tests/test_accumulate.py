"""Gradient accumulation (`[TABLE] accumulate = K`, `pipelines.fitting.fit_steps`): K micro-batches
of batch_size / K images per optimiser step give the weights of one batch of batch_size (a loss
that is a mean over the batch, no BatchNorm); the learning rate, logs, checkpoints and resuming
count optimiser steps; a batch that does not split is a one-line recipe error."""

import csv

import keras
import numpy as np
import pytest
from helpers import sigterm_during_step, tiny_synthetic

from wsss_keras.data.layouts import open_dataset
from wsss_keras.data.loader import SegmentationLoader
from wsss_keras.data.transforms import TrainTransform
from wsss_keras.errors import RecipeError, WSSSError
from wsss_keras.pipelines.fitting import TrainingInterrupted, fit_steps, make_optimizer
from wsss_keras.training.checkpoints import latest_checkpoint
from wsss_keras.training.options import TrainingOptions
from wsss_keras.training.schedules import PolyWarmup

STEPS, BATCH, CLASSES = 6, 4, 3  # 8 images in batches of 4: the run crosses two epoch ends
LEARNING_RATE, WARMUP = 0.2, 2


@keras.saving.register_keras_serializable(package="wsss_keras_tests")
class TinyClassifier(keras.Model):
    """Conv, global mean, dense: no BatchNorm, a loss that is the mean over the batch."""

    def __init__(self, classes=CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.conv = keras.layers.Conv2D(4, 3, strides=4, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(classes)

    def call(self, images, training=None):
        return self.dense(self.pool(self.conv(images)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = keras.ops.cast(y["labels"], "float32")
        return keras.ops.mean(keras.losses.binary_crossentropy(labels, y_pred, from_logits=True))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_synthetic(tmp_path_factory.mktemp("accumulate") / "data", n_train=8, n_val=2, size=40,
                          classes=str(CLASSES))


def recipe(accumulate, optimizer="sgd", batch_size=BATCH):
    table = {"optimizer": optimizer, "learning_rate": LEARNING_RATE, "warmup_steps": WARMUP, "weight_decay": 1e-3,
             "accumulate": accumulate, **({"batch_size": batch_size} if batch_size else {})}
    if optimizer == "sgd":
        table["momentum"] = 0.9
    else:
        table["learning_rate"] = 0.02
    return {"recipe": {"name": "accumulate-test"}, "train": table}


def build(data, accumulate, optimizer="sgd", batch_size=BATCH, table_batch_size=BATCH):
    keras.utils.set_random_seed(0)
    loader = SegmentationLoader(open_dataset(data, "train"), batch_size, TrainTransform(crop_size=32, scale_range=(0.7, 1.3)),
                                shuffle=True, seed=0, drop_remainder=True)
    model = TinyClassifier()
    model(np.zeros((1, 32, 32, 3), "float32"))  # builds every layer, so both runs start from the same weights
    model.compile(optimizer=make_optimizer(recipe(accumulate, optimizer, table_batch_size), "train", STEPS, model))
    return model, loader


def weights_of(model):
    return [keras.ops.convert_to_numpy(weight) for weight in model.weights]


QUIET = TrainingOptions(checkpoint_every=0, log_every=1, tensorboard=False)


def train(data, folder, accumulate, optimizer="sgd", callbacks=(), options=QUIET):
    model, loader = build(data, accumulate, optimizer)
    initial = weights_of(model)
    lines = []
    fit_steps(model, loader, STEPS, str(folder), "model.keras", recipe(accumulate, optimizer), echo=lines.append,
              callbacks=list(callbacks), options=options)
    return model, initial, lines


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_two_micro_batches_of_two_give_the_weights_of_batches_of_four(data, tmp_path, optimizer):
    plain, initial, _ = train(data, tmp_path / "plain", 1, optimizer)
    accumulated, initial_too, lines = train(data, tmp_path / "accumulated", 2, optimizer)
    for before, again in zip(initial, initial_too):
        np.testing.assert_array_equal(before, again)  # the two runs start from the same weights
    assert any(not np.allclose(got, before, atol=1e-3) for got, before in zip(weights_of(plain), initial))
    for got, want in zip(weights_of(accumulated), weights_of(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    optimizer_state = accumulated.optimizer
    assert int(keras.ops.convert_to_numpy(optimizer_state.iterations)) == STEPS  # optimiser steps
    assert "each the mean gradient of 2 micro-batches of 2" in lines[0], lines[0]


def test_the_logged_learning_rate_and_steps_are_the_schedules_at_optimiser_steps(data, tmp_path):
    train(data, tmp_path, 2)
    with open(tmp_path / "train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == list(range(1, STEPS + 1))
    schedule = PolyWarmup(LEARNING_RATE, WARMUP, STEPS, power=0.9)
    # After step s the optimiser's step count is s, the rate its next step uses (as without accumulation).
    want = [float(schedule(int(row["step"]))) for row in rows]
    np.testing.assert_allclose([float(row["learning_rate"]) for row in rows], want, rtol=1e-6)
    with open(tmp_path / "train_summary.json", encoding="utf-8") as handle:
        assert '"accumulate": 2' in handle.read()


def test_a_batch_that_does_not_split_is_a_one_line_recipe_error(data):
    with pytest.raises(RecipeError) as error:
        make_optimizer(recipe(4, batch_size=6), "train", STEPS)
    message = str(error.value)
    assert "\n" not in message
    assert "[train] batch_size = 6" in message and "accumulate = 4" in message and "multiple of 4 (4 or 8)" in message
    with pytest.raises(RecipeError, match=r"\[train\] accumulate = 0; give a whole number >= 1"):
        make_optimizer(recipe(0), "train", STEPS)
    # The loader's batch (a table without batch_size: the pipeline's default) is checked by fit_steps,
    # with the replicas: each micro-batch splits over them.
    model, loader = build(data, 2, batch_size=3, table_batch_size=None)
    with pytest.raises(RecipeError, match=r"\[train\] batch_size = 3 does not split into accumulate = 2 equal "
                                          r"micro-batches; set batch_size to a multiple of 2 \(2 or 4\)"):
        fit_steps(model, loader, STEPS, "unused", "model.keras", recipe(2), echo=lambda line: None, options=QUIET)


@pytest.mark.parametrize("counter", ["train_steps", "cmpa_step"])
def test_a_model_counting_its_own_steps_is_refused(data, tmp_path, counter):
    model, loader = build(data, 2)
    setattr(model, counter, 0)  # as ToCo's, SSC's and SSR's step counters: they would count micro-batches
    with pytest.raises(WSSSError, match=rf"accumulate = 2: TinyClassifier counts its own steps \({counter}\) once per "
                                        r"batch.*set accumulate = 1 in \[train\] of accumulate-test"):
        fit_steps(model, loader, STEPS, str(tmp_path), "model.keras", recipe(2), echo=lambda line: None, options=QUIET)


def test_a_run_stopped_mid_step_resumes_at_the_step_and_ends_as_the_uninterrupted_one(data, tmp_path):
    whole, _, _ = train(data, tmp_path / "whole", 2, "adamw")
    with pytest.raises(TrainingInterrupted, match="after step 3"):
        train(data, tmp_path / "cut", 2, "adamw", callbacks=[sigterm_during_step(3)])
    record = latest_checkpoint(str(tmp_path / "cut" / "checkpoints" / "train"))
    assert record["step"] == 3  # the end of the step the signal came in, not a micro-batch
    resumed, _, lines = train(data, tmp_path / "cut", 2, "adamw", options=TrainingOptions(log_every=1, tensorboard=False))
    assert "resuming at step 3" in lines[0], lines
    for got, want in zip(weights_of(resumed) + [keras.ops.convert_to_numpy(v) for v in resumed.optimizer.variables],
                         weights_of(whole) + [keras.ops.convert_to_numpy(v) for v in whole.optimizer.variables]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with open(tmp_path / "cut" / "train_log.csv", newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, STEPS + 1))


def test_toco_counts_its_loss_starts_in_optimiser_steps(data, tmp_path):
    # ToCo's step counter advances per micro-batch; its loss starts and DOEI's schedule read
    # optimiser steps (train_steps // accumulate), so fit_steps accepts it and sets K.
    from helpers import tiny_toco_for_training, toco_training_loader

    from wsss_keras.training.optimizers import GroupedAdamW

    model = tiny_toco_for_training()
    model.compile(optimizer=GroupedAdamW(PolyWarmup(2e-3, 2, 6), lr_multipliers={"decoder/": 10.0},
                                         gradient_accumulation_steps=2))
    toco_recipe = {"recipe": {"name": "toco-accumulate"}, "train": {"batch_size": 4, "accumulate": 2}}
    fit_steps(model, toco_training_loader(data, batch_size=4), 3, str(tmp_path), "model.keras", toco_recipe,
              echo=lambda line: None, options=QUIET)
    assert model.accumulate == 2 and int(keras.ops.convert_to_numpy(model.train_steps)) == 6  # micro-batches
    assert int(keras.ops.convert_to_numpy(model.optimizer_steps())) == 3
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(model._progress())), 3 / 6)  # max_steps 6
