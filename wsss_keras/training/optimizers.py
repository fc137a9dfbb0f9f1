"""AdamW and SGD with per-variable learning-rate multipliers (the references' parameter groups).

PyTorch code gives heads a 10x learning rate through optimizer parameter groups; Keras has one
learning rate per optimizer. `GroupedAdamW` and `GroupedSGD` keep one optimizer and scale the
rate of each variable whose path contains one of the given substrings (the first matching
entry, in insertion order, wins; `multiplier_for(variable)` tells which applies).

- `GroupedAdamW`: decoupled weight decay uses the scaled rate too, as torch's AdamW does per
  group (p ← p − lr_group · wd · p, then the Adam step). The Adam update is Keras's (epsilon
  added to sqrt(v) before bias correction), which differs from torch's by the epsilon's
  scaling only.
- `GroupedSGD`: torch.optim.SGD's update exactly (coupled L2 weight decay added to the
  gradient before the momentum buffer, the rate applied after it), which Keras's SGD is not
  when the rate changes: Keras folds the rate into its velocity.

Gradient accumulation (`gradient_accumulation_steps=K`, a recipe table's `accumulate`): Keras
3.15's optimizer counts every `apply` (every micro-batch) in its `_iterations` variable, and its
`iterations` property is `_iterations // K`, which Adam's bias correction and the EMA use; but it
evaluates a learning-rate schedule at `_iterations`, so a schedule would run K times too fast.
These optimizers evaluate it at `iterations`, the optimiser step: the update of step s (applied
with micro-batch K-1, `_iterations` = K·s + K − 1) uses schedule(s), as without accumulation.
Under tf.distribute (MirroredStrategy), Keras 3.15's accumulation fails to trace (its replicas'
all-reduce sits inside an `ops.cond`); these optimizers all-reduce first and branch per variable.
"""

import keras
from keras import ops


def path_multiplier(lr_multipliers, variable):
    """The multiplier of the first `lr_multipliers` key (insertion order) that is a substring of
    the variable's path (its name when it has no path), else 1.0."""
    path = getattr(variable, "path", variable.name)
    return next((float(m) for key, m in lr_multipliers.items() if key in path), 1.0)


class AccumulationAtOptimizerSteps:
    """Mixin for gradient accumulation (see the module's docstring): a learning-rate schedule is
    evaluated at the optimiser step (`iterations`, which Keras divides by
    `gradient_accumulation_steps`), not at the micro-batch count Keras's base optimizer gives it;
    under a tf.distribute strategy the accumulation is done without a synchronisation point
    inside control flow. Without accumulation nothing changes."""

    def _get_current_learning_rate(self):
        if self.gradient_accumulation_steps and isinstance(
            self._learning_rate, keras.optimizers.schedules.LearningRateSchedule
        ):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def _backend_apply_gradients(self, grads, trainable_variables):
        if self.gradient_accumulation_steps and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False:
                return self._replicated_accumulation(tf, grads, trainable_variables)
        return super()._backend_apply_gradients(grads, trainable_variables)

    def _replicated_accumulation(self, tf, grads, trainable_variables):
        """Gradient accumulation under a tf.distribute strategy (MirroredStrategy). Keras 3.15
        puts the replicas' all-reduce and merge calls inside an `ops.cond` on "is this the K-th
        micro-batch", which TensorFlow refuses (a synchronisation point inside control flow).
        Here the gradients are all-reduced first, on every micro-batch, and the branch is taken
        per variable inside the cross-replica update, where nothing synchronises: accumulator
        += gradient, and on the K-th micro-batch the update step with their mean, accumulator 0.
        """
        if self.use_ema or self.global_clipnorm or self.weight_decay:
            raise NotImplementedError(
                f"{type(self).__name__}: gradient accumulation under tf.distribute supports no EMA, global_clipnorm "
                "or Keras weight_decay here (this optimizer's own weight decay is applied in its update step)."
            )
        steps = self.gradient_accumulation_steps
        is_update_step = (self._iterations + 1) % steps == 0
        learning_rate = self.learning_rate
        accumulators = [self._accumulated_gradients[self._get_variable_index(v)].value for v in trainable_variables]
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        reduced = self._all_reduce_sum_gradients(list(zip(grads, variables)))

        def update(distribution, reduced, accumulators, learning_rate, is_update_step):
            # Tensors of the replica context arrive here per replica: `update` hands each
            # device its own (the gradient, the rate, the branch).
            def accumulate(variable, gradient, accumulator, learning_rate, is_update_step):
                total = accumulator + tf.cast(gradient, accumulator.dtype)

                def apply():
                    [mean] = self._clip_gradients([total / steps])
                    self.update_step(mean, variable, learning_rate)
                    accumulator.assign(tf.zeros_like(total))
                    return tf.constant(True)

                def add():
                    accumulator.assign(total)
                    return tf.constant(False)

                return tf.cond(is_update_step, apply, add)

            for (gradient, variable), accumulator in zip(reduced, accumulators):
                distribution.extended.update(variable, accumulate, group=False,
                                             args=(gradient, accumulator, learning_rate, is_update_step))

        tf.__internal__.distribute.interim.maybe_merge_call(
            update, self._distribution_strategy, reduced, accumulators, learning_rate, is_update_step
        )


