"""Loading a trained model (`.keras` file) for the pipelines, with errors that say what to do.

Every method registers its classes with `@keras.saving.register_keras_serializable(package=
"wsss_keras")` when its module is imported, so `load_model` imports the modules of
`wsss_keras.methods` first. Loading runs in Keras's safe mode (no pickled lambdas).
"""

import importlib
import os
import pkgutil
import zipfile

from wsss_keras.errors import ModelError

# What the pipelines use of a model (see wsss_keras.methods.base.WSSSModel).
INTERFACE = ("class_names", "image_mean", "image_std", "cam_maps", "segment_logits")


def import_method_modules():
    """Import every module of `wsss_keras.methods` so their classes are registered with Keras.

    Returns:
        {module name: error} for modules that failed to import (the others still load).
    """
    import wsss_keras.methods as methods

    failures = {}
    for info in pkgutil.iter_modules(methods.__path__):
        try:
            importlib.import_module(f"{methods.__name__}.{info.name}")
        except Exception as error:  # a broken method module must not stop the others from loading
            failures[info.name] = error
    return failures


def _one_line(error, limit=240):
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_interface(model, source):
    """Raise `ModelError` unless `model` offers what the pipelines use."""
    missing = [name for name in INTERFACE if not hasattr(model, name)]
    if missing:
        raise ModelError(
            f"{source}: {type(model).__name__} lacks the WSSSModel interface (missing {', '.join(missing)}); "
            "the pipelines need a model whose class inherits wsss_keras.methods.base.WSSSModel."
        )
    return model


def check_model_file(path):
    """`path` as a string, once it names a `.keras` archive; else a one-line `ModelError` (cheap:
    nothing is imported or loaded)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: model file not found; pass the .keras file saved after training (model.save('model.keras')).")
    if not path.endswith(".keras"):
        raise ModelError(f"{path}: expected a .keras file (Keras 3 format); re-save the trained model with model.save('model.keras').")
    # Keras reports any file it cannot open as a zip as "File not found", even when it exists.
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path}: the file exists but is not a Keras model archive (a .keras file is a zip written by "
            "model.save('model.keras')); pass the .keras file saved after training, or copy it again if it was cut short."
        )
    return path


def load_model(path):
    """Load a trained `.keras` model and check it has the `WSSSModel` interface.

    Args:
        path: the `.keras` file written by `model.save(...)` after training.

    Returns:
        the model (not compiled; the pipelines only run inference).

    Raises:
        ModelError: the file is missing, not a `.keras` archive, holds an unknown class, or the
            model lacks the interface; the message names the file and the fix.
    """
    path = check_model_file(path)
    import keras

    failures = import_method_modules()
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:
        message = _one_line(error)
        if "locate class" in message or "register_keras_serializable" in message:
            hint = "its class is not registered: import the module that defines it before loading"
            if failures:
                broken = ", ".join(f"wsss_keras.methods.{name} ({type(e).__name__}: {_one_line(e, 80)})" for name, e in failures.items())
                hint += f"; these method modules failed to import: {broken}"
        elif "safe_mode" in message:
            hint = "it holds code (e.g. a Lambda layer) that safe mode refuses to run; rebuild the model without it"
        else:
            hint = "the file is corrupt or not a Keras model; copy it again or re-save it with model.save('model.keras')"
        raise ModelError(f"{path}: cannot load the model ({type(error).__name__}: {message}); {hint}.") from None
    return check_interface(model, path)
