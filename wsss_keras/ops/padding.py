"""Replicate ("edge") padding of NHWC tensors with keras.ops.

`keras.ops.pad(mode="edge")` works on JAX only; gathering with clipped indices gives the same
result on every backend and exports to ONNX/TFLite as a plain Gather.
"""

import numpy as np
from keras import ops


def replicate_pad(images, pad):
    """Pad height and width of an NHWC tensor by `pad` pixels, repeating the border pixels."""
    height, width = images.shape[1], images.shape[2]
    rows = np.clip(np.arange(-pad, height + pad), 0, height - 1).astype("int32")
    cols = np.clip(np.arange(-pad, width + pad), 0, width - 1).astype("int32")
    return ops.take(ops.take(images, rows, axis=1), cols, axis=2)
