"""The export's TensorFlow subprocess (`tf_subprocess`): `python -m wsss_keras.export
'<export_model arguments as JSON>'`."""

import json
import sys

from wsss_keras.errors import WSSSError
from wsss_keras.export.api import export_model
from wsss_keras.export.tf_subprocess import ERROR_MARK


def _main(argv):
    """The subprocess's entry: `python -m wsss_keras.export '<export_model arguments as JSON>'`."""
    try:
        export_model(**json.loads(argv[1]), echo=lambda line: print(line, flush=True))
    except WSSSError as error:
        print(f"{ERROR_MARK}{type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
