"""`wsss serve`: the ONNX inference server (wsss_deploy.serve) on an export folder."""

import click
from wsss_deploy.serve.settings import PIXEL_BUDGET_IMAGES, ServeSettings

DEFAULTS = ServeSettings(model_dir="")  # one set of defaults for both ways of starting the server


@click.command("serve")
@click.argument("model_dir", type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(min=1), default=1,
              help="Worker processes, each with its own model copy and batcher.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=DEFAULTS.max_batch_size,
              help="Most images in one onnxruntime call.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=DEFAULTS.max_wait_ms,
              help="How long a request may wait for others to fill its batch.")
@click.option("--max-queue", type=click.IntRange(min=1), default=DEFAULTS.max_queue,
              help="Most requests waiting per worker; more are answered 503 with Retry-After.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.max_body_bytes / 2**20,
              help="Largest request body (413 above it).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULTS.max_pixels,
              help="Most pixels of a decoded image, checked before decoding (413 above it).")
@click.option("--max-pixels-in-flight", type=click.IntRange(min=1), default=None,
              show_default=f"{PIXEL_BUDGET_IMAGES} x --max-pixels",
              help="Most decoded pixels held at once per worker, summed over its requests; a request that would "
                   "go over it is answered 503 with Retry-After before its image is decoded.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default=DEFAULTS.provider,
              help="onnxruntime provider; auto uses CUDA when onnxruntime-gpu is installed.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              show_default="onnxruntime's with one worker, else the usable cores / --workers",
              help="onnxruntime threads per worker.")
def serve(model_dir, host, port, workers, max_batch_size, max_wait_ms, max_queue, max_body_mb, max_pixels,
          max_pixels_in_flight, provider, threads):
    """Serve MODEL_DIR (model.onnx and manifest.json from `wsss export --format onnx`) over HTTP.

    POST an image to /v1/segment for a PNG label map (or JSON with Accept: application/json);
    /docs lists every endpoint. Set WSSS_API_KEY to require that key in the X-API-Key header.
    The model is loaded and run once before the server listens; a missing, damaged or
    mismatched model stops it here. Needs `pip install "wsss-keras[serve]"`.
    """
    try:
        from wsss_deploy.onnx_runner import ModelError
        from wsss_deploy.serve import serve as run_server
    except ImportError as error:
        raise click.UsageError(f"the server needs its packages ({error}): pip install \"wsss-keras[serve]\"") from None
    settings = ServeSettings.from_options(model_dir, max_batch_size, max_wait_ms, max_queue, max_body_mb, max_pixels,
                                          provider, threads, max_pixels_in_flight)
    problems = settings.validate()
    if problems:
        raise click.UsageError("; ".join(problems))
    try:
        run_server(settings, host, port, workers)
    except ImportError as error:
        raise click.UsageError(f"the server needs its packages ({error}): pip install \"wsss-keras[serve]\"") from None
    except ModelError as error:
        raise click.BadParameter(str(error), param_hint="MODEL_DIR") from None


def register(cli):
    cli.add_command(serve)
