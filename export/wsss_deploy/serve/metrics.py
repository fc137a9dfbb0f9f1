"""Prometheus metrics of the server: requests by endpoint and status, latency, batch sizes, queue
depth, decoded pixels in flight, inference time, refused inputs.

With several workers (`--workers N`), each is a process with its own counters; the server then
runs prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `serve` before the
workers start), so `/metrics` on any worker reports the sum over all of them.
"""

import os

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def multiprocess_dir():
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class ServerMetrics:
    """The server's metrics, in a registry of their own (so several apps can live in one process,
    as in tests)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("wsss_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("wsss_request_duration_seconds", "Time from request to response, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("wsss_batch_size", "Images per onnxruntime call.", buckets=BATCH_BUCKETS,
                                    registry=registry)
        self.inference = Histogram("wsss_inference_duration_seconds", "Time of one batched onnxruntime call.",
                                   buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("wsss_queue_depth", "Requests waiting for a batch.", registry=registry,
                                 multiprocess_mode="livesum")
        self.pixels_in_flight = Gauge("wsss_pixels_in_flight", "Decoded image pixels held by requests "
                                      "(--max-pixels-in-flight bounds it).", registry=registry,
                                      multiprocess_mode="livesum")
        self.refused = Counter("wsss_refused_inputs", "Requests refused before inference, by reason.", ["reason"],
                               registry=registry)

    def observe_request(self, endpoint, status, seconds):
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, size, seconds):
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def exposition(self):
        """(body bytes, content type) of the Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
