"""Run tests/backend/ under each Keras backend, each in its own process, the three at once.

The suites spend much of their time in one thread (tracing, XLA compiles, Python), so on a
2-core machine the three run together in about the time of the longest instead of the sum.
Each gets one compute thread (unless the environment already sets it), so three processes do
not fight over two cores with their thread pools.
"""

import os
import subprocess
import sys

import pytest

from conftest import BACKEND_SUMMARIES, INNER_SUITE_ENV

BACKENDS = ("tensorflow", "jax", "torch")
SUITE = os.path.join(os.path.dirname(__file__), "backend")
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",  # PyTorch, oneDNN
    "TF_NUM_INTRAOP_THREADS": "1",
    # (Not --xla_backend_optimization_level=0: it cut test_amr.py from 112 s to 87 s, but seven
    # JAX tests then trained to NaN.)
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
}


def suite_environment(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, **{INNER_SUITE_ENV: "1"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, value in ONE_THREAD.items():
        env.setdefault(name, value)
    return env


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """{backend: (process, log path)}, all started before the first test waits on one."""
    logs = tmp_path_factory.mktemp("backend_suites")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra", "--durations=15", SUITE]
    running, handles = {}, []
    try:
        for backend in BACKENDS:
            path = logs / f"{backend}.log"
            handles.append(open(path, "w", encoding="utf-8"))
            process = subprocess.Popen(command, env=suite_environment(backend), stdout=handles[-1],
                                       stderr=subprocess.STDOUT, text=True, cwd=SUITE)
            running[backend] = (process, path)
        yield running
    finally:
        for process, _ in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in handles:
            handle.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_suite(backend, suites, request):
    process, path = suites[backend]
    returncode = process.wait()
    output = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in output.strip().splitlines() if line.strip()]
    slowest = [line for line in lines if line.split("s ", 1)[0].replace(".", "").isdigit()][:5]
    request.config.stash[BACKEND_SUMMARIES][backend] = [lines[-1] if lines else "(no output)", *slowest]
    assert returncode == 0, f"tests/backend failed under KERAS_BACKEND={backend}:\n{output[-25000:]}"
    assert " passed" in lines[-1] and "skipped" not in lines[-1], lines[-1]
