"""Load test of the ONNX server on loopback: 1, 8 and 32 concurrent clients, bounded in time and
requests; throughput, p50/p99 latency and errors, next to the same model's raw onnxruntime
throughput in one process. Prints figures, asserts nothing.

    python bench/bench_serve.py [--model ONNX_DIR | --run QUICKSTART_DIR] [--clients 1,8,32]
        [--seconds 15] [--requests 3000] [--workers 1] [--max-batch-size 8] [--max-wait-ms 5]

--model is an export folder (model.onnx + manifest.json); without it the quickstart model (from
--run, a `wsss quickstart --out DIR` folder, or a fresh quickstart) is exported with
`--output labels` (what /v1/segment needs). Requests are the synthetic val images (JPEG, 128 x
128) posted raw to /v1/segment, answered as PNG label maps. The server runs in its own process
(`python -m wsss_deploy.serve`); clients are asyncio connections with keep-alive in this one,
so on a small machine they share its cores with the server, as the raw figure does not.
"""

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_quickstart(run_dir, scratch):
    """(ONNX export folder, data folder) of the quickstart model, exported with --output labels."""
    if run_dir is None:
        from wsss_keras.pipelines.quickstart import run_quickstart

        run_dir = os.path.join(scratch, "quickstart")
        print("running the quickstart first (about 15 minutes)...", flush=True)
        run_quickstart(run_dir, echo=lambda line: None)
    out = os.path.join(scratch, "export")
    command = [sys.executable, "-m", "wsss_keras.cli", "--backend", "tensorflow", "export",
               os.path.join(run_dir, "toco_doei", "model.keras"), "--format", "onnx", "--output", "labels",
               "--input-size", "128", "128", "--samples", os.path.join(run_dir, "data"), "--out", out]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if result.returncode != 0:
        sys.exit(f"export failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return out, os.path.join(run_dir, "data")


def request_bodies(data, count=32):
    """JPEG bytes of the val images (or of random scenes when there is no dataset)."""
    from PIL import Image

    if data and os.path.isdir(os.path.join(data, "JPEGImages")):
        with open(os.path.join(data, "ImageSets", "Segmentation", "val.txt"), encoding="utf-8") as handle:
            names = handle.read().split()[:count]
        bodies = []
        for name in names:
            with open(os.path.join(data, "JPEGImages", f"{name}.jpg"), "rb") as handle:
                bodies.append(handle.read())
        return bodies
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (128, 128, 3)).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def process_cpu_seconds(pid):
    """User + system CPU seconds of process `pid` and its descendants (uvicorn's workers), from
    Linux's /proc; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                children += [int(child) for child in handle.read().split()]
    except OSError:
        return None
    own = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(process_cpu_seconds(child) or 0.0 for child in children)


def raw_throughput(segmenter, bodies, batch_sizes, seconds):
    """Per batch size: (images per second, images per CPU-second) of onnxruntime alone on the
    decoded images."""
    from PIL import Image

    images = [np.asarray(Image.open(io.BytesIO(body)).convert("RGB")) for body in bodies]
    figures = {}
    for batch in batch_sizes:
        stack = np.stack([images[i % len(images)] for i in range(batch)])
        segmenter.run(stack, ["labels"])
        done, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            segmenter.run(stack, ["labels"])
            done += batch
        figures[batch] = (done / (time.perf_counter() - start), done / (time.process_time() - cpu))
    return figures


async def client(host, port, bodies, offset, stop_at, budget, latencies, errors):
    """One keep-alive connection posting images until time or the shared request budget runs out."""
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            body = bodies[index % len(bodies)]
            index += 1
            head = (f"POST /v1/segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            start = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if b" 200 " not in status_line:
                errors.append(status_line.decode("latin-1").strip())
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        errors.append(repr(error))
    finally:
        writer.close()


async def load_level(host, port, bodies, clients, seconds, requests, server_pid):
    latencies, errors = [], []
    budget = [requests]
    start, client_cpu, server_cpu = time.perf_counter(), time.process_time(), process_cpu_seconds(server_pid)
    await asyncio.gather(*(client(host, port, bodies, i, start + seconds, budget, latencies, errors)
                           for i in range(clients)))
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    server_end = process_cpu_seconds(server_pid)
    server_cpu = server_end - server_cpu if server_cpu is not None and server_end is not None else None
    return {"clients": clients, "requests": len(latencies), "seconds": elapsed,
            "client_cpu_s": client_cpu, "server_cpu_s": server_cpu,
            "throughput": len(latencies) / elapsed,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
            "errors": len(errors), "first_error": errors[0] if errors else ""}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir, port, args):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "export")}
    command = [sys.executable, "-m", "wsss_deploy.serve", model_dir, "--port", str(port), "--workers", str(args.workers),
               "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
               "--max-queue", "256"] + (["--threads", str(args.threads)] if args.threads else [])
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server stopped: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    sys.exit("the server did not become ready in 120 s")


def check_one_mask(port, segmenter, body):
    """Whether the server's mask for `body` equals onnxruntime's on the same decoded image."""
    from PIL import Image

    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/segment", body, {"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=30) as response:
        served = np.asarray(Image.open(io.BytesIO(response.read())))
    image = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    direct = segmenter.run(image[None], ["labels"])["labels"][0]
    return bool(np.array_equal(served, direct))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="ONNX export folder (default: export the quickstart model)")
    parser.add_argument("--run", default=None, help="a `wsss quickstart --out DIR` folder (used without --model)")
    parser.add_argument("--data", default=None, help="dataset whose val images are the requests (default: --run's)")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per level")
    parser.add_argument("--requests", type=int, default=3000, help="request limit per level")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="the server's onnxruntime threads (default: its own)")
    parser.add_argument("--json", default=None, help="also write the figures here (bench_all.py reads them)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "export"))
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, data = args.model, args.data
        if model_dir is None:
            model_dir, run_data = export_quickstart(args.run, scratch)
            data = data or run_data
        bodies = request_bodies(data)
        from wsss_deploy.onnx_runner import OnnxSegmenter

        segmenter = OnnxSegmenter(model_dir)  # the raw figure's, and the reference mask's
        manifest = segmenter.manifest
        raw = raw_throughput(segmenter, bodies, sorted({1, args.max_batch_size}), min(args.seconds, 10.0))
        port = free_port()
        server = start_server(model_dir, port, args)
        try:
            equal = check_one_mask(port, segmenter, bodies[0])
            levels = [asyncio.run(load_level("127.0.0.1", port, bodies, int(n), args.seconds, args.requests, server.pid))
                      for n in args.clients.split(",")]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                metrics = response.read().decode()
        finally:
            server.terminate()
            server.wait(30)
    best_raw = max(rate for rate, _ in raw.values())
    best_raw_per_cpu = max(per_cpu for _, per_cpu in raw.values())
    size = (manifest.get("input") or {}).get("network_size")
    title = (f"ONNX server on loopback: model {manifest.get('model', {}).get('name', model_dir)}, network input {size}, "
             f"{os.cpu_count()} cores shared by server and clients; {args.workers} worker(s), max batch "
             f"{args.max_batch_size}, max wait {args.max_wait_ms} ms"
             + (f", {args.threads} onnxruntime thread(s)" if args.threads else ""))
    lines = ["raw onnxruntime, one process: " + ", ".join(f"batch {b}: {rate:.1f} images/s ({per_cpu:.1f} per CPU-second)"
                                                       for b, (rate, per_cpu) in raw.items()),
             f"server mask equals onnxruntime's on the same image: {'yes' if equal else 'NO'}"]
    batches = [line for line in metrics.splitlines() if line.startswith(("wsss_batch_size_sum", "wsss_batch_size_count"))]
    counts = {line.split()[0]: float(line.split()[1]) for line in batches}
    if counts.get("wsss_batch_size_count"):
        lines.append(f"mean batch over the run: {counts['wsss_batch_size_sum'] / counts['wsss_batch_size_count']:.2f} images")
    # "of raw" is of the best raw batch size; a lone client cannot batch, so its row is also shown
    # against raw batch 1.
    single = raw.get(1, (None,))[0]
    # The clients run on the same cores: their CPU share is throughput the server cannot have.
    # Images per server CPU-second against raw's per CPU-second is the server's own overhead.
    header = ("| clients | requests | throughput (images/s) | of raw (best batch) | of raw batch 1 | p50 (ms) | p99 (ms) "
              "| errors | CPU: server / clients (cores) | server images per CPU-s, of raw |")
    table = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for level in levels:
        of_single = f"{100 * level['throughput'] / single:.0f} %" if single and level["clients"] == 1 else ""
        cores, efficiency = "", ""
        if level["server_cpu_s"]:
            cores = f"{level['server_cpu_s'] / level['seconds']:.2f} / {level['client_cpu_s'] / level['seconds']:.2f}"
            efficiency = f"{100 * level['requests'] / level['server_cpu_s'] / best_raw_per_cpu:.0f} %"
        table.append(f"| {level['clients']} | {level['requests']} | {level['throughput']:.1f} | "
                     f"{100 * level['throughput'] / best_raw:.0f} % | {of_single} | {level['p50_ms']:.1f} | {level['p99_ms']:.1f} | "
                     f"{level['errors']}{' (' + level['first_error'] + ')' if level['errors'] else ''} | {cores} | {efficiency} |")
    print(f"\n{title}\n" + "\n".join(lines) + "\n\n" + "\n".join(table))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results_io import write_results

    write_results(args.json, "bench_serve", title, markdown="\n".join([f"- {line}" for line in lines] + [""] + table),
                  raw_images_per_s={str(b): rate for b, (rate, _) in raw.items()},
                  raw_images_per_cpu_s={str(b): per_cpu for b, (_, per_cpu) in raw.items()}, levels=levels,
                  masks_equal=equal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
