"""Export from JAX or PyTorch: `export_model` run again in a TensorFlow subprocess on the same
`.keras` file (Keras 3.15 exports ONNX and LiteRT only from TensorFlow). The subprocess is
`python -m wsss_keras.export '<export_model arguments as JSON>'` (`__main__.py`); its errors
come back as one marked stderr line and are raised here again as the same kind."""

import json
import os
import subprocess
import sys

from wsss_deploy.manifest import MANIFEST_FILE

from wsss_keras.errors import DataError, ModelError, WSSSError
from wsss_keras.export.errors import ExportCheckError, ExportError
from wsss_keras.export.formats import artifact_folder, check_request

ERROR_MARK = "wsss-export-error: "
ERROR_KINDS = {kind.__name__: kind for kind in (ExportError, ExportCheckError, ModelError, DataError, WSSSError)}


def export_in_subprocess(arguments, echo):
    """`export_model` in a fresh process on the TensorFlow backend (Keras exports from there);
    its lines are echoed, its errors re-raised here with their message."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    echo("[export] the model is exported from TensorFlow: running in a TensorFlow subprocess")
    process = subprocess.run([sys.executable, "-m", "wsss_keras.export", json.dumps(arguments)], env=env,
                             capture_output=True, text=True, check=False)
    for line in process.stdout.splitlines():
        if line.startswith("["):
            echo(line)
    if process.returncode != 0:
        lines = [line for line in process.stderr.splitlines() if line.strip()]
        marked = [line for line in lines if line.startswith(ERROR_MARK)]
        if not marked:
            raise ExportError("export subprocess failed:\n" + "\n".join(lines[-20:]))
        kind, message = marked[-1][len(ERROR_MARK):].split(": ", 1)
        raise ERROR_KINDS.get(kind, ExportError)(message)
    out, pairs = arguments["out"], check_request(arguments["formats"], arguments["precisions"])
    folders = [artifact_folder(out, pairs, fmt, precision) for fmt, precision in pairs]
    manifests = []
    for folder in folders:
        with open(os.path.join(folder, MANIFEST_FILE), encoding="utf-8") as handle:
            manifests.append(json.load(handle))
    return manifests
