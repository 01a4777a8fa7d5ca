"""Prometheus metrics of the API process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

REQUESTS = Counter("taskflow_http_requests_total", "HTTP requests by route and status",
                   ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram("taskflow_http_request_duration_seconds", "HTTP request latency",
                    ["method", "route"], registry=REGISTRY,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
SUBMITTED = Counter("taskflow_tasks_submitted_total", "Tasks accepted, by type", ["type"],
                    registry=REGISTRY)
SSE_DROPPED = Counter("taskflow_sse_dropped_total",
                      "SSE subscribers dropped for falling behind", registry=REGISTRY)
SSE_SUBSCRIBERS = Gauge("taskflow_sse_subscribers", "Open SSE streams", registry=REGISTRY)
PROJECTOR_LAG = Gauge("taskflow_projector_lag_events",
                      "Events in the log not yet applied by the projector, per partition",
                      ["partition"], registry=REGISTRY)
# Read from the dead_letters table at each scrape rather than counted in the projector: it
# survives restarts, covers every projector instance, and needs no port of its own.
PARKED = Gauge("taskflow_projector_parked_records",
               "Log records a projection parked instead of applying (dead_letters rows), "
               "by projection and reason", ["projection", "reason"], registry=REGISTRY)


# Label values a client chooses are folded into a fixed set: each new label value is a
# new time series held for the life of the process. Routes are the app's own path
# templates ("unmatched" otherwise); statuses are the app's own; methods are any token.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    if method not in METHODS:
        method = "OTHER"
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def render() -> bytes:
    return generate_latest(REGISTRY)
