"""The places where the project reaches into Keras internals, kept in one module.

Each one covers something Keras 3.15's public API does not offer. The docstrings say why, so a
Keras upgrade needs checking in this file only. Not here, being public: `PerShapeInference`
(pipelines/inference.py) keeps one compiled function per input shape by setting a model's
`predict_function`, the attribute `predict_on_batch` compiles into when it is None.
"""

import contextlib


def build_for_restore(model, batch):
    """Build the model's and its optimiser's variables from one `batch`, as `fit` does on its
    first step, so that a checkpoint can fill them before training resumes.

    Keras builds them inside `fit` (on TensorFlow only while tracing the first step), and
    exposes no public call that builds the optimiser from data: `Model._symbolic_build` is the
    one `fit` uses itself.
    """
    model._symbolic_build(data_batch=batch)


@contextlib.contextmanager
def compute_loss_wrapped(model, wrapper):
    """Within the block, `model.compute_loss` is `wrapper(original)`, for this model only.

    Used to scale each replica's loss under tf.distribute: Keras divides a `Loss` object's
    value by the replica count, but a model's own `compute_loss` is called as it is, and no
    hook sits between it and the gradient. The bound method is shadowed in the instance's
    `__dict__`, which `fit` reads through normal attribute lookup, and removed afterwards.
    """
    model.__dict__["compute_loss"] = wrapper(model.compute_loss)
    try:
        yield
    finally:
        model.__dict__.pop("compute_loss", None)


@contextlib.contextmanager
def no_default_save_signatures():
    """Within the block, Keras writes no `serving_default` signature per Keras Model.

    Keras's SavedModel writing (under all three export formats) traces a default signature for
    every Keras Model it meets, from the shapes that model was built with; the methods' sub-models
    (encoders, heads) are built from configs without input shapes, so that tracing fails. The
    export's own endpoint is the only signature wanted, and Keras has no switch for the others:
    its private `TFLayer._default_save_signature` is replaced meanwhile.
    """
    from keras.src.backend.tensorflow.layer import TFLayer

    original = TFLayer.__dict__["_default_save_signature"]
    TFLayer._default_save_signature = property(lambda self: None)
    try:
        yield
    finally:
        TFLayer._default_save_signature = original
