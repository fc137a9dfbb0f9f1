"""Choosing the Keras backend before Keras is imported.

Keras reads `KERAS_BACKEND` once, at its first import, so the backend must be set before
anything imports `keras`. Everything in `wsss_keras` that needs Keras imports it lazily,
which keeps this module's `set_backend` effective until the first model or loader is built.
"""

import importlib.util
import os
import sys

from wsss_keras.errors import BackendError

BACKENDS = ("tensorflow", "jax", "torch")

# The Python package each backend needs, and the extra that installs it.
_BACKEND_PACKAGES = {
    "tensorflow": ("tensorflow", "wsss-keras"),
    "jax": ("jax", "wsss-keras[jax]"),
    "torch": ("torch", "wsss-keras[torch]"),
}


def is_available(name):
    """Whether the backend's framework is installed (without importing it)."""
    module, _ = _BACKEND_PACKAGES[name]
    return importlib.util.find_spec(module) is not None


def set_backend(name):
    """Select the Keras backend for this process.

    Args:
        name: one of "tensorflow", "jax", "torch".

    Raises:
        BackendError: the name is unknown, its framework is not installed, or Keras was
            already imported with another backend.
    """
    if name not in BACKENDS:
        raise BackendError(f"Unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    if not is_available(name):
        module, extra = _BACKEND_PACKAGES[name]
        raise BackendError(
            f"Backend {name!r} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install '{extra}'"
        )
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise BackendError(
                f"Keras is already imported with backend {current!r}; choose {name!r} before "
                "importing Keras (set KERAS_BACKEND or pass --backend first)."
            )
    os.environ["KERAS_BACKEND"] = name


def current_backend():
    """The backend Keras uses or will use in this process."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")
