"""PyTorch's default initialisations, for modules the references train from scratch."""

import math

import keras


def torch_uniform(fan_in):
    """PyTorch's default Linear/Conv initialisation: U(±1/sqrt(fan_in)) (kaiming_uniform, a=√5)."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_uniform(fan_in):
    """PyTorch's default bias initialisation: U(±1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit)
