"""Running services as processes: signal handling, logging and the ``run`` supervisor."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Protocol

from events import runtime
from events.settings import Settings


class Service(Protocol):
    async def start(self) -> None: ...
    async def run(self, *, until_idle: bool = False) -> None: ...
    async def stop(self) -> None: ...
    def request_stop(self) -> None: ...


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    runtime.watch_gc(logging.getLogger("taskflow.gc"))


async def serve(service: Service, *, burst: bool = False) -> None:
    """Start ``service``, run it until SIGTERM/SIGINT (or idle, in burst mode), stop it."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    await service.start()
    try:
        await service.run(until_idle=burst)
    finally:
        await service.stop()


def run_all(settings: Settings) -> int:
    """Run API, worker and projector as child processes; Ctrl-C or SIGTERM stops all three."""
    exe = [sys.executable, "-m", "cli.main"]
    children = {
        "projector": subprocess.Popen([*exe, "projector"], stdin=subprocess.DEVNULL),
        "worker": subprocess.Popen([*exe, "worker"], stdin=subprocess.DEVNULL),
        "api": subprocess.Popen([*exe, "api", "--host", settings.api_host,
                                 "--port", str(settings.api_port)], stdin=subprocess.DEVNULL),
    }
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    url = f"http://{settings.api_host}:{settings.api_port}"
    print(f"taskflow: API  {url}\ntaskflow: docs {url}/docs\n"
          f"taskflow: pids {' '.join(f'{k}={p.pid}' for k, p in children.items())} "
          f"(Ctrl-C stops them; `taskflow stack down` stops Kafka and Postgres)",
          file=sys.stderr, flush=True)
    rc = 0
    while not stopping:
        for name, p in children.items():
            if p.poll() is not None:
                print(f"taskflow: {name} exited with {p.returncode}; stopping", file=sys.stderr)
                rc = p.returncode or 1
                stopping = True
        time.sleep(0.2)
    for p in children.values():
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_s + 10
    for p in children.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    return rc
