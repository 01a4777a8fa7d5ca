"""Running services as processes: signal handling, outage retries, logging, the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Protocol

from events import runtime
from events.retry import Outage, backoff
from events.settings import Settings

RESTART_BASE_S = 0.5  # seconds before the first restart of a child that died (before jitter)
RESTART_CAP_S = 30.0  # seconds, the longest wait before a restart
RESTART_RESET_S = 60.0  # seconds a child must stay up for its next death to count as a first
CLIENT_LOG_REPEAT_S = 60.0  # seconds between two copies of one client library log message
FAILED_STOP_TIMEOUT_S = 20.0  # seconds a failed service gets to close before it is dropped


class Service(Protocol):
    async def start(self) -> None: ...
    async def run(self, *, until_idle: bool = False) -> None: ...
    async def stop(self) -> None: ...
    def request_stop(self) -> None: ...


class _OncePerInterval(logging.Filter):
    """Passes each message of the client libraries' loggers (names starting with one of
    ``prefixes``) at most once per ``every_s`` seconds.

    While a broker is away aiokafka logs every failed connection, fetch and metadata
    request, several lines every 100 ms per client, and asyncpg's pool a stack trace per
    reconnection attempt; the outage itself is logged once, where it is waited out. A
    message is told apart by its logger and its format string, not by its arguments, so
    "Unable connect to node 1: refused" and "... reset" count as one.
    """

    def __init__(self, prefixes: tuple[str, ...], every_s: float) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.every_s = every_s
        self.last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self.last.get(key, -self.every_s) < self.every_s:
            return False
        self.last[key] = now
        return True


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OncePerInterval(("aiokafka", "asyncpg"), CLIENT_LOG_REPEAT_S))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    runtime.watch_gc(logging.getLogger("taskflow.gc"))


def _dependency(exc: BaseException, name: str) -> str:
    """Which dependency ``exc`` says is away: "postgres", "kafka", or the service itself."""
    from events.db import database_down
    from events.log import log_down

    if database_down(exc):
        return "postgres"
    if log_down(exc):
        return "kafka"
    return name


async def serve(make: Callable[[], Service], *, name: str, burst: bool = False) -> None:
    """Run the service ``make()`` builds until SIGTERM/SIGINT (or idle, in burst mode).

    An outage is waited out: if ``start`` or ``run`` fails because Postgres or Kafka is
    away (or for any other reason but a fencing error), the service is stopped, and after
    a backoff a fresh one is built and started. It resumes from what is committed (the
    projector's checkpoints, the worker group's offsets and transactions), so nothing is
    lost or applied twice. Each outage is logged when it starts and when it ends, not on
    every retry. A fencing error (another instance owns the work) ends the process.
    """
    log = logging.getLogger(f"taskflow.{name}")
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    current: list[Service] = []

    def on_signal() -> None:
        stopping.set()
        for service in current:
            service.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    outages: dict[str, Outage] = {}
    while not stopping.is_set():
        service = make()
        current[:] = [service]
        try:
            await service.start()
            for outage in outages.values():
                outage.over()
            if not stopping.is_set():
                await service.run(until_idle=burst)
        except Exception as exc:
            from events.log import fenced

            if fenced(exc):
                await service.stop()
                raise
            what = _dependency(exc, name)
            outage = outages.setdefault(what, Outage(what, log))
            if what == name and not outage.down:  # not an outage: say where it came from
                log.error("%s failed, restarting it: %r", name, exc, exc_info=exc)
            delay = outage.failed(exc)
            try:  # a service that failed may hang on the dependency that is away
                await asyncio.wait_for(service.stop(), FAILED_STOP_TIMEOUT_S)
            except (Exception, asyncio.CancelledError) as stop_exc:
                # A client library may leak a cancellation of its own while closing.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.info("stopping the failed %s: %r", name, stop_exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            continue
        await service.stop()
        return


@dataclass
class Child:
    """One supervised process and its restart history."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # monotonic
    quick_deaths: int = 0  # deaths in a row, each before RESTART_RESET_S of uptime
    restarts: int = 0
    due: float | None = None  # monotonic time of the next restart

    def spawn(self) -> None:
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        self.due = None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


