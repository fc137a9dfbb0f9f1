"""The server's settings: one dataclass, passed to worker processes through the environment."""

import dataclasses
import json
import os

SETTINGS_ENV = "WSSS_SERVE_SETTINGS"
API_KEY_ENV = "WSSS_API_KEY"
# The default in-flight pixel budget, in images of --max-pixels: four of the largest images may be
# decoded and in inference at once (measured with an identity-sized model: ~60 bytes of peak
# memory per pixel in flight, so ~2 GB at the default --max-pixels).
PIXEL_BUDGET_IMAGES = 4


@dataclasses.dataclass
class ServeSettings:
    """How `wsss serve` runs.

    Args:
        model_dir: the export folder holding model.onnx and manifest.json (or the .onnx file).
        max_batch_size: the most images in one onnxruntime call.
        max_wait_ms: how long a request may wait for others to fill its batch.
        max_queue: the most requests waiting per worker; more are answered 503 with Retry-After.
        max_body_bytes: the largest request body accepted (413 above it).
        max_pixels: the most pixels a decoded image may have (413 above it; checked before decoding).
        max_pixels_in_flight: the most decoded pixels, summed over the requests one worker holds
            (from decoding until the answer is sent); a request that would go over it is answered
            503 with Retry-After before its image is decoded. None: PIXEL_BUDGET_IMAGES x max_pixels.
        provider: onnxruntime provider, "auto" (CUDA when onnxruntime-gpu has it), "cpu" or "cuda".
        threads: onnxruntime intra-op threads per worker (None: with one worker onnxruntime's
            default, with N workers the usable cores shared out, `threads_per_worker`).
        api_key: when set, /v1/* requests must carry it in `X-API-Key` (or `Authorization: Bearer`).
            Given through the WSSS_API_KEY environment variable, so it never shows in `ps`.
    """

    model_dir: str
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 2048
    max_pixels_in_flight: int | None = None
    provider: str = "auto"
    threads: int | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)

    def validate(self):
        """A list of problems, each naming the setting and a fix; empty when all is well."""
        problems = []
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_pixels"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name.replace('_', '-')} is {getattr(self, name)}; it must be at least 1.")
        if self.max_wait_ms < 0:
            problems.append(f"max-wait-ms is {self.max_wait_ms}; it must be 0 or more.")
        if self.provider not in ("auto", "cpu", "cuda"):
            problems.append(f"provider is {self.provider!r}; choose auto, cpu or cuda.")
        if self.threads is not None and int(self.threads) < 1:
            problems.append(f"threads is {self.threads}; it must be at least 1 (or unset).")
        if self.max_pixels_in_flight is not None and int(self.max_pixels_in_flight) < int(self.max_pixels):
            problems.append(f"max-pixels-in-flight is {self.max_pixels_in_flight}, under max-pixels "
                            f"{self.max_pixels}, so the largest accepted image could never be served; raise it "
                            f"to at least {self.max_pixels} (or leave it unset: {PIXEL_BUDGET_IMAGES} x max-pixels).")
        return problems

    @property
    def pixel_budget(self):
        """The decoded pixels one worker may hold at once (`max_pixels_in_flight` or its default)."""
        if self.max_pixels_in_flight is not None:
            return int(self.max_pixels_in_flight)
        return PIXEL_BUDGET_IMAGES * int(self.max_pixels)

    def to_env(self):
        """The settings, minus the API key (which travels in WSSS_API_KEY), as a JSON string."""
        fields = dataclasses.asdict(self)
        fields.pop("api_key")
        return json.dumps(fields)

    @classmethod
    def from_options(cls, model_dir, max_batch_size, max_wait_ms, max_queue, max_body_mb, max_pixels, provider, threads,
                     max_pixels_in_flight=None):
        """The settings of the command-line options (`wsss serve`, `python -m wsss_deploy.serve`):
        the body limit in MiB, the API key from WSSS_API_KEY."""
        in_flight = None if max_pixels_in_flight is None else int(max_pixels_in_flight)
        return cls(model_dir, int(max_batch_size), float(max_wait_ms), int(max_queue), int(max_body_mb * 2**20),
                   int(max_pixels), in_flight, provider, threads, api_key=os.environ.get(API_KEY_ENV) or None)

    @classmethod
    def from_env(cls):
        text = os.environ.get(SETTINGS_ENV)
        if not text:
            raise RuntimeError(f"{SETTINGS_ENV} is not set; start the server with `wsss serve MODEL_DIR` "
                               "or `python -m wsss_deploy.serve MODEL_DIR`.")
        return cls(**json.loads(text), api_key=os.environ.get(API_KEY_ENV) or None)


def usable_cores():
    """The CPU cores this process may run on (its affinity mask, which containers and `taskset`
    narrow; `os.cpu_count()` counts the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_worker(workers, threads=None, cores=None):
    """onnxruntime threads for each of `workers` processes: `threads` when given; with one worker
    None (onnxruntime's own default, one per physical core); with several, the usable cores
    shared out, at least one each. onnxruntime's default in every worker would run workers x
    cores threads: on 2 cores, 2 workers were measured 2.7x slower than one."""
    if threads is not None:
        return int(threads)
    if int(workers) <= 1:
        return None
    return max(1, (cores or usable_cores()) // int(workers))
