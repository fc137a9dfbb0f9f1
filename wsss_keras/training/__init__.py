"""Training helpers shared by the methods: learning-rate schedules, optimizers, checkpoints,
callbacks and the options of a training command.

The optimizers and schedules import Keras, so they load on first use: the command line imports
`wsss_keras.training.options` before the backend is chosen.
"""

__all__ = ["GroupedAdamW", "GroupedSGD", "PolyWarmup"]


def __getattr__(name):
    if name in ("GroupedAdamW", "GroupedSGD"):
        from wsss_keras.training import optimizers

        return getattr(optimizers, name)
    if name == "PolyWarmup":
        from wsss_keras.training.schedules import PolyWarmup

        return PolyWarmup
    raise AttributeError(f"module 'wsss_keras.training' has no attribute {name!r}")
