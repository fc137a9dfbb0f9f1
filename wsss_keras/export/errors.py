"""The export's errors, and the one-line message of an error raised inside traced code."""

import re

from wsss_keras.errors import WSSSError


class ExportError(WSSSError):
    """The model cannot be exported as asked."""


class ExportCheckError(ExportError):
    """The artifact was written but its outputs part from the Keras model's."""


def first_lines(error, count=3):
    """The message of `error` in one line: for TensorFlow's traced-code errors, the raised
    error's own text rather than the traceback before it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Keras colours its messages
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [index for index, line in enumerate(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    if raised:
        lines = [re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", line) for line in lines[raised[-1]:]]
        lines = [line for line in lines if line and not line.startswith("Exception encountered")]
        cut = next((index for index, line in enumerate(lines) if line.startswith("Arguments received")), len(lines))
        lines = lines[:cut]
    return " ".join(lines[:count])[:600]
