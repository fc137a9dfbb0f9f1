"""`wsss export`: a trained model as a SavedModel, ONNX or TFLite (LiteRT) artifact, with a
manifest and a self-check.

The exported graph (`graph.ImageToSegmentation`, built by `build.deployment_graph`) is
inference only and needs no Python around it: it takes uint8 RGB images `(B, H, W, 3)` of any
size, resizes them to the network's input size (or not, `dynamic`), normalises them as the
model was trained, runs the segmentation head (or the CAM head) and resizes the result back to
the image. Its outputs, by `output`, are in `build`'s docstring.

Export runs on the TensorFlow backend (Keras 3.15 exports ONNX and LiteRT only there); from
JAX or PyTorch, `export_model` runs itself in a TensorFlow subprocess on the same `.keras` file
(`tf_subprocess`, `__main__`). Every artifact gets a `manifest.json` beside it (`manifest`) and
is checked against the Keras model on sample images (`check`, on `samples`' images): label
agreement and, with logits, the largest logit difference; the export fails (`ExportCheckError`)
under the thresholds of `AGREEMENT` / `FP32_LOGIT_TOLERANCE`.

The modules: `api` (`export_model`), `build` and `graph` (the graph), `formats` (which
artifacts, where, and their writers), `tflite`, `int8` (its float fallbacks) and `triton`
(the formats' own parts), `runner` (an artifact in its runtime), `check`, `manifest`,
`samples`, `errors`, `tf_subprocess`. Importing this package does not import Keras.
"""

from wsss_keras.export.api import (
    checked_pairs,
    export_artifact,
    export_model,
    write_checked,
)
from wsss_keras.export.build import (
    DEFAULT_INPUT_SIZE,
    OUTPUTS,
    default_input_size,
    deployment_graph,
    image_segmenter,
)
from wsss_keras.export.check import (
    AGREEMENT,
    FP32_LOGIT_TOLERANCE,
    compare_outputs,
    evaluation_miou,
    self_check,
)
from wsss_keras.export.errors import ExportCheckError, ExportError
from wsss_keras.export.formats import (
    ARTIFACT_NAMES,
    DEFAULT_OPSET,
    FORMATS,
    PRECISIONS,
    artifact_folder,
    artifact_path,
    check_request,
    write_artifacts,
)
from wsss_keras.export.int8 import (
    INT8_FLOAT_LEVELS,
    INT8_SCOPES,
    INT8_WEIGHTED_OPS,
    int8_flatbuffers,
)
from wsss_keras.export.manifest import (
    MANIFEST_FILE,
    build_manifest,
    class_names,
    file_sha256,
    model_name,
    output_descriptions,
    write_manifest,
)
from wsss_keras.export.runner import artifact_runner
from wsss_keras.export.samples import (
    CALIBRATION_LIMIT,
    SAMPLE_COUNT,
    image_folder,
    sample_images,
)
from wsss_keras.export.tflite import litert_converter, tflite_op_names
from wsss_keras.export.triton import (
    TRITON_MAX_BATCH,
    TRITON_QUEUE_DELAY_US,
    triton_config,
)

__all__ = [
    "AGREEMENT", "ARTIFACT_NAMES", "CALIBRATION_LIMIT", "DEFAULT_INPUT_SIZE", "DEFAULT_OPSET", "FORMATS",
    "FP32_LOGIT_TOLERANCE", "INT8_FLOAT_LEVELS", "INT8_SCOPES", "INT8_WEIGHTED_OPS", "MANIFEST_FILE", "OUTPUTS",
    "PRECISIONS", "SAMPLE_COUNT", "TRITON_MAX_BATCH", "TRITON_QUEUE_DELAY_US", "ExportCheckError", "ExportError",
    "artifact_folder", "artifact_path", "artifact_runner", "build_manifest", "check_request", "checked_pairs",
    "class_names", "compare_outputs", "default_input_size", "deployment_graph", "evaluation_miou",
    "export_artifact", "export_model", "file_sha256", "image_folder", "image_segmenter", "int8_flatbuffers", "litert_converter",
    "model_name", "output_descriptions", "sample_images", "self_check", "tflite_op_names", "triton_config",
    "write_artifacts", "write_checked", "write_manifest",
]
