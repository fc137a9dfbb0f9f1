"""Gradient accumulation on the current backend (tests/test_accumulate.py has the rest, on
TensorFlow): two micro-batches of two give the weights of batches of four, and a run stopped
within a step resumes at that step's end and ends as the uninterrupted one. Keras's optimiser
accumulates differently per backend (JAX computes every micro-step's update and keeps it only on
the last; TensorFlow and PyTorch branch)."""

import keras
import numpy as np
import pytest
from helpers import sigterm_during_step, tiny_synthetic
from test_accumulate import CLASSES, STEPS, train, weights_of

from wsss_keras.pipelines.fitting import TrainingInterrupted
from wsss_keras.training.checkpoints import latest_checkpoint
from wsss_keras.training.options import TrainingOptions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_synthetic(tmp_path_factory.mktemp("accumulate") / "data", n_train=8, n_val=2, size=40,
                          classes=str(CLASSES))


def state(model):
    return weights_of(model) + [keras.ops.convert_to_numpy(variable) for variable in model.optimizer.variables]


def test_accumulated_steps_match_whole_batches_and_resume_within_a_step(data, tmp_path):
    plain, initial, _ = train(data, tmp_path / "plain", 1)
    whole, _, _ = train(data, tmp_path / "whole", 2)
    assert any(not np.allclose(got, before, atol=1e-3) for got, before in zip(weights_of(plain), initial))
    for got, want in zip(weights_of(whole), weights_of(plain)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    with pytest.raises(TrainingInterrupted, match="after step 3"):
        train(data, tmp_path / "cut", 2, callbacks=[sigterm_during_step(3)])
    assert latest_checkpoint(str(tmp_path / "cut" / "checkpoints" / "train"))["step"] == 3
    resumed, _, _ = train(data, tmp_path / "cut", 2, options=TrainingOptions(log_every=1, tensorboard=False))
    for got, want in zip(state(resumed), state(whole)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == STEPS
