"""The FastAPI application: endpoints, error answers, body limits and metrics.

    POST /v1/segment   an image (raw body or multipart field "image") -> PNG label map, or JSON
                       with per-class pixel counts (`?rle=true`: COCO RLE per class)
    POST /v1/cams      an image -> CAMs (.npy, or JSON peaks; `?full=true`: the maps), when the
                       model was exported with `--output cams`
    GET  /v1/model     the manifest and the server's limits
    GET  /healthz      the process is alive
    GET  /readyz       the model is loaded, warmed up and the batcher runs (503 otherwise)
    GET  /metrics      Prometheus text format
    GET  /docs         OpenAPI documentation (/openapi.json)
"""

import asyncio
import contextlib
import functools
import hmac
import logging
import time

import numpy as np

from wsss_deploy.serve.batching import DynamicBatcher, QueueFull
from wsss_deploy.label_maps import label_png
from wsss_deploy.serve.decoding import (ACCEPTED_CONTENT_TYPES, InputError, check_content_type, decode_opened,
                                        media_type, open_image)
from wsss_deploy.serve.encoding import JSON, NPY, PNG, cams_npy, cams_summary, label_summary, negotiate
from wsss_deploy.serve.memory import PixelBudget, trim_heap
from wsss_deploy.serve.metrics import ServerMetrics
from wsss_deploy.serve.settings import ServeSettings

log = logging.getLogger("wsss_deploy.serve")

# The scope key under which a request's pixel reservations are kept, so that GuardAndMeasure can
# give them back after the answer is sent, whatever happened on the way.
RESERVED_PIXELS = "wsss.reserved_pixels"
ENDPOINTS = ("/v1/segment", "/v1/cams", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image file: as the raw body (Content-Type image/jpeg, image/png, ...), or as the "
                       "'image' field of a multipart/form-data upload.",
        "content": {
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in ACCEPTED_CONTENT_TYPES},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary"}}, "required": ["image"]}},
        },
    }
}


def error_body(status, code, message):
    return {"error": {"status": int(status), "code": code, "message": message}}


class _BodyTooLarge(Exception):
    pass


