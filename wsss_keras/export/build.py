"""The deployment graph built on a trained model and traced once (`deployment_graph`), at the
input size the model was trained for unless told (`default_input_size`).

Outputs, by `output`:

- "logits" (default): `logits` `(B, H, W, C + 1)` float32, background first, and `labels`
  `(B, H, W)` uint8, their argmax;
- "labels": `labels` only, the lean graph for devices;
- "cams": `cams` `(B, H, W, C)` in [0, 1], ReLU'd and max-normalised per class (CAM networks).
"""

import numpy as np

from wsss_keras.export.errors import ExportError, first_lines

OUTPUTS = ("logits", "labels", "cams")
DEFAULT_INPUT_SIZE = 448


def default_input_size(model):
    """The network input size the model was trained for: the recipe's CAM resize, else its
    training crop, else 448."""
    recipe = getattr(model, "recipe", {}) or {}
    for section, key in (("cams", "resize"), ("train", "crop_size")):
        value = (recipe.get(section) or {}).get(key)
        if value:
            return (int(value), int(value))
    return (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)


def deployment_graph(model, input_size, output="logits", dynamic=False):
    """The inference graph of `model` as a `keras.Model` on uint8 images, built and traced once.

    Args:
        model: a trained `WSSSModel`.
        input_size: (height, width) the images are resized to inside the graph.
        output: "logits", "labels" or "cams" (see the module docstring).
        dynamic: run the network at each image's own size instead.

    Raises:
        ExportError: the model has no head for `output`.
    """
    import keras

    from wsss_keras.export.graph import ImageToSegmentation

    if output not in OUTPUTS:
        raise ExportError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}.")
    if output == "cams" and getattr(model, "cams_need_labels", False):
        raise ExportError(
            f"{type(model).__name__}'s CAMs are Grad-CAMs that need the image labels and gradients at inference; "
            "they cannot be exported. Export its segmentation head instead (--output logits or labels)."
        )
    graph = ImageToSegmentation(model, input_size, output, dynamic)
    probe = np.zeros((1,) + tuple(input_size) + (3,), np.uint8)
    try:
        outputs = graph(keras.ops.convert_to_tensor(probe))
    except NotImplementedError:
        if output == "cams":
            raise ExportError(f"{type(model).__name__} has no CAM head; export --output logits or labels.") from None
        raise ExportError(
            f"{type(model).__name__} has no segmentation head: export the segmentation network trained on its "
            "pseudo-labels (the run's segmentation/model.keras), or this model's CAMs with --output cams."
        ) from None
    if dynamic and keras.backend.backend() == "tensorflow":  # the export's trace, with sizes unknown
        import tensorflow as tf

        try:
            tf.function(graph.call).get_concrete_function(tf.TensorSpec((None, None, None, 3), tf.uint8))
        except Exception as error:
            raise ExportError(f"{type(model).__name__} cannot run at image sizes unknown until run time "
                              f"({first_lines(error)}); export with --input-size H W instead of --dynamic.") from None
    # Labels with background, from the graph's outputs (methods count num_classes differently).
    if output == "labels":
        outputs = {"logits": model.segment_logits(keras.ops.zeros((1,) + tuple(input_size) + (3,)))}
    graph.label_count = int(outputs["cams"].shape[-1]) + 1 if output == "cams" else int(outputs["logits"].shape[-1])
    return graph


def image_segmenter(model, input_size=None, output="labels", dynamic=False):
    """The exported graph as a Keras model, for Python: uint8 RGB images `(B, H, W, 3)` of any
    size in, {"labels"} (or {"logits", "labels"}, {"cams"}) at their size out, with the resize
    and normalisation inside, on every backend. It saves and loads as a `.keras` file, the
    model inside.

    Args:
        model: a trained `WSSSModel`.
        input_size: (height, width) the network runs at (default `default_input_size`).
        output, dynamic: as `deployment_graph`.

    Example:
    >>> segmenter = image_segmenter(load_model("model.keras"))  # doctest: +SKIP
    >>> segmenter.predict(uint8_images)["labels"]  # doctest: +SKIP
    """
    return deployment_graph(model, tuple(input_size or default_input_size(model)), output, dynamic)