def _say(msg: str) -> None:
    print(f"taskflow: {msg}", file=sys.stderr, flush=True)


def supervise(argvs: dict[str, list[str]], *, grace_s: float,
              banner: Callable[[dict[str, int]], None] | None = None) -> int:
    """Run the processes until SIGTERM or SIGINT; restart any that dies meanwhile.

    A process that exits for any reason but our stop (a crash, ``kill -9``, a clean exit)
    is started again after a backoff: ``RESTART_BASE_S`` doubling up to ``RESTART_CAP_S``,
    with jitter, and back to the base once it has stayed up ``RESTART_RESET_S``. The
    others keep running. On SIGTERM or SIGINT every process gets SIGTERM and
    ``grace_s`` (plus ten seconds) to finish; any still running then is killed.
    """
    children = [Child(name, argv) for name, argv in argvs.items()]
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for c in children:
        c.spawn()
    if banner is not None:
        banner({c.name: c.popen.pid for c in children if c.popen is not None})
    while not stopping:
        now = time.monotonic()
        for c in children:
            if c.due is not None:
                if now >= c.due:
                    c.spawn()
                    c.restarts += 1
                    assert c.popen is not None
                    _say(f"{c.name} restarted (pid {c.popen.pid}, restart {c.restarts})")
                continue
            if c.alive or c.popen is None:
                continue
            up = now - c.started
            c.quick_deaths = 1 if up >= RESTART_RESET_S else c.quick_deaths + 1
            delay = backoff(c.quick_deaths, base_s=RESTART_BASE_S, cap_s=RESTART_CAP_S)
            c.due = now + delay
            _say(f"{c.name} (pid {c.popen.pid}) exited with {c.popen.returncode} after "
                 f"{up:.1f} s; restarting it in {delay:.1f} s")
        time.sleep(0.1)
    for c in children:
        if c.alive:
            assert c.popen is not None
            c.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 10
    for c in children:
        if c.popen is None:
            continue
        try:
            c.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{c.name} (pid {c.popen.pid}) did not stop in time; killing it")
            c.popen.kill()
            c.popen.wait()
    return 0


DEV_OPEN_NOTE = ("taskflow: the API is OPEN: no API key needed, every tenant visible "
                 "(local development profile; TASKFLOW_AUTH=true closes it)")


def dev_profile(environ: MutableMapping[str, str]) -> str | None:
    """The local development profile of ``taskflow run`` (``make run``): the API runs open
    unless ``TASKFLOW_AUTH`` is set. Sets it in ``environ``, which the children inherit,
    and returns the line to say so at start (None when the caller chose)."""
    if "TASKFLOW_AUTH" in environ:
        return None
    environ["TASKFLOW_AUTH"] = "off"
    return DEV_OPEN_NOTE


def run_all(settings: Settings) -> int:
    """Run API, worker, projector, scheduler, notifier and coordinator as child processes;
    Ctrl-C or SIGTERM stops them all.

    A child that dies is restarted (see ``supervise``); the others keep running.
    """
    exe = [sys.executable, "-m", "cli.main"]
    url = f"http://{settings.api_host}:{settings.api_port}"

    def banner(pids: dict[str, int]) -> None:
        print(f"taskflow: API  {url}\ntaskflow: docs {url}/docs\n"
              f"taskflow: pids {' '.join(f'{k}={p}' for k, p in pids.items())} "
              f"(Ctrl-C stops them; `taskflow stack down` stops Kafka and Postgres)",
              file=sys.stderr, flush=True)

    return supervise({
        "projector": [*exe, "projector"],
        "worker": [*exe, "worker"],
        "api": [*exe, "api", "--host", settings.api_host, "--port", str(settings.api_port)],
        # Last: the banner lists the pids in this order, and tools read the first three.
        "scheduler": [*exe, "scheduler"],
        "notifier": [*exe, "notifier"],
        "coordinator": [*exe, "coordinator"],
    }, grace_s=settings.shutdown_grace_s, banner=banner)
