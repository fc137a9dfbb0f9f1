"""The ONNX inference server, started for real (uvicorn on 127.0.0.1) and called over HTTP.

Most tests serve the tiny "colour" ONNX model of tests/onnx_models.py, whose masks are known by
hand; `test_serves_a_wsss_export` in test_export_deploy.py serves a model `wsss export` wrote.
"""

import contextlib
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner
from PIL import Image

from onnx_models import CLASSES, expected_labels, write_colour_model
from wsss_deploy.serve import ServeSettings, create_app

DEPLOY_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export")


# Serving and calling ------------------------------------------------------------------------
@contextlib.contextmanager
def running_server(settings, segmenter=None):
    """uvicorn serving `create_app(settings)` on a free loopback port, in a thread; yields the URL."""
    import uvicorn

    config = uvicorn.Config(create_app(settings, segmenter), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def call(url, data=None, headers=None, method=None):
    """(status, headers, body bytes) of one HTTP request; errors are answers too."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def encode(array, fmt="PNG", **save):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def multipart(field, filename, data, content_type):
    boundary = "wsss-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_labels(body):
    image = Image.open(io.BytesIO(body))
    assert image.mode == "P"
    return np.asarray(image)


def metric(text, name, **labels):
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == str(v) for k, v in labels.items()):
                return float(match.group(3))
    return 0.0


def scene(height, width, seed=0):
    """An RGB image with red, green and background regions (and noise)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
    image[: height // 2, : width // 2, 0] = rng.integers(150, 256, (height // 2, width // 2))
    image[height // 2:, width // 3:, 1] = rng.integers(150, 256, (height - height // 2, width - width // 3))
    return image


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    return write_colour_model(tmp_path_factory.mktemp("colour") / "onnx_fp32")


@pytest.fixture(scope="module")
def server(colour_model):
    settings = ServeSettings(colour_model, max_batch_size=8, max_wait_ms=30, max_queue=64,
                             max_body_bytes=300_000, max_pixels=250_000)
    with running_server(settings) as url:
        yield url


# Correct answers ----------------------------------------------------------------------------
def test_segment_equals_onnxruntime_called_directly(server, colour_model):
    session = onnxruntime.InferenceSession(os.path.join(colour_model, "model.onnx"))
    for index, (height, width) in enumerate([(32, 32), (61, 97), (200, 150)]):
        image = scene(height, width, seed=index)
        direct = session.run(["labels"], {"image": image[None]})[0][0]
        np.testing.assert_array_equal(direct, expected_labels(image))
        status, headers, body = call(f"{server}/v1/segment", encode(image), {"Content-Type": "image/png"})
        assert status == 200 and headers["Content-Type"] == "image/png", body[:300]
        np.testing.assert_array_equal(png_labels(body), direct)
        assert headers["X-Image-Size"] == f"{width}x{height}"
        palette = Image.open(io.BytesIO(body)).getpalette()[:9]
        assert palette == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    # A JPEG, as multipart: the server decodes it as Pillow does.
    jpeg = encode(scene(48, 64, seed=7), "JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    body, headers = multipart("image", "photo.jpg", jpeg, "image/jpeg")
    status, _, answer = call(f"{server}/v1/segment", body, headers)
    assert status == 200
    np.testing.assert_array_equal(png_labels(answer), session.run(["labels"], {"image": decoded[None]})[0][0])


def test_segment_json_counts_and_rle(server):
    from pycocotools import mask as mask_utils

    image = scene(40, 50, seed=3)
    labels = expected_labels(image)
    status, headers, body = call(f"{server}/v1/segment?rle=true", encode(image),
                                 {"Content-Type": "image/png", "Accept": "application/json"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert (answer["height"], answer["width"]) == (40, 50)
    counts = np.bincount(labels.ravel(), minlength=3)
    assert {c["name"]: c["pixels"] for c in answer["classes"]} == {CLASSES[i]: int(n) for i, n in enumerate(counts) if n}
    for entry in answer["classes"]:
        decoded = mask_utils.decode(mask_utils.frPyObjects(entry["rle"], 40, 50))
        np.testing.assert_array_equal(decoded.astype(bool), labels == entry["index"])
    # ?format= wins over Accept.
    status, headers, _ = call(f"{server}/v1/segment?format=png", encode(image),
                              {"Content-Type": "image/png", "Accept": "application/json"})
    assert status == 200 and headers["Content-Type"] == "image/png"


def test_concurrent_requests_are_batched_and_answered_individually(colour_model):
    settings = ServeSettings(colour_model, max_batch_size=8, max_wait_ms=200, max_queue=64)
    images = [scene(24 + 8 * (i % 2), 40, seed=i) for i in range(16)]  # two sizes, never in one batch
    answers = [None] * len(images)
    with running_server(settings) as url:
        def send(index):
            answers[index] = call(f"{url}/v1/segment", encode(images[index]), {"Content-Type": "image/png"})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        _, _, text = call(f"{url}/metrics")
    text = text.decode()
    for image, (status, _, body) in zip(images, answers):
        assert status == 200
        np.testing.assert_array_equal(png_labels(body), expected_labels(image))
    batches = metric(text, "wsss_batch_size_count")
    assert metric(text, "wsss_batch_size_sum") == 16  # every image ran exactly once
    assert 2 <= batches < 16, f"{batches} batches for 16 concurrent requests: no batching happened"
    assert metric(text, "wsss_requests_total", endpoint="/v1/segment", status="200") == 16


# Bad input ---------------------------------------------------------------------------------
def png_with_header(width, height):
    """A PNG that declares width x height 1-bit pixels and holds almost no data (a bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def exif_rotated_png(image):
    """`image` saved with EXIF orientation 6 (viewers rotate it 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "PNG", exif=exif.tobytes())


def test_bad_inputs_get_clear_4xx_answers_and_the_server_lives(server):
    noisy = np.random.default_rng(0).integers(0, 256, (120, 160, 3)).astype(np.uint8)
    jpeg, png = encode(noisy, "JPEG", quality=95), encode(noisy)
    gray16 = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    ico = io.BytesIO()
    Image.fromarray(noisy[:32, :32]).save(ico, format="ICO")
    floats = io.BytesIO()
    Image.fromarray(np.ones((8, 8), np.float32)).save(floats, format="TIFF")
    empty_form = b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--b--\r\n"
    cases = [  # (what, body, headers, status, code)
        ("not an image type", b"hello", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("no content type", b"hello", {}, 415, "unsupported_media_type"),
        ("empty body", b"", {"Content-Type": "image/png"}, 400, "empty_body"),
        ("garbage", os.urandom(2000), {"Content-Type": "image/png"}, 415, "unreadable_image"),
        ("truncated JPEG", jpeg[: len(jpeg) // 2], {"Content-Type": "image/jpeg"}, 400, "corrupt_image"),
        ("truncated PNG", png[: len(png) // 2], {"Content-Type": "image/png"}, 400, "corrupt_image"),
        ("body over the limit", os.urandom(400_000), {"Content-Type": "image/png"}, 413, "body_too_large"),
        ("too many pixels", encode(np.zeros((600, 600), np.uint8)), {"Content-Type": "image/png"}, 413,
         "too_many_pixels"),
        ("decompression bomb", png_with_header(60_000, 60_000), {"Content-Type": "image/png"}, 413, "too_many_pixels"),
        ("unsupported format", ico.getvalue(), {"Content-Type": "application/octet-stream"}, 415,
         "unsupported_format"),
        ("floating-point image", floats.getvalue(), {"Content-Type": "image/tiff"}, 415, "unsupported_mode"),
        ("multipart without a file", empty_form, {"Content-Type": "multipart/form-data; boundary=b"}, 400, "no_file"),
        ("unacceptable answer type", png, {"Content-Type": "image/png", "Accept": "text/html"}, 406, "not_acceptable"),
    ]
    for what, body, headers, status, code in cases:
        got, _, answer = call(f"{server}/v1/segment", body, headers, method="POST")
        error = json.loads(answer)["error"]
        assert (got, error["code"]) == (status, code), f"{what}: {got} {error}"
        assert error["status"] == status and len(error["message"]) > 20, what
    # A body streamed without Content-Length is counted as it arrives.
    got, _, answer = call(f"{server}/v1/segment", iter([os.urandom(100_000)] * 4), {"Content-Type": "image/png"},
                          method="POST")
    assert got == 413 and json.loads(answer)["error"]["code"] == "body_too_large"
    got, _, answer = call(f"{server}/v1/segment?rle=perhaps", png, {"Content-Type": "image/png"})
    assert got == 422 and json.loads(answer)["error"]["code"] == "invalid_parameter"

    # Converted, with a note saying how.
    rgba = np.dstack([scene(20, 30), np.full((20, 30), 7, np.uint8)])
    converted = [
        (encode(rgba), rgba[..., :3], "RGBA -> RGB (alpha ignored)"),
        (encode(scene(20, 30)[..., 0]), np.repeat(scene(20, 30)[..., :1], 3, -1), "grayscale -> RGB"),
        (encode(gray16), np.repeat(np.round(gray16 / 257.0).astype(np.uint8)[..., None], 3, -1), "16-bit grayscale"),
    ]
    for body, rgb, note in converted:
        got, headers, answer = call(f"{server}/v1/segment", body, {"Content-Type": "image/png"})
        assert got == 200 and note in headers["X-Input-Conversion"], (got, answer[:200])
        np.testing.assert_array_equal(png_labels(answer), expected_labels(rgb))
    # EXIF orientation honoured: the mask is of the upright image.
    image = scene(20, 40)
    got, headers, answer = call(f"{server}/v1/segment", exif_rotated_png(image), {"Content-Type": "image/png"})
    assert got == 200 and headers["X-Image-Size"] == "20x40"
    np.testing.assert_array_equal(png_labels(answer), expected_labels(np.rot90(image, k=-1)))

    assert call(f"{server}/healthz")[0] == 200
    _, _, text = call(f"{server}/metrics")
    text = text.decode()
    assert metric(text, "wsss_requests_total", endpoint="/v1/segment", status="415") >= 5
    assert metric(text, "wsss_refused_inputs_total", reason="body_too_large") >= 2
    assert metric(text, "wsss_refused_inputs_total", reason="too_many_pixels") >= 2


class SlowSegmenter:
    """An OnnxSegmenter whose batches take `seconds` longer (to fill the queue)."""

    def __init__(self, inner, seconds):
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, images, outputs=None):
        time.sleep(self.seconds)
        return self.inner.run(images, outputs)


def test_full_queue_answers_503_with_retry_after(colour_model):
    from wsss_deploy.onnx_runner import OnnxSegmenter

    settings = ServeSettings(colour_model, max_batch_size=1, max_wait_ms=0, max_queue=2)
    image = scene(16, 16)
    answers = []
    with running_server(settings, SlowSegmenter(OnnxSegmenter(colour_model), 0.4)) as url:
        def send():
            answers.append(call(f"{url}/v1/segment", encode(image), {"Content-Type": "image/png"}))

        threads = [threading.Thread(target=send) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        _, _, text = call(f"{url}/metrics")
    statuses = sorted(status for status, _, _ in answers)
    refused = [(headers, body) for status, headers, body in answers if status == 503]
    assert 1 <= statuses.count(200) <= 4 and len(refused) == 10 - statuses.count(200), statuses
    for headers, body in refused:
        assert int(headers["Retry-After"]) >= 1 and json.loads(body)["error"]["code"] == "queue_full"
    for status, _, body in answers:
        if status == 200:
            np.testing.assert_array_equal(png_labels(body), expected_labels(image))
    text = text.decode()
    assert metric(text, "wsss_requests_total", endpoint="/v1/segment", status="503") == len(refused)
    assert metric(text, "wsss_refused_inputs_total", reason="queue_full") == len(refused)


class GatedSegmenter:
    """An OnnxSegmenter whose batches wait until `gate` is set, so that admitted requests stay in
    flight for as long as the test needs (bounded: 60 s at most)."""

    def __init__(self, inner, gate):
        self.inner, self.gate = inner, gate

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, images, outputs=None):
        self.gate.wait(60)
        return self.inner.run(images, outputs)


def test_pixel_budget_answers_503_with_retry_after_beyond_it(colour_model):
    """Five 1024 x 1024 images and four 64 x 64 ones at once, with room for two large and the
    small ones: while the admitted requests are held, the other three large ones are refused
    (503, Retry-After); once the held ones are answered the budget is free again."""
    from wsss_deploy.onnx_runner import OnnxSegmenter

    big, small = 1024 * 1024, 64 * 64
    settings = ServeSettings(colour_model, max_batch_size=8, max_wait_ms=0, max_queue=64,
                             max_body_bytes=20 * 2**20, max_pixels=big, max_pixels_in_flight=2 * big + 4 * small)
    big_images = [scene(1024, 1024, seed=i) for i in range(5)]
    small_images = [scene(64, 64, seed=10 + i) for i in range(4)]
    bodies = [encode(image) for image in big_images + small_images]
    answers = [None] * len(bodies)
    refused = threading.Semaphore(0)
    gate = threading.Event()
    with running_server(settings, GatedSegmenter(OnnxSegmenter(colour_model), gate)) as url:
        def send(index):
            answers[index] = call(f"{url}/v1/segment", bodies[index], {"Content-Type": "image/png"})
            if answers[index][0] == 503:
                refused.release()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        # The refusals come while the admitted requests wait at the gate (30 s at most in all).
        deadline, refusals = time.monotonic() + 30, 0
        while refusals < 3 and refused.acquire(timeout=max(deadline - time.monotonic(), 0)):
            refusals += 1
        gate.set()
        for thread in threads:
            thread.join(60)
        text = call(f"{url}/metrics")[2].decode()
        # Everything was given back: a large image is served again.
        status, _, body = call(f"{url}/v1/segment", bodies[0], {"Content-Type": "image/png"})
        assert status == 200
    assert refusals == 3, [answer and answer[0] for answer in answers]
    statuses = [status for status, _, _ in answers]
    assert sorted(statuses[:5]) == [200, 200, 503, 503, 503] and statuses[5:] == [200] * 4, statuses
    for image, (status, headers, body) in zip(big_images + small_images, answers):
        if status == 200:
            np.testing.assert_array_equal(png_labels(body), expected_labels(image))
        else:
            error = json.loads(body)["error"]
            assert error["code"] == "pixel_budget_full" and "--max-pixels-in-flight" in error["message"]
            assert "1024 x 1024" in error["message"] and int(headers["Retry-After"]) >= 1
    assert metric(text, "wsss_refused_inputs_total", reason="pixel_budget_full") == 3
    assert metric(text, "wsss_pixels_in_flight") == 0


def test_batcher_keeps_no_image_or_batch_output_after_answering():
    """After its answer, nothing in the batcher holds a request's image (the idle loop used to keep
    the last batch), and each answer is its own copy rather than a view keeping the whole batch's
    output alive."""
    import asyncio
    import gc
    import weakref

    from wsss_deploy.serve.batching import DynamicBatcher

    returned = []

    def run_batch(images, outputs):
        returned.append({"labels": images[..., 0] // 2})
        return returned[-1]

    async def scenario():
        batcher = DynamicBatcher(run_batch, max_batch_size=4, max_wait_s=0.01)
        await batcher.start()
        images = [np.full((8, 8, 3), 10 * (i + 1), np.uint8) for i in range(3)]
        refs = [weakref.ref(image) for image in images]
        answers = await asyncio.gather(*(batcher.submit(image, ["labels"]) for image in images))
        del images
        await asyncio.sleep(0.05)  # the loop is idle again, waiting for the next request
        gc.collect()
        alive = [ref() is not None for ref in refs]
        await batcher.stop()
        return answers, alive

    answers, alive = asyncio.run(scenario())
    assert alive == [False, False, False]
    assert len(returned) == 1  # one batch of three
    for index, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["labels"], np.full((8, 8), 5 * (index + 1)))
        assert not np.shares_memory(answer["labels"], returned[0]["labels"])


def test_a_lone_clients_requests_run_at_once_and_busy_ones_wait_for_company():
    """A request that finds the batcher idle runs without waiting for others (one client's
    sequential requests would otherwise each pay max_wait); requests that arrive while a batch
    runs still wait and go as one batch."""
    import asyncio
    import threading as threads

    from wsss_deploy.serve.batching import DynamicBatcher

    sizes, started, gate = [], threads.Event(), threads.Event()

    def run_batch(images, outputs):
        if len(sizes) == 3:  # the fourth batch holds the executor until the test opens the gate
            started.set()
            gate.wait(30)
        sizes.append(len(images))
        return {"labels": images[..., 0]}

    async def scenario():
        # A wait far beyond the test's patience: a lone request that waited would time out.
        batcher = DynamicBatcher(run_batch, max_batch_size=4, max_wait_s=60.0)
        await batcher.start()
        image = np.zeros((4, 4, 3), np.uint8)
        for _ in range(3):
            await asyncio.wait_for(batcher.submit(image, ["labels"]), 10)
        batcher.max_wait_s = 0.2
        first = asyncio.ensure_future(batcher.submit(image, ["labels"]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)  # first is running
        busy = [asyncio.ensure_future(batcher.submit(image, ["labels"])) for _ in range(2)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *busy), 10)
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [1, 1, 1, 1, 2]


def statuses_of_concurrent_calls(url, body, content_type, count):
    """The HTTP statuses of `count` identical POSTs sent at once, in the order they came back."""
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(call(url, body, {"Content-Type": content_type})[0]))
               for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def resident_mb(pid="self"):
    """A process's resident memory (VmRSS) in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# The server under a memory test runs in a process of its own: in the test process, heap left free
# by earlier tests would absorb the burst and hide what the server keeps.
SERVER_PROCESS = textwrap.dedent("""
    import sys, threading, time
    import uvicorn
    from wsss_deploy.serve import ServeSettings, create_app

    settings = ServeSettings(sys.argv[1], max_batch_size=8, max_wait_ms=20, max_body_bytes=20 * 2**20,
                             max_pixels=int(sys.argv[2]))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
    server.should_exit = True
    thread.join(15)
""")


@contextlib.contextmanager
def server_process(model, max_pixels):
    """`SERVER_PROCESS` serving `model`; yields (URL, pid)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [DEPLOY_ROOT, os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-c", SERVER_PROCESS, model, str(max_pixels)], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"the server process did not start (exit code {process.poll()})"
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Within this much of its value before two bursts of large requests, the server process is back
# where it was. Measured (4 x 2048 x 2048 JPEGs per burst through the colour model, the process
# warmed with one such image; the burst itself takes 650-700 MB): 0-190 MB kept with the fix; with
# onnxruntime's arena on, 540-780 MB kept. Without the heap trim, but with the arena off, 120-260
# MB, too close to the fix's spread for a bound to tell apart: `test_heap_is_trimmed_once_a_burst_
# of_large_requests_is_over` checks the trim itself.
RSS_BOUND_MB = 300


def test_memory_is_given_back_after_a_burst_of_large_images(colour_model):
    size = 2048
    jpeg = encode(scene(size, size), "JPEG", quality=90)
    # --max-pixels of one such image; the default budget lets four of them be in flight at once.
    with server_process(colour_model, max_pixels=size * size) as (url, pid):
        # One large image first: what the first one allocates for good (the session's buffers for
        # that size) belongs in the baseline, not in what a burst keeps.
        assert call(f"{url}/v1/segment", jpeg, {"Content-Type": "image/jpeg"})[0] == 200
        before = resident_mb(pid)
        peak = [before]
        for _ in range(2):  # two bursts: memory kept by the first would show after the second
            done = threading.Event()

            def watch():
                while not done.wait(0.01):
                    peak[0] = max(peak[0], resident_mb(pid))

            watcher = threading.Thread(target=watch)
            watcher.start()
            statuses = statuses_of_concurrent_calls(f"{url}/v1/segment", jpeg, "image/jpeg", 4)
            done.set()
            watcher.join()
            assert statuses == [200] * 4, statuses
        # The heap is trimmed just after the last answer; give it a moment (bounded).
        deadline = time.monotonic() + 10
        while resident_mb(pid) > before + RSS_BOUND_MB and time.monotonic() < deadline:
            time.sleep(0.1)
        after = resident_mb(pid)
    assert peak[0] - before > RSS_BOUND_MB, f"the burst took only {peak[0] - before:.0f} MB; the test tests nothing"
    assert after <= before + RSS_BOUND_MB, (f"resident memory {before:.0f} MB before the bursts, {peak[0]:.0f} MB at "
                                            f"the peak, {after:.0f} MB after")


def test_heap_is_trimmed_once_a_burst_of_large_requests_is_over(colour_model, monkeypatch):
    import wsss_deploy.serve.app as app_module
    from wsss_deploy.serve.memory import LARGE_PIXELS

    trims = []
    monkeypatch.setattr(app_module, "trim_heap", lambda: trims.append(time.monotonic()))
    side = 1024  # two of these pass LARGE_PIXELS (2**21), one does not
    assert side * side < LARGE_PIXELS <= 2 * side * side
    large, small = encode(scene(side, side)), encode(scene(32, 32))
    settings = ServeSettings(colour_model, max_batch_size=8, max_wait_ms=20, max_body_bytes=20 * 2**20,
                             max_pixels=side * side)
    with running_server(settings) as url:
        for _ in range(20):
            assert call(f"{url}/v1/segment", small, {"Content-Type": "image/png"})[0] == 200
        assert trims == [], "small requests trimmed the heap"
        assert call(f"{url}/v1/segment", large, {"Content-Type": "image/png"})[0] == 200
        assert trims == [], "trimmed after less than LARGE_PIXELS"
        statuses = statuses_of_concurrent_calls(f"{url}/v1/segment", large, "image/png", 3)
        assert statuses == [200] * 3, statuses
        # Four large images since the start: one trim, once nothing was in flight any more (just
        # after the last answer went out, so possibly after the client has it).
        deadline = time.monotonic() + 10
        while not trims and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(trims) == 1, trims
        assert call(f"{url}/v1/segment", small, {"Content-Type": "image/png"})[0] == 200
        assert len(trims) == 1, "a small request after the burst trimmed again"


def test_pixel_budget_setting_is_checked_and_documented(colour_model):
    from wsss_keras.cli import cli

    assert ServeSettings(colour_model, max_pixels=1000).pixel_budget == 4000
    problems = ServeSettings(colour_model, max_pixels=1000, max_pixels_in_flight=999).validate()
    assert len(problems) == 1 and "max-pixels-in-flight is 999" in problems[0] and "at least 1000" in problems[0]
    result = CliRunner().invoke(cli, ["serve", "--help"])
    text = " ".join(result.output.split())
    assert "--max-pixels-in-flight" in text and "4 x --max-pixels" in text
    result = CliRunner().invoke(cli, ["serve", colour_model, "--max-pixels", "1000", "--max-pixels-in-flight", "999",
                                      "--port", "1"])
    assert result.exit_code == 2 and "max-pixels-in-flight is 999" in result.output


# The other endpoints ------------------------------------------------------------------------
def test_model_health_ready_docs_and_auth(colour_model, monkeypatch):
    settings = ServeSettings(colour_model, api_key="s3cret")
    with running_server(settings) as url:
        png = encode(scene(16, 16))
        assert call(f"{url}/v1/segment", png, {"Content-Type": "image/png"})[0] == 401
        assert call(f"{url}/v1/segment", png, {"Content-Type": "image/png", "X-API-Key": "wrong"})[0] == 401
        assert call(f"{url}/v1/segment", png, {"Content-Type": "image/png", "X-API-Key": "s3cret"})[0] == 200
        assert call(f"{url}/v1/segment", png, {"Content-Type": "image/png", "Authorization": "Bearer s3cret"})[0] == 200
        status, _, body = call(f"{url}/v1/model", headers={"X-API-Key": "s3cret"})
        model = json.loads(body)
        assert status == 200 and model["manifest"]["classes"] == CLASSES and "source" not in model["manifest"]["model"]
        assert model["server"]["limits"]["max_batch_size"] == settings.max_batch_size
        assert json.loads(call(f"{url}/healthz")[2]) == {"status": "ok"}
        assert json.loads(call(f"{url}/readyz")[2])["status"] == "ready"
        spec = json.loads(call(f"{url}/openapi.json")[2])
        assert "image/png" in spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
        assert call(f"{url}/docs")[0] == 200
        status, _, body = call(f"{url}/nowhere")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        status, _, body = call(f"{url}/v1/cams", png, {"Content-Type": "image/png", "X-API-Key": "s3cret"})
        assert status == 404 and "--output cams" in json.loads(body)["error"]["message"]


def test_cams_endpoint(tmp_path):
    folder = write_colour_model(tmp_path / "cams", output="cams")
    session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"))
    image = scene(30, 20)
    direct = session.run(None, {"image": image[None]})[0][0]
    with running_server(ServeSettings(folder)) as url:
        status, headers, body = call(f"{url}/v1/cams", encode(image), {"Content-Type": "image/png"})
        assert status == 200 and headers["Content-Type"] == "application/x-npy"
        np.testing.assert_allclose(np.load(io.BytesIO(body)), direct, rtol=0, atol=1e-6)
        status, _, body = call(f"{url}/v1/cams?format=json&full=true", encode(image), {"Content-Type": "image/png"})
        answer = json.loads(body)
        assert [c["name"] for c in answer["classes"]] == CLASSES[1:]
        assert answer["classes"][0]["peak"] == pytest.approx(float(direct[..., 0].max()), abs=1e-5)
        np.testing.assert_allclose(np.array(answer["cams"]), direct, atol=1e-4)
        status, _, body = call(f"{url}/v1/segment", encode(image), {"Content-Type": "image/png"})
        assert status == 404 and json.loads(body)["error"]["code"] == "not_exported"


# Start-up -----------------------------------------------------------------------------------
def test_start_up_refuses_bad_models_before_listening(tmp_path, colour_model):
    from wsss_keras.cli import cli

    def serve(folder):
        return CliRunner().invoke(cli, ["serve", str(folder), "--port", "1"])  # port 1: never reached

    empty = tmp_path / "empty"
    empty.mkdir()
    result = serve(empty)
    assert result.exit_code == 2 and "model.onnx" in result.output and "no such file" in result.output

    def copy_model(name):
        folder = tmp_path / name
        folder.mkdir()
        for file in ("model.onnx", "manifest.json"):
            (folder / file).write_bytes(open(os.path.join(colour_model, file), "rb").read())
        return folder

    no_manifest = copy_model("no_manifest")
    (no_manifest / "manifest.json").unlink()
    assert "keep the manifest.json" in serve(no_manifest).output

    replaced = copy_model("replaced")
    write_colour_model(tmp_path / "other", output="labels")
    (replaced / "model.onnx").write_bytes((tmp_path / "other" / "model.onnx").read_bytes())
    assert "SHA-256 is not the one in manifest.json" in serve(replaced).output

    corrupt = copy_model("corrupt")
    (corrupt / "model.onnx").write_bytes(b"not an onnx model")
    manifest = json.loads((corrupt / "manifest.json").read_text())
    manifest["artifact"]["sha256"] = __import__("hashlib").sha256(b"not an onnx model").hexdigest()
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    assert "onnxruntime cannot load it" in serve(corrupt).output

    mismatched = copy_model("mismatched")
    manifest = json.loads((mismatched / "manifest.json").read_text())
    manifest["outputs"] = [{"name": "cams"}]
    (mismatched / "manifest.json").write_text(json.dumps(manifest))
    result = serve(mismatched)
    assert result.exit_code == 2 and "do not belong together" in result.output

    bad_json = copy_model("bad_json")
    (bad_json / "manifest.json").write_text("{not json")
    assert "not a readable manifest" in serve(bad_json).output


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_python_m_server_with_two_workers_imports_no_keras(colour_model):
    """`python -m wsss_deploy.serve` in a process where importing Keras, TensorFlow or wsss_keras
    fails, with two workers whose metrics /metrics sums; SIGTERM stops it."""
    port = free_port()
    code = textwrap.dedent(f"""
        import sys
        for name in ("keras", "tensorflow", "jax", "torch", "wsss_keras"):
            sys.modules[name] = None  # importing them now raises ImportError
        from wsss_deploy.serve.__main__ import main
        sys.exit(main([{colour_model!r}, "--port", "{port}", "--workers", "2", "--max-wait-ms", "0",
                       "--max-pixels-in-flight", "9000000"]))
    """)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")}
    env["PYTHONPATH"] = DEPLOY_ROOT
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if call(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        image = scene(24, 24)
        for _ in range(6):
            status, _, body = call(f"{url}/v1/segment", encode(image), {"Content-Type": "image/png"})
            assert status == 200
            np.testing.assert_array_equal(png_labels(body), expected_labels(image))
        text = call(f"{url}/metrics")[2].decode()
        assert metric(text, "wsss_requests_total", endpoint="/v1/segment", status="200") == 6
        assert metric(text, "wsss_batch_size_sum") == 6
        limits = json.loads(call(f"{url}/v1/model")[2])["server"]["limits"]
        assert limits["max_pixels_in_flight"] == 9_000_000
        # No --threads: the usable cores shared out between the two workers, never more threads than cores.
        assert limits["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output[-2000:]


def test_threads_per_worker_never_oversubscribe_by_default():
    from wsss_deploy.serve.settings import threads_per_worker

    assert threads_per_worker(1, cores=8) is None  # one worker: onnxruntime's own default
    assert [threads_per_worker(w, cores=8) for w in (2, 3, 4, 8, 16)] == [4, 2, 2, 1, 1]
    assert threads_per_worker(4, threads=3, cores=2) == 3  # an explicit --threads is kept
