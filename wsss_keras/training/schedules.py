"""Learning-rate schedules of the reference implementations, as Keras schedules."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="wsss_keras")
class PolyWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then polynomial decay, as ToCo's PolyWarmupAdamW computes it.

    At step t (0-based, the optimizer's iteration count before the update):
    * t < warmup_steps: lr · (1 − (1 − t / warmup_steps) · (1 − warmup_ratio))
    * otherwise:        lr · (1 − t / max_steps) ^ power, and 0 from max_steps on.

    Note the decay uses the global step t, not t − warmup_steps (ToCo's code).

    Args:
        learning_rate: the base rate.
        warmup_steps: length of the warm-up (0 for none).
        max_steps: the step at which the rate reaches 0.
        warmup_ratio: the multiplier at step 0.
        power: exponent of the decay.

    Example:
    >>> schedule = PolyWarmup(6e-5, warmup_steps=1500, max_steps=20000, warmup_ratio=1e-6, power=0.9)
    >>> round(float(schedule(1500)) / 6e-5, 4)
    0.9302
    """

    def __init__(self, learning_rate, warmup_steps, max_steps, warmup_ratio=1e-6, power=0.9):
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.warmup_ratio = warmup_ratio
        self.power = power

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = 1.0 - (1.0 - step / max(self.warmup_steps, 1)) * (1.0 - self.warmup_ratio)
        decay = ops.power(ops.maximum(1.0 - step / self.max_steps, 0.0), self.power)
        multiplier = ops.where(step < self.warmup_steps, warmup, decay)
        return self.learning_rate * multiplier

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "max_steps": self.max_steps,
            "warmup_ratio": self.warmup_ratio,
            "power": self.power,
        }