@keras.saving.register_keras_serializable(package="wsss_keras")
class GroupedAdamW(AccumulationAtOptimizerSteps, keras.optimizers.Adam):
    """Adam with decoupled weight decay and learning-rate multipliers by variable path.

    Args:
        learning_rate: base rate or schedule.
        lr_multipliers: dict {substring of `variable.path`: multiplier}; the first matching
            entry (in insertion order) applies, others get 1.
        weight_decay: decoupled weight decay, applied to every variable with its scaled rate.
        beta_1, beta_2, epsilon: Adam's.
        **kwargs: passed to `keras.optimizers.Adam` (clipnorm, loss_scale_factor,
            gradient_accumulation_steps, ...).

    Example:
    >>> optimizer = GroupedAdamW(6e-5, lr_multipliers={"classifier": 10.0, "decoder": 10.0}, weight_decay=0.01)
    """

    def __init__(self, learning_rate=1e-3, lr_multipliers=None, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8, **kwargs):
        kwargs.pop("name", None)
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name="grouped_adamw", **kwargs)
        self.lr_multipliers = dict(lr_multipliers or {})
        self.decoupled_weight_decay = weight_decay
        self._multipliers = []

    def build(self, var_list):
        super().build(var_list)
        self._multipliers = [self.multiplier_for(variable) for variable in var_list]

    def multiplier_for(self, variable):
        """The learning-rate multiplier of a variable (1.0 unless a substring matches its path)."""
        return path_multiplier(self.lr_multipliers, variable)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers[self._get_variable_index(variable)]
        learning_rate = ops.cast(learning_rate, variable.dtype) * multiplier
        if self.decoupled_weight_decay:
            self.assign_sub(variable, variable * (learning_rate * self.decoupled_weight_decay))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"lr_multipliers": self.lr_multipliers, "weight_decay": self.decoupled_weight_decay})
        return config


