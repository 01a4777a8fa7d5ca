"""Prometheus metrics of a worker process, served on ``TASKFLOW_WORKER_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

IN_FLIGHT = Gauge("taskflow_worker_tasks_in_flight", "Tasks running in this worker",
                  registry=REGISTRY)
FINISHED = Counter("taskflow_tasks_finished_total", "Attempts finished, by type and outcome",
                   ["type", "status"], registry=REGISTRY)
DURATION = Histogram("taskflow_task_processing_seconds", "Handler run time per attempt",
                     ["type"], registry=REGISTRY,
                     buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))


_serving: set[int] = set()  # ports already served: a worker restarted in-process keeps them


def serve(port: int, host: str = "127.0.0.1") -> None:
    if port in _serving:
        return
    start_http_server(port, addr=host, registry=REGISTRY)
    _serving.add(port)
