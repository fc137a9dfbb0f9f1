"""Keeping TensorFlow's native start-up messages off a user's terminal.

TensorFlow 2.21 logs its first lines (oneDNN notice, CUDA probing, a cuInit error on machines
without a GPU) before absl is initialised, so TF_CPP_MIN_LOG_LEVEL alone cannot hide them, and
both of its native libraries print them. `quiet_tensorflow_startup` filters what its native
code writes to file descriptor 2 during the first import. Imports nothing heavy.
"""

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

# TensorFlow's C++ start-up lines. Its first messages are logged before absl is initialised,
# which ignores TF_CPP_MIN_LOG_LEVEL, and each of its two native libraries prints them.
_ABSL_BANNER = "All log messages before absl::InitializeLog() is called are written to STDERR"
# absl's format: severity, MMDD, time (seconds unbounded before absl is initialised), thread, file:line.
_NATIVE_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] (.*)")
_SEVERITIES = "IWEF"  # TF_CPP_MIN_LOG_LEVEL 0..3 hides the ones below
# Error lines TensorFlow logs on every start of some machines, with nothing to act on: cuInit
# without a GPU, and CUDA plugins registered twice by its GPU builds.
_HARMLESS_ERRORS = (
    "failed call to cuInit",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
)


def quiet_tensorflow_startup(verbose=False):
    """Keep TensorFlow's start-up notices off stderr, unless asked for or configured by the user.

    Sets TF_CPP_MIN_LOG_LEVEL=2 when the user has not set it, and filters what TensorFlow's
    native code writes to stderr while it is imported (and while it first looks for GPUs) by
    that level, since its earliest messages ignore it. Lines that pass the level, and anything
    that is not TensorFlow's log format, are written back unchanged. A level the user set is
    applied as set (0 shows everything); the error lines TensorFlow logs on every start of
    some machines (cuInit without a GPU) are hidden only under the default.

    Args:
        verbose: leave everything as TensorFlow prints it (`wsss --verbose`).
    """
    if verbose or "tensorflow" in sys.modules:
        return
    user_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        min_level = min(max(int(os.environ["TF_CPP_MIN_LOG_LEVEL"]), 0), 3)
    except ValueError:
        min_level = 0
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport(min_level, hide_harmless_errors=user_level is None))


def _is_startup_noise(line, min_level, hide_harmless_errors):
    """Whether a native log line (absl's format) is below `min_level` or a harmless error."""
    severity, message = _NATIVE_LOG_LINE.match(line).groups()
    if hide_harmless_errors and any(text in message for text in _HARMLESS_ERRORS):
        return True
    return _SEVERITIES.index(severity) < min_level


@contextlib.contextmanager
def _filtered_native_stderr(min_level, hide_harmless_errors):
    """Capture file descriptor 2 (native code writes there directly) and write back what is not noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            captured = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = _without_startup_noise(captured, min_level, hide_harmless_errors)
            if kept:
                os.write(2, "".join(kept).encode("utf-8"))


def _without_startup_noise(lines, min_level, hide_harmless_errors):
    """The captured lines that stay: the absl banner and native log lines below `min_level`
    (with the continuation lines of a multi-line message) go; everything else is kept."""
    kept, in_dropped_message = [], False
    for line in lines:
        if _ABSL_BANNER in line:
            in_dropped_message = False
            if min_level > 0:
                continue
        elif _NATIVE_LOG_LINE.match(line):
            in_dropped_message = _is_startup_noise(line, min_level, hide_harmless_errors)
        if not in_dropped_message:
            kept.append(line)
    return kept


class _QuietTensorFlowImport:
    """A meta-path finder that runs TensorFlow's first import inside `_filtered_native_stderr`."""

    def __init__(self, min_level, hide_harmless_errors):
        self.min_level = min_level
        self.hide_harmless_errors = hide_harmless_errors
        self.searching = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self.searching:
            return None
        # Also answers look-ups that import nothing (is_available's find_spec), so it stays on
        # sys.meta_path until an import actually runs the package.
        self.searching = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            with _filtered_native_stderr(self.min_level, self.hide_harmless_errors):
                execute(module)
                # Looking for GPUs here logs the no-GPU cuInit error inside the filter; it neither
                # creates devices nor fixes any setting (memory growth, visible devices).
                with contextlib.suppress(Exception):  # a probe only: real use reports its own errors
                    module.config.list_physical_devices()

        spec.loader.exec_module = exec_module
        return spec
