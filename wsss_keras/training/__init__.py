"""Training helpers shared by the methods: learning-rate schedules and optimizers."""

from wsss_keras.training.optimizers import GroupedAdamW, GroupedSGD
from wsss_keras.training.schedules import PolyWarmup

__all__ = ["GroupedAdamW", "GroupedSGD", "PolyWarmup"]
