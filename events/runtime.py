"""Process tuning shared by the long-running services."""

from __future__ import annotations

import gc
import logging
import os
import socket
import time

# Young collections every 50,000 allocations, full ones rarely: for services whose
# per-batch objects are not cyclic and whose long-lived ones are many (projector, worker).
BATCH_SERVICE_GC = (50_000, 50, 100)


def instance_id() -> str:
    """A service instance's default id: host-pid, unique among the instances running."""
    return f"{socket.gethostname()}-{os.getpid()}"


def event_source(configured: str, prefix: str, instance: str) -> str:
    """The CloudEvents ``source`` of the events a service writes: the configured one
    (``TASKFLOW_WORKER_SOURCE``, ``_SCHEDULER_SOURCE``, ``_COORDINATOR_SOURCE``: a
    deployment that keeps host names out of the log sets it), else ``prefix`` and the
    instance id."""
    return configured or prefix + instance


def tune_gc(*thresholds: int) -> None:
    """Make the cyclic garbage collector cheap for a service process.

    Call it once start-up is done. What start-up created lives as long as the process, so
    it is frozen out of every later collection; ``thresholds`` (as for
    ``gc.set_threshold``) make young collections rarer. The services' per-request and
    per-batch objects are not cyclic (reference counting frees them), while with the
    default thresholds the collector took a large share of the projector's CPU and
    stalled every SSE stream of an API process at once.
    """
    global _started
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    _started = True  # from here on, a slow collection is worth a warning


_gc_started = 0.0
_started = False  # start-up is done (``tune_gc`` ran): its own collections are expected
SLOW_GC_S = 0.05  # a collection longer than this is logged as a warning


def watch_gc(logger: logging.Logger) -> None:
    """Log every garbage collection after start-up that stops the process for longer than
    ``SLOW_GC_S``.

    A full collection walks every live object; in a process holding hundreds of thousands
    of them it stalls everything that process does, and shows up as a latency spike.
    """

    def callback(phase: str, info: dict[str, int]) -> None:
        global _gc_started
        if phase == "start":
            _gc_started = time.perf_counter()
            return
        took = time.perf_counter() - _gc_started
        if took > SLOW_GC_S and _started:
            logger.warning("garbage collection of generation %d took %.0f ms (%d collected)",
                           info["generation"], took * 1000, info["collected"])

    gc.callbacks.append(callback)
