"""Run tests/backend/ under each Keras backend, each in its own process."""

import os
import subprocess
import sys

import pytest

from conftest import BACKEND_SUMMARIES, INNER_SUITE_ENV

BACKENDS = ("tensorflow", "jax", "torch")
SUITE = os.path.join(os.path.dirname(__file__), "backend")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_suite(backend, request):
    env = dict(os.environ, KERAS_BACKEND=backend, **{INNER_SUITE_ENV: "1"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra", SUITE]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=os.path.dirname(SUITE))
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    request.config.stash[BACKEND_SUMMARIES][backend] = lines[-1] if lines else "(no output)"
    assert result.returncode == 0, (
        f"tests/backend failed under KERAS_BACKEND={backend}:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    )
    assert " passed" in lines[-1] and "skipped" not in lines[-1], lines[-1]
