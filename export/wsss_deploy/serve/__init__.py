"""The ONNX inference server: FastAPI + uvicorn + onnxruntime, no Keras or TensorFlow.

    wsss serve exports/onnx_fp32 [--host 127.0.0.1] [--port 8000] [--workers N]
    python -m wsss_deploy.serve exports/onnx_fp32 ...      (the same, where wsss_keras is not installed)

Needs `pip install "wsss-keras[serve]"` (fastapi, uvicorn, python-multipart, prometheus-client,
onnxruntime; `[gpu]` adds onnxruntime-gpu). See `wsss_deploy.serve.app` for the endpoints.
"""

from wsss_deploy.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "preflight", "serve"]


def create_app(settings, segmenter=None):
    from wsss_deploy.serve.app import create_app as _create_app

    return _create_app(settings, segmenter)


def preflight(settings):
    """Check the settings, then load and run the model once, before any socket is opened;
    raises with a message naming the file and the fix when the model, its manifest or a
    setting is wrong. Returns the loaded model."""
    from wsss_deploy.serve.app import load_model

    problems = settings.validate()
    if problems:
        raise ValueError("; ".join(problems))
    return load_model(settings)


def serve(settings, host="127.0.0.1", port=8000, workers=1, log_level="info"):
    """Check the model (`preflight`), then run uvicorn with `workers` processes, each with
    `threads_per_worker` onnxruntime threads unless `settings.threads` says otherwise."""
    import dataclasses
    import os
    import tempfile

    import uvicorn

    from wsss_deploy.serve.settings import SETTINGS_ENV, threads_per_worker, usable_cores

    workers = int(workers)
    cores = usable_cores()
    settings = dataclasses.replace(settings, threads=threads_per_worker(workers, settings.threads, cores))
    if settings.threads is not None and workers * settings.threads > cores:
        print(f"[serve] warning: {workers} worker(s) x {settings.threads} thread(s) oversubscribe the {cores} usable "
              f"cores; leave --threads unset to share them out.", flush=True)
    segmenter = preflight(settings)
    options = dict(host=host, port=int(port), log_level=log_level, timeout_graceful_shutdown=10)
    if workers <= 1:  # serve in this process, with the model preflight loaded
        uvicorn.run(create_app(settings, segmenter), **options)
        return
    # Worker processes load their own model from the settings passed in the environment.
    os.environ[SETTINGS_ENV] = settings.to_env()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker is a process; prometheus_client sums their counters through this folder.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wsss-metrics-")
    uvicorn.run("wsss_deploy.serve.app:app_from_env", factory=True, workers=int(workers), **options)