@keras.saving.register_keras_serializable(package="wsss_keras")
class GroupedSGD(AccumulationAtOptimizerSteps, keras.optimizers.Optimizer):
    """torch.optim.SGD with learning-rate multipliers by variable path (parameter groups).

    For each variable, with lr = schedule(t) · multiplier and g its gradient:

        g ← g + weight_decay · d · w              (coupled L2, torch's weight_decay; d below)
        b ← momentum · b + g                      (only when momentum > 0; b starts at 0)
        w ← w − lr · (g + momentum · b if nesterov else b)

    This is torch's update with dampening 0, so a schedule that changes the rate (poly) gives
    the same trajectory as torch's per-group `lr`; Keras's SGD multiplies the rate into its
    velocity instead. IRN's `PolyOptimizer` (spec methods/amr.md §3.3: effective momentum
    1e-4, coupled weight decay 1e-4) is `GroupedSGD(..., momentum=1e-4, weight_decay=1e-4)`;
    DeepLab-v2 is momentum 0.9, weight decay 5e-4 except on the ASPP biases (their torch group
    has weight_decay 0: `weight_decay_multipliers={"aspp/bias": 0.0}`).

    Args:
        learning_rate: base rate or schedule (e.g. `PolyWarmup(lr, 0, max_steps, power=0.9)`).
        lr_multipliers: dict {substring of `variable.path`: multiplier}; the first matching
            entry (in insertion order) applies, others get 1.
        momentum: momentum factor, >= 0 (0: plain SGD).
        weight_decay: coupled L2 factor, >= 0, applied to every variable the optimizer updates.
        weight_decay_multipliers: dict {substring of `variable.path`: multiplier d of
            `weight_decay`}, same matching rule (a group's own weight_decay in torch); 1 else.
        nesterov: Nesterov momentum (torch's form); needs momentum > 0.
        **kwargs: passed to `keras.optimizers.Optimizer` (clipnorm, loss_scale_factor,
            gradient_accumulation_steps, ...). Keras's own decoupled `weight_decay` is not used.

    Example:
    >>> optimizer = GroupedSGD(2.5e-4, lr_multipliers={"aspp/bias": 20.0, "aspp/kernel": 10.0},
    ...                        momentum=0.9, weight_decay=5e-4, weight_decay_multipliers={"aspp/bias": 0.0})
    """

    def __init__(
        self,
        learning_rate=0.01,
        lr_multipliers=None,
        momentum=0.0,
        weight_decay=0.0,
        nesterov=False,
        weight_decay_multipliers=None,
        **kwargs,
    ):
        name = kwargs.pop("name", None) or "grouped_sgd"
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        momentum, weight_decay = float(momentum), float(weight_decay or 0.0)
        if momentum < 0.0:
            raise ValueError(f"momentum={momentum} must be >= 0 (0 for plain SGD).")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0 (0 for none).")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0 (as in torch); set momentum or nesterov=False.")
        self.lr_multipliers = dict(lr_multipliers or {})
        self.weight_decay_multipliers = dict(weight_decay_multipliers or {})
        self.momentum = momentum
        self.coupled_weight_decay = weight_decay
        self.nesterov = bool(nesterov)
        self._multipliers, self._decays = [], []

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = []
        if self.momentum:
            self.momentums = self.add_optimizer_variables(var_list, "momentum")
        self._multipliers = [self.multiplier_for(variable) for variable in var_list]
        self._decays = [self.weight_decay_for(variable) for variable in var_list]

    def multiplier_for(self, variable):
        """The learning-rate multiplier of a variable (1.0 unless a substring matches its path)."""
        return path_multiplier(self.lr_multipliers, variable)

    def weight_decay_for(self, variable):
        """The coupled weight decay of a variable: `weight_decay` times its decay multiplier."""
        return self.coupled_weight_decay * path_multiplier(self.weight_decay_multipliers, variable)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        learning_rate = ops.cast(learning_rate, variable.dtype) * self._multipliers[index]
        gradient = ops.cast(gradient, variable.dtype)
        if self._decays[index]:
            gradient = gradient + self._decays[index] * variable
        step = gradient
        if self.momentum:
            buffer = self.momentums[index]
            # Use the new value, not a read of the variable after `assign` (graph order).
            new_buffer = buffer * self.momentum + gradient
            self.assign(buffer, new_buffer)
            step = gradient + self.momentum * new_buffer if self.nesterov else new_buffer
        self.assign_sub(variable, learning_rate * step)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "lr_multipliers": self.lr_multipliers,
                "weight_decay_multipliers": self.weight_decay_multipliers,
                "momentum": self.momentum,
                "weight_decay": self.coupled_weight_decay,
                "nesterov": self.nesterov,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="wsss_keras")
