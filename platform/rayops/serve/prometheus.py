"""Request, latency, batch-size and error metrics, exported by Ray in Prometheus format
(each node's metrics export port, scraped like any Ray metric)."""

from ray.util import metrics

LATENCY_BUCKETS_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]


class ServeMetrics:
    """Created inside a replica (metrics must not be defined at import)."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "rayops_requests",
            "HTTP requests answered, by route and status code.",
            tag_keys=("route", "status"),
        )
        self.errors = metrics.Counter(
            "rayops_request_errors",
            "Requests answered with a 4xx or 5xx, by route and status.",
            tag_keys=("route", "status"),
        )
        self.latency = metrics.Histogram(
            "rayops_request_latency_ms",
            "Time to answer a request in the replica.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("route",),
        )
        self.batch_size = metrics.Histogram(
            "rayops_batch_size", "Requests merged into one model call.", boundaries=BATCH_BUCKETS
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.requests.inc(tags=tags)
        if status >= 400:
            self.errors.inc(tags=tags)
        self.latency.observe(seconds * 1000, tags={"route": route})
