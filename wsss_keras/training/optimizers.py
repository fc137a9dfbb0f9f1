"""AdamW with per-variable learning-rate multipliers (the references' parameter groups).

PyTorch code gives heads a 10x learning rate through optimizer parameter groups; Keras has one
learning rate per optimizer. `GroupedAdamW` keeps one optimizer and scales the rate of each
variable whose path contains one of the given substrings. Decoupled weight decay uses the
scaled rate too, as torch's AdamW does per group (p ← p − lr_group · wd · p, then the Adam step).
The Adam update is Keras's (epsilon added to sqrt(v) before bias correction), which differs from
torch's by the epsilon's scaling only.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="wsss_keras")
class GroupedAdamW(keras.optimizers.Adam):
    """Adam with decoupled weight decay and learning-rate multipliers by variable path.

    Args:
        learning_rate: base rate or schedule.
        lr_multipliers: dict {substring of `variable.path`: multiplier}; the first matching
            entry (in insertion order) applies, others get 1.
        weight_decay: decoupled weight decay, applied to every variable with its scaled rate.
        beta_1, beta_2, epsilon: Adam's.
        **kwargs: passed to `keras.optimizers.Adam` (clipnorm, loss_scale_factor, ...).

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
        path = getattr(variable, "path", variable.name)
        return next((float(m) for key, m in self.lr_multipliers.items() if key in path), 1.0)

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