class GroupedSGDWithAdam(GroupedSGD):
    """`GroupedSGD` for most variables, and Adam, with its own rate, for the variables whose
    path contains one of `adam_paths`: two optimisers in one, as SSC trains its CAM network
    with IRN's PolyOptimizer and its reconstruction decoder with Adam (spec methods/ssc.md §3.1).

    The Adam group is torch.optim.Adam's update (bias-corrected moments, epsilon added to
    sqrt(v̂)), no weight decay, at `adam_learning_rate` (a rate or a schedule of the step).

    Args:
        learning_rate, lr_multipliers, momentum, weight_decay, weight_decay_multipliers,
            nesterov: `GroupedSGD`'s, for the SGD group.
        adam_paths: variable-path substrings of the Adam group.
        adam_learning_rate: the Adam group's rate or schedule (SSC: 5e-4, poly 0.9).
        adam_beta_1, adam_beta_2, adam_epsilon: Adam's (SSC: 0.5, 0.999, 1e-8).

    Example:
    >>> optimizer = GroupedSGDWithAdam(0.1, lr_multipliers={"ssc_classifier": 10.0}, weight_decay=1e-4,
    ...                                adam_paths=("reconstruction_decoder/",), adam_learning_rate=5e-4)
    """

    def __init__(self, learning_rate=0.01, adam_paths=(), adam_learning_rate=1e-3, adam_beta_1=0.5, adam_beta_2=0.999,
                 adam_epsilon=1e-8, **kwargs):
        kwargs.setdefault("name", "grouped_sgd_with_adam")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.adam_paths = tuple(adam_paths)
        if isinstance(adam_learning_rate, dict):
            adam_learning_rate = keras.saving.deserialize_keras_object(adam_learning_rate)
        self.adam_learning_rate = adam_learning_rate
        self.adam_beta_1, self.adam_beta_2, self.adam_epsilon = float(adam_beta_1), float(adam_beta_2), float(adam_epsilon)
        self._adam_moments = {}

    def in_adam_group(self, variable):
        path = getattr(variable, "path", variable.name)
        return any(key in path for key in self.adam_paths)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for variable in var_list:
            if self.in_adam_group(variable):
                self._adam_moments[self._get_variable_index(variable)] = (
                    self.add_variable_from_reference(variable, "adam_m"),
                    self.add_variable_from_reference(variable, "adam_v"),
                )

    def _adam_rate(self):
        rate = self.adam_learning_rate
        return rate(self.iterations) if callable(rate) else rate

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if index not in self._adam_moments:
            return super().update_step(gradient, variable, learning_rate)
        first, second = self._adam_moments[index]
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        new_first = first * self.adam_beta_1 + (1.0 - self.adam_beta_1) * gradient
        new_second = second * self.adam_beta_2 + (1.0 - self.adam_beta_2) * ops.square(gradient)
        self.assign(first, new_first)
        self.assign(second, new_second)
        corrected_first = new_first / (1.0 - ops.power(self.adam_beta_1, step))
        corrected_second = new_second / (1.0 - ops.power(self.adam_beta_2, step))
        rate = ops.cast(self._adam_rate(), variable.dtype)
        self.assign_sub(variable, rate * corrected_first / (ops.sqrt(corrected_second) + self.adam_epsilon))

    def get_config(self):
        config = super().get_config()
        rate = self.adam_learning_rate
        config.update(
            {
                "adam_paths": list(self.adam_paths),
                "adam_learning_rate": keras.saving.serialize_keras_object(rate) if callable(rate) else float(rate),
                "adam_beta_1": self.adam_beta_1,
                "adam_beta_2": self.adam_beta_2,
                "adam_epsilon": self.adam_epsilon,
            }
        )
        return config