class GuardAndMeasure:
    """Pure ASGI middleware: refuses bodies over the limit (by Content-Length at once, and by
    counting while the body streams in), records every request's status and latency, and gives
    the request's decoded pixels back to the budget once the answer is sent (then, after the
    last large request of a burst, the freed heap back to the system)."""

    def __init__(self, app, metrics, max_body_bytes, budget):
        self.app, self.metrics, self.max_body_bytes, self.budget = app, metrics, int(max_body_bytes), budget

    async def _send_error(self, send, status, code, message):
        from starlette.responses import JSONResponse

        response = JSONResponse(error_body(status, code, message), status_code=status)
        await response({"type": "http"}, None, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        reserved = scope[RESERVED_PIXELS] = []
        start = time.perf_counter()
        state = {"status": 500, "started": False, "received": 0}
        too_large = (f"the request body is larger than this server's limit of {self.max_body_bytes} bytes "
                     "(--max-body-mb); send a smaller (downscaled or compressed) image.")

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    raise _BodyTooLarge()
            return message

        async def recording_send(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                self.metrics.refused.labels(reason="body_too_large").inc()
                await self._send_error(recording_send, 413, "body_too_large", too_large)
                return
            try:
                await self.app(scope, counting_receive, recording_send)
            except _BodyTooLarge:
                self.metrics.refused.labels(reason="body_too_large").inc()
                if not state["started"]:
                    await self._send_error(recording_send, 413, "body_too_large", too_large)
        finally:
            self.metrics.observe_request(endpoint, state["status"], time.perf_counter() - start)
            if reserved:
                for pixels in reserved:
                    self.budget.release(pixels)
                self.metrics.pixels_in_flight.set(self.budget.in_use)
                if self.budget.should_trim():
                    await asyncio.get_running_loop().run_in_executor(None, trim_heap)


class ServerState:
    """The model, the batcher and the metrics of one worker."""

    def __init__(self, settings, segmenter=None):
        self.settings, self.segmenter = settings, segmenter
        self.metrics = ServerMetrics()
        self.budget = PixelBudget(settings.pixel_budget)
        self.batcher = None
        self.ready = False

    async def start(self):
        if self.segmenter is None:  # a worker process: load the model it serves
            self.segmenter = await asyncio.get_running_loop().run_in_executor(None, load_model, self.settings)
        self.batcher = DynamicBatcher(
            self.segmenter.run, max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000.0, max_queue=self.settings.max_queue,
            on_batch=self.metrics.observe_batch, on_queue=self.metrics.queue_depth.set,
        )
        await self.batcher.start()
        self.ready = True
        log.info("serving %s (%s) with %s", self.segmenter.path, self.segmenter.manifest["model"].get("name"),
                 self.segmenter.providers)

    def reserve_pixels(self, request, width, height):
        """Take the image's pixels from the budget until its answer is sent (GuardAndMeasure
        gives them back); 503 with Retry-After when they do not fit now."""
        pixels = int(width) * int(height)
        if not self.budget.reserve(pixels):
            retry = self.batcher.retry_after()
            raise InputError(503, "pixel_budget_full",
                             f"the server holds {self.budget.in_use} decoded pixels of other requests and takes at "
                             f"most {self.budget.limit} at once (--max-pixels-in-flight); this {width} x {height} "
                             f"image does not fit now. Retry after {retry} s, or send a smaller image.",
                             headers={"Retry-After": str(retry)})
        request.scope[RESERVED_PIXELS].append(pixels)
        self.metrics.pixels_in_flight.set(self.budget.in_use)

    async def stop(self):
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()

    @property
    def outputs(self):
        return set(self.segmenter.output_names) if self.segmenter is not None else set()


def load_model(settings):
    """The settings' model, checked against its manifest and run once (`warm_up`); errors are
    `ModelError`s naming the file and the fix."""
    from wsss_deploy.onnx_runner import ModelError, OnnxSegmenter

    # No CPU arena: it keeps for good the memory the largest batch ever needed (3.6 GB after
    # eight 4096 x 2048 images); without it a large batch's memory is freed after it.
    segmenter = OnnxSegmenter(settings.model_dir, provider=settings.provider, threads=settings.threads,
                              memory_arena=False)
    try:
        warm_up(segmenter)
    except Exception as error:  # onnxruntime's own exception types, or a shape the manifest contradicts
        raise ModelError(f"{segmenter.path}: the model loads but fails on a test image "
                         f"({str(error).strip()[:300]}); export it again.") from None
    return segmenter


def warm_up(segmenter):
    """One forward pass at the network size: the first request is not slow, and a graph that
    loads but cannot run is found before the server listens."""
    height, width = segmenter.network_size or (64, 64)
    outputs = segmenter.run(np.zeros((1, int(height), int(width), 3), np.uint8))
    for name, value in outputs.items():
        if value.shape[:3] != (1, int(height), int(width)):
            raise RuntimeError(f"{segmenter.path}: output {name!r} has shape {value.shape} for a 1 x {height} x "
                               f"{width} image; the graph does not follow the manifest. Export it again.")


def create_app(settings, segmenter=None):
    """The FastAPI app serving `settings.model_dir`, or `segmenter` when given (already loaded
    and checked: `load_model`'s).

    Example:
    >>> app = create_app(ServeSettings("exports/onnx_fp32"))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    problems = settings.validate()
    if problems:
        raise ValueError("; ".join(problems))
    state = ServerState(settings, segmenter)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await state.start()
        yield
        await state.stop()

    app = FastAPI(title="wsss-keras segmentation server", lifespan=lifespan,
                  description="Semantic segmentation with a model exported by `wsss export --format onnx`.")
    app.state.server = state
    app.add_middleware(GuardAndMeasure, metrics=state.metrics, max_body_bytes=settings.max_body_bytes,
                       budget=state.budget)

    @app.exception_handler(InputError)
    async def input_error(request, error):
        state.metrics.refused.labels(reason=error.code).inc()
        return JSONResponse(error_body(error.status, error.code, error.message), status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
        return JSONResponse(error_body(error.status_code, code, str(error.detail)), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return JSONResponse(error_body(422, "invalid_parameter", where), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request, error):
        log.exception("request to %s failed", request.url.path)
        return JSONResponse(error_body(500, "internal_error", f"the server failed on this request "
                                       f"({type(error).__name__}: {error}); see the server log."), status_code=500)

    def authorize(request):
        key = settings.api_key
        if not key:
            return
        given = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if given is None and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise InputError(401, "unauthorized", "this server needs an API key: send it in the X-API-Key header "
                             "(or Authorization: Bearer KEY).", headers={"WWW-Authenticate": "Bearer"})

    async def read_image(request):
        """The decoded image and conversion notes, from a raw body or a multipart upload; its
        pixels are reserved from the budget (from the header) before it is decoded."""
        kind = media_type(request.headers.get("content-type"))
        if kind == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=8)
            try:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    files = [value for value in form.values() if not isinstance(value, str)]
                    upload = files[0] if files else None
                if upload is None:
                    raise InputError(400, "no_file", "the multipart upload has no file; send the image as the "
                                     "'image' field (curl -F image=@photo.jpg).")
                check_content_type(upload.content_type or "application/octet-stream")
                data = await upload.read()
            finally:
                await form.close()
        else:
            check_content_type(kind)
            data = await request.body()
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(None, open_image, data, settings.max_pixels)
        state.reserve_pixels(request, *opened.size)
        return await loop.run_in_executor(None, decode_opened, opened, settings.max_pixels)

    async def infer(image, output):
        try:
            return await state.batcher.submit(image, [output])
        except QueueFull as full:
            raise InputError(503, "queue_full", f"the server is at capacity ({settings.max_queue} requests waiting); "
                             f"retry after {full.retry_after} s.", headers={"Retry-After": str(full.retry_after)})

    def require_output(name, endpoint, hint):
        if name not in state.outputs:
            raise InputError(404, "not_exported", f"{endpoint}: this model was exported with --output "
                             f"{state.segmenter.manifest.get('output')}, which has no {name!r} output; {hint}")

    async def image_request(request, endpoint, output, offered, query_format, hint):
        """What the image endpoints share: the key, the output check, the answer's type, the
        image and its batched inference; (media type, the output's array, response headers)."""
        authorize(request)
        require_output(output, endpoint, hint)
        media = negotiate(request.headers.get("accept"), query_format, offered)
        if media is None:
            names = {PNG: "png", JSON: "json", NPY: "npy"}
            raise InputError(406, "not_acceptable", f"{endpoint} answers {' or '.join(offered)}; ask for one in Accept "
                             f"or with ?format={'|'.join(names[m] for m in offered)}.")
        image, notes = await read_image(request)
        result = (await infer(image, output))[output]
        headers = {"X-Image-Size": f"{image.shape[1]}x{image.shape[0]}"}
        if notes:
            headers["X-Input-Conversion"] = "; ".join(notes)
        return media, result, headers

    @app.post("/v1/segment", openapi_extra=_IMAGE_BODY, responses={
        200: {"content": {PNG: {}, JSON: {}}, "description": "PNG label map (pixel = class index) or JSON summary"}})
    async def segment(request: Request, format: str | None = None, rle: bool = False):
        """Segment one image: a palette PNG whose pixel values are class indices (default), or JSON
        with each present class's pixel count (`Accept: application/json` or `?format=json`;
        `?rle=true` adds a COCO run-length encoding per class)."""
        media, labels, headers = await image_request(request, "/v1/segment", "labels", [PNG, JSON], format,
                                                     "export with --output logits or labels to segment.")
        if media == JSON:
            return JSONResponse(label_summary(labels, state.segmenter.classes, rle=rle), headers=headers)
        # zlib level 1: an answer is sent once, so encoding speed beats a few percent of size.
        body = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(label_png, labels, state.segmenter.palette, compress_level=1))
        return Response(body, media_type=PNG, headers=headers)

    @app.post("/v1/cams", openapi_extra=_IMAGE_BODY, responses={
        200: {"content": {NPY: {}, JSON: {}}, "description": "float32 (H, W, C) CAMs as .npy, or JSON"}})
    async def cams(request: Request, format: str | None = None, full: bool = False):
        """Class activation maps of one image, foreground classes in the manifest's order: a float32
        (H, W, C) .npy (default), or JSON with each class's peak (`?full=true` adds the maps)."""
        media, maps, headers = await image_request(request, "/v1/cams", "cams", [NPY, JSON], format,
                                                   "export with --output cams to serve CAMs.")
        if media == JSON:
            return JSONResponse(cams_summary(maps, state.segmenter.classes, full=full), headers=headers)
        return Response(cams_npy(maps), media_type=NPY, headers=headers)

    @app.get("/v1/model")
    async def model(request: Request):
        """The exported model's manifest (classes, palette, input, outputs, check figures) and the
        server's limits."""
        authorize(request)
        manifest = dict(state.segmenter.manifest)
        manifest["model"] = {k: v for k, v in manifest.get("model", {}).items() if k != "source"}
        limits = {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms,
                  "max_queue": settings.max_queue, "max_body_bytes": settings.max_body_bytes,
                  "max_pixels": settings.max_pixels, "max_pixels_in_flight": settings.pixel_budget,
                  "threads": settings.threads}
        return {"manifest": manifest, "server": {"providers": state.segmenter.providers, "limits": limits,
                                                 "endpoints": sorted(e for e in ENDPOINTS if e.startswith("/v1"))}}

    @app.get("/healthz")
    async def healthz():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Readiness: the model is loaded and warmed up, and the batcher runs."""
        if state.ready and state.batcher is not None and state.batcher.running:
            return {"status": "ready", "queue_depth": state.batcher.depth}
        return JSONResponse(error_body(503, "not_ready", "the model is loading or the server is stopping"),
                            status_code=503)

    @app.get("/metrics")
    async def metrics():
        """Prometheus metrics (text format)."""
        body, content_type = state.metrics.exposition()
        return Response(body, media_type=content_type)

    return app


def app_from_env():
    """The app for uvicorn worker processes: settings from WSSS_SERVE_SETTINGS (see `serve`)."""
    return create_app(ServeSettings.from_env())
