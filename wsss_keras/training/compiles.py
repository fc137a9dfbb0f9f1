"""Counting the backend's compilations, so a run can see retracing: a training step compiled
again after its first steps (a new input shape or dtype each step) costs a compile per step.

JAX reports each XLA compilation through `jax.monitoring`; TensorFlow and PyTorch give no such
count without private API, so `compile_count` is None there.
"""

import keras

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_count = 0
_listening = False


def _on_event(event, duration_secs, **kwargs):
    global _count
    if event == _BACKEND_COMPILE_EVENT:
        _count += 1


def compile_count():
    """XLA compilations so far in this process (JAX), or None on the other backends. The
    first call starts counting, so call it before the work to be counted."""
    global _listening
    if keras.backend.backend() != "jax":
        return None
    if not _listening:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _listening = True
    return _count
