"""Schedules, and the grouped AdamW / SGD against torch.optim.AdamW / SGD with parameter groups."""

import keras
import numpy as np
import pytest
import torch

from wsss_keras.training import GroupedAdamW, PolyWarmup
from wsss_keras.training.optimizers import GroupedSGD


def reference_multiplier(step, warmup, max_steps, ratio, power):
    if step < warmup:
        return 1 - (1 - step / warmup) * (1 - ratio)
    return max(1 - step / max_steps, 0.0) ** power


def step_in_lockstep(optimizer, variables, torch_optimizer, torch_params, gradients, multiplier, steps=10):
    """Apply the same gradients with both optimisers for `steps` steps, the torch groups' rates
    set to their base rate times `multiplier(step)`; then compare the weights."""
    base = [group["lr"] for group in torch_optimizer.param_groups]
    for step in range(steps):
        grads = gradients([keras.ops.convert_to_numpy(v) for v in variables])
        optimizer.apply(grads, variables)
        for group, rate in zip(torch_optimizer.param_groups, base):
            group["lr"] = rate * multiplier(step)
        for param, grad in zip(torch_params, grads):
            param.grad = torch.from_numpy(grad.copy())
        torch_optimizer.step()
    for variable, param in zip(variables, torch_params):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), param.detach().numpy(), atol=2e-5)


def test_poly_warmup_matches_the_formula():
    schedule = PolyWarmup(2e-3, warmup_steps=5, max_steps=20, warmup_ratio=0.1, power=0.9)
    for step in (0, 1, 4, 5, 6, 19, 20, 25):
        expected = 2e-3 * reference_multiplier(step, 5, 20, 0.1, 0.9)
        assert float(keras.ops.convert_to_numpy(schedule(step))) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert PolyWarmup.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_grouped_adamw_matches_torch_parameter_groups():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    start = {"backbone_w": rng.normal(size=(3, 2)).astype("float32"), "head_w": rng.normal(size=(3, 2)).astype("float32")}

    def gradient(weight):  # of mean((x @ w - y)^2), the same for both frameworks
        return (2.0 / y.size) * x.T @ (x @ weight - y)

    schedule = PolyWarmup(0.05, warmup_steps=3, max_steps=12, warmup_ratio=0.1, power=0.9)
    optimizer = GroupedAdamW(schedule, lr_multipliers={"head": 10.0}, weight_decay=0.01)
    variables = [keras.Variable(value, name=name) for name, value in start.items()]
    torch_params = [torch.nn.Parameter(torch.from_numpy(value.copy())) for value in start.values()]
    torch_optimizer = torch.optim.AdamW(
        [{"params": [torch_params[0]], "lr": 0.05}, {"params": [torch_params[1]], "lr": 0.5}],
        betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
    )
    step_in_lockstep(
        optimizer, variables, torch_optimizer, torch_params, lambda weights: [gradient(w) for w in weights],
        lambda step: reference_multiplier(step, 3, 12, 0.1, 0.9),
    )
    assert optimizer.multiplier_for(variables[1]) == 10.0 and optimizer.multiplier_for(variables[0]) == 1.0


def test_grouped_adamw_round_trips_its_config():
    optimizer = GroupedAdamW(1e-3, lr_multipliers={"decoder": 10.0}, weight_decay=0.05)
    clone = GroupedAdamW.from_config(optimizer.get_config())
    assert clone.lr_multipliers == {"decoder": 10.0} and clone.decoupled_weight_decay == 0.05


