"""The peers, Celery and Dramatiq, measured the way their users call them.

Both use the bench's own ``redis-server``: broker in database 0, results in database 1.
"Every result is ready" is ``DBSIZE`` of database 1 reaching N: both backends store one
key per finished task, and polling it costs the peers nothing, just as TaskFlow's
``count(*)`` on the read model costs it nothing.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.procs import (
    ROOT,
    BenchError,
    Proc,
    Redis,
    cpu_seconds,
    group_cpu_seconds,
    venv_script,
)
from bench.stats import System, bar, summary_ms

RESULTS_DB = 1


@dataclass
class Peer:
    """One peer system: its worker command and its client calls."""

    name: System
    server: Redis
    log_dir: Path
    proc: Proc | None = None
    _module: Any = field(default=None, repr=False)
    _r: redis.Redis | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The peer modules read the broker URL when imported, here and in the workers.
        os.environ["BENCH_REDIS_URL"] = self.server.url

    @property
    def module(self) -> Any:
        if self._module is None:
            self._module = importlib.import_module(f"bench.peer_{self.name}")
        return self._module

    @property
    def results(self) -> redis.Redis:
        if self._r is None:
            self._r = redis.Redis.from_url(f"{self.server.url}/{RESULTS_DB}")
        return self._r

    def argv(self) -> list[str]:
        if self.name == "celery":
            return [venv_script("celery"), "-A", "bench.peer_celery", "worker", "-P", "prefork",
                    "-c", "2", "--loglevel", "WARNING"]
        return [venv_script("dramatiq"), "bench.peer_dramatiq", "-p", "2", "-t", "8"]

    # ------------------------------------------------------------------ client calls
    def enqueue(self) -> Any:
        """``.delay()`` or ``.send()``: what a user's web handler does per task."""
        return self.module.noop.delay() if self.name == "celery" else self.module.noop.send()

    def wait(self, handle: Any, timeout_s: float = 30) -> None:
        """Block until the task's result is stored (the user's ``.get()``)."""
        if self.name == "celery":
            handle.get(timeout=timeout_s)
        else:
            handle.get_result(block=True, timeout=int(timeout_s * 1000))

    def ready(self) -> int:
        return int(self.results.dbsize())

    def flush(self) -> None:
        self.results.flushall()

    # ------------------------------------------------------------------- worker
    def start_worker(self) -> None:
        self.flush()
        env = {"BENCH_REDIS_URL": self.server.url, "PYTHONPATH": str(ROOT)}
        self.proc = Proc(f"peer-{self.name}", self.argv(), env, self.log_dir).start()
        # Ready means a task went all the way round.
        self.wait(self.enqueue(), timeout_s=90)
        self.flush()

    def stop_worker(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the worker (with its pool), redis-server and this process."""
        out = {"bench-client": time.process_time()}
        if self.proc is not None:
            out["worker"] = group_cpu_seconds(self.proc.pid)
        if self.server.proc is not None:
            out["redis"] = cpu_seconds(self.server.proc.pid)
        return out

    def cores(self, before: dict[str, float], seconds: float) -> dict[str, float]:
        after = self.cpu()
        return {k: round((after[k] - v) / seconds, 2) for k, v in before.items() if k in after}

    def _check(self) -> None:
        if self.proc is not None and not self.proc.alive():
            raise BenchError(f"{self.name} worker exited; see {self.proc.log_path}:\n"
                             f"{self.proc.tail()}")

    # ---------------------------------------------------------------- scenarios
    def submit(self, n: int) -> dict[str, Any]:
        """Enqueue rate with no worker running: the front door alone."""
        self.flush()
        verb = ".delay()" if self.name == "celery" else ".send()"
        with bar(f"submit   {self.name:9} {verb}", n) as pb:
            cpu0 = self.cpu()
            t0 = time.perf_counter()
            for i in range(n):
                self.enqueue()
                if i % 200 == 199:
                    pb.update(200)
            elapsed = time.perf_counter() - t0
            cores = self.cores(cpu0, elapsed)
            pb.update(n - pb.n)
        self.flush()
        return {"n": n, "seconds": elapsed, "per_s": n / elapsed, "client": f"one thread, {verb}",
                "cores": cores}

    def e2e(self, n: int, timeout_s: float) -> dict[str, Any]:
        """From the first enqueue until all ``n`` results are stored."""
        self.flush()
        with bar(f"e2e      {self.name:9}", n) as pb:
            cpu0 = self.cpu()
            t0 = time.perf_counter()
            for i in range(n):
                self.enqueue()
                if i % 500 == 499:
                    pb.update(self.ready() - pb.n)
            enqueued = time.perf_counter() - t0
            deadline = time.monotonic() + timeout_s
            while (done := self.ready()) < n:
                pb.update(done - pb.n)
                self._check()
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name}: only {done} of {n} results after "
                                     f"{timeout_s:.0f}s")
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            cores = self.cores(cpu0, elapsed)
            pb.update(n - pb.n)
        self.flush()
        return {"n": n, "seconds": elapsed, "per_s": n / elapsed, "enqueue_seconds": enqueued,
                "cores": cores}

    def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        """A steady ``rate`` of round trips: enqueue, then wait for that task's result."""
        self.flush()
        n = int(rate * seconds)
        lat = self._latency_celery(n, rate) if self.name == "celery" else \
            self._latency_dramatiq(n, rate)
        self.flush()
        return {"rate": rate, "n": n, **summary_ms(lat)}

    def _latency_dramatiq(self, n: int, rate: float) -> list[float]:
        # Each round trip blocks one thread in get_result (BRPOPLPUSH on its own key).
        lat: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def one() -> None:
            t = time.perf_counter()
            try:
                self.wait(self.enqueue())
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
                return
            with lock:
                lat.append(time.perf_counter() - t)

        with bar(f"latency  {self.name:9}", n) as pb, ThreadPoolExecutor(64) as pool:
            pace(n, rate, lambda: pool.submit(one), pb.update)
        if errors:
            raise BenchError(f"{self.name}: {len(errors)} round trips failed, first: {errors[0]}")
        return lat

    def _latency_celery(self, n: int, rate: float) -> list[float]:
        # Celery's AsyncResult.get() shares one pub/sub consumer per process; called from
        # many threads, each waiter sleeps through the others' drain intervals and the
        # tail grows long. One listener thread on the channel the Redis backend
        # publishes every result to ("celery-task-meta-<id>") is the fair async waiter.
        prefix = "celery-task-meta-"
        started: dict[str, float] = {}
        finished: dict[str, float] = {}
        pubsub = self.results.pubsub(  # type: ignore[no-untyped-call, unused-ignore]
            ignore_subscribe_messages=True)
        pubsub.psubscribe(prefix + "*")
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                msg = pubsub.get_message(timeout=0.1)
                if msg is not None and msg["type"] == "pmessage":
                    finished[msg["channel"].decode()[len(prefix):]] = time.perf_counter()

        listener = threading.Thread(target=listen, name="celery-results", daemon=True)
        listener.start()

        def fire() -> None:
            t = time.perf_counter()
            started[self.enqueue().id] = t

        try:
            with bar(f"latency  {self.name:9}", n) as pb:
                pace(n, rate, fire, pb.update)
            deadline = time.monotonic() + 30
            while len(finished.keys() & started.keys()) < n and time.monotonic() < deadline:
                self._check()
                time.sleep(0.05)
        finally:
            stop.set()
            listener.join(5)
            pubsub.close()
        missing = n - len(finished.keys() & started.keys())
        if missing:
            raise BenchError(f"celery: {missing} of {n} results never arrived")
        return [finished[k] - t for k, t in started.items()]


def pace(n: int, rate: float, fire: Callable[[], object],
         progress: Callable[[int], object]) -> float:
    """Call ``fire`` ``n`` times at a steady ``rate`` per second; returns the achieved rate."""
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        fire()
        progress(1)
    return n / max(1e-9, time.perf_counter() - t0)
