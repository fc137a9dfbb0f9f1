"""Test layout.

tests/*.py run once, in this process. tests/backend/ holds the backend-sensitive tests: Keras
fixes its backend at import, so tests/test_backends.py runs that folder once per backend
(TensorFlow, JAX, PyTorch) in a subprocess with KERAS_BACKEND set, and this file prints the
three results at the end of the run.
"""

import os

import pytest

INNER_SUITE_ENV = "WSSS_BACKEND_SUITE"

if os.environ.get(INNER_SUITE_ENV) != "1":
    collect_ignore = ["backend"]

BACKEND_SUMMARIES = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[BACKEND_SUMMARIES] = {}


def pytest_terminal_summary(terminalreporter, config):
    summaries = config.stash.get(BACKEND_SUMMARIES, {})
    if summaries:
        terminalreporter.section("backend suites (tests/backend, one subprocess per backend)")
        for backend, (line, *slowest) in summaries.items():
            terminalreporter.write_line(f"{backend:>10}: {line}")
            for duration in slowest:  # where the suite's time goes, for whoever shortens it next
                terminalreporter.write_line(f"{'':>12}{duration}")