def test_grouped_adamw_trains_a_model_with_fit():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="backbone")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    optimizer = GroupedAdamW(PolyWarmup(1e-2, 2, 20), lr_multipliers={"head": 10.0})
    model.compile(optimizer=optimizer, loss="mse")
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    history = model.fit(x, x.sum(1, keepdims=True), batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert [optimizer.multiplier_for(v) for v in model.trainable_variables] == [1.0, 1.0, 10.0, 10.0]
    for old, new in zip(before, model.trainable_variables):
        assert not np.allclose(old, keras.ops.convert_to_numpy(new))


def test_poly_warmup_without_warmup_is_plain_poly():
    # warmup_steps=0 is the IRN / DeepLab poly schedule: lr0 · (1 − t/T)^0.9 for t = 0..T−1.
    schedule = PolyWarmup(2.5e-4, warmup_steps=0, max_steps=50, power=0.9)
    for step in range(50):
        expected = 2.5e-4 * (1 - step / 50) ** 0.9
        assert float(keras.ops.convert_to_numpy(schedule(step))) == pytest.approx(expected, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    "momentum, weight_decay, bias_decay, nesterov",
    [(0.9, 5e-2, 0.0, False), (0.0, 5e-2, 0.0, False), (1e-4, 1e-4, 1.0, False), (0.9, 5e-2, 1.0, True)],
    ids=["deeplab_momentum", "plain", "irn_poly_optimizer", "nesterov"],
)
def test_grouped_sgd_matches_torch_parameter_groups(momentum, weight_decay, bias_decay, nesterov):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    start = {
        "backbone_w": rng.normal(size=(3, 2)).astype("float32"),
        "aspp_kernel_6": rng.normal(size=(3, 2)).astype("float32"),
        "aspp_bias_6": rng.normal(size=(2,)).astype("float32"),
    }

    def gradients(weights):  # of mean((x @ w + b − y)^2) w.r.t. the three variables
        w_backbone, w_head, bias = weights
        error = (2.0 / y.size) * (x @ w_backbone + x @ w_head + bias - y)
        return [x.T @ error, x.T @ error, error.sum(0)]

    # A decaying rate: Keras's own SGD (rate folded into the velocity) would part from torch here.
    schedule = PolyWarmup(0.05, warmup_steps=0, max_steps=12, power=0.9)
    # Standalone variables: their paths are their names.
    optimizer = GroupedSGD(
        schedule, lr_multipliers={"aspp_bias": 20.0, "aspp_kernel": 10.0},
        momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
        weight_decay_multipliers={"aspp_bias": bias_decay},
    )
    variables = [keras.Variable(value, name=name) for name, value in start.items()]
    torch_params = [torch.nn.Parameter(torch.from_numpy(value.copy())) for value in start.values()]
    base = [0.05, 0.5, 1.0]
    decays = [weight_decay, weight_decay, weight_decay * bias_decay]  # deeplab-pytorch: 0 on the biases
    torch_optimizer = torch.optim.SGD(
        [{"params": [p], "lr": rate, "weight_decay": decay} for p, rate, decay in zip(torch_params, base, decays)],
        lr=0.05, momentum=momentum, nesterov=nesterov,
    )
    step_in_lockstep(optimizer, variables, torch_optimizer, torch_params, gradients, lambda step: (1 - step / 12) ** 0.9)
    assert [optimizer.multiplier_for(v) for v in variables] == [1.0, 10.0, 20.0]
    assert [optimizer.weight_decay_for(v) for v in variables] == decays


def test_grouped_sgd_round_trips_its_config_and_checks_arguments():
    optimizer = GroupedSGD(
        2.5e-4, lr_multipliers={"aspp/bias": 20.0}, momentum=0.9, weight_decay=5e-4,
        weight_decay_multipliers={"aspp/bias": 0.0},
    )
    clone = GroupedSGD.from_config(optimizer.get_config())
    assert clone.lr_multipliers == {"aspp/bias": 20.0} and clone.weight_decay_multipliers == {"aspp/bias": 0.0}
    assert (clone.momentum, clone.coupled_weight_decay, clone.nesterov) == (0.9, 5e-4, False)
    assert clone.weight_decay is None  # Keras's decoupled decay stays off
    with pytest.raises(ValueError, match="momentum=-0.1"):
        GroupedSGD(momentum=-0.1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        GroupedSGD(nesterov=True)
