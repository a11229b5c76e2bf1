"""The server's Prometheus metrics: one registry per app, so that several servers in one process (tests) never share
counts, and the exposition text ``GET /metrics`` returns.

    classifier_requests_total{endpoint, status}     every HTTP request, by route template and status code
    classifier_errors_total{endpoint, reason}       the requests answered with an error, by why
    classifier_request_seconds{endpoint}            request latency, arrival to response (histogram)
    classifier_batch_size                           images per model call (histogram)
    classifier_inference_seconds                    time of one model call (histogram)
    classifier_images_total                         images classified
    classifier_queue_depth                          requests waiting for the model (gauge)
    classifier_ready                                1 once warm-up is done, 0 before and while draining
"""
from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

disable_created_metrics()  # no *_created series: a timestamp per label set that doubles the page and says little

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Every batch size up to 16 gets its own bucket (where the histogram says whether batching happens), then
    powers of two up to ``max_batch_size``."""
    sizes = list(range(1, min(max_batch_size, 16) + 1))
    size = 32
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    if max_batch_size > 16:
        sizes.append(max_batch_size)
    return tuple(float(s) for s in sizes)


class ServerMetrics:
    """The counters, histograms and gauges of one server."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("classifier_requests", "HTTP requests by route and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("classifier_errors", "Requests answered with an error, by reason",
                              ["endpoint", "reason"], registry=r)
        self.latency = Histogram("classifier_request_seconds", "Request latency from arrival to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("classifier_batch_size", "Images per model call",
                                    buckets=batch_buckets(max_batch_size), registry=r)
        self.inference = Histogram("classifier_inference_seconds", "Duration of one model call",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("classifier_images", "Images classified", registry=r)
        self.queue_depth = Gauge("classifier_queue_depth", "Requests waiting for the model", registry=r)
        self.ready = Gauge("classifier_ready", "1 once the model is warmed up and the server takes requests",
                           registry=r)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_error(self, endpoint: str, reason: str) -> None:
        self.errors.labels(endpoint, reason).inc()

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.inference.observe(seconds)
        self.images.inc(images)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
