"""`python -m wsss_deploy.serve MODEL_DIR`: the server where only wsss_deploy is installed.

The options are `wsss serve`'s (see `wsss serve --help`); the API key comes from WSSS_API_KEY.
"""

import argparse
import sys

from wsss_deploy.serve.settings import PIXEL_BUDGET_IMAGES, ServeSettings


def main(argv=None):
    defaults = ServeSettings(model_dir="")
    parser = argparse.ArgumentParser(prog="python -m wsss_deploy.serve", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="export folder with model.onnx and manifest.json")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms)
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue)
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20)
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    parser.add_argument("--max-pixels-in-flight", type=int, default=None,
                        help="most decoded pixels held at once per worker, over all its requests (503 with "
                             f"Retry-After beyond it; default {PIXEL_BUDGET_IMAGES} x --max-pixels)")
    parser.add_argument("--provider", choices=("auto", "cpu", "cuda"), default=defaults.provider)
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime threads per worker (default: onnxruntime's with one worker, "
                             "else the usable cores / --workers)")
    args = parser.parse_args(argv)
    settings = ServeSettings.from_options(args.model_dir, args.max_batch_size, args.max_wait_ms, args.max_queue,
                                          args.max_body_mb, args.max_pixels, args.provider, args.threads,
                                          args.max_pixels_in_flight)
    from wsss_deploy.onnx_runner import ModelError
    from wsss_deploy.serve import serve

    try:
        serve(settings, args.host, args.port, args.workers)
    except (ModelError, ValueError) as error:  # preflight's: they name the file and the fix
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
