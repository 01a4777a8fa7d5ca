"""Scenario ``webhooks``: deliveries per second to a fast local receiver, and the time
from a task's ``task.done`` (the event's own time) to its delivery.

API, worker, projector and one notifier; one webhook subscribed to ``task.done`` on a
receiver in this process that answers 204 at once. ``webhooks_n`` noop tasks are
submitted in batches as fast as the API takes them; the rate is deliveries over the
time from the first delivery to the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.http import Connection
from bench.procs import free_port
from bench.stats import say, summary_ms
from bench.world import poll_until
from events import webhooks as wh
from events.log import delete_topics

if TYPE_CHECKING:
    from bench.run import Run


async def read_body(receive: Receive) -> bytes:
    """The whole body of an ASGI request."""
    body = b""
    while True:
        msg = await receive()
        body += bytes(msg.get("body", b""))
        if not msg.get("more_body"):
            return body


async def answer(send: Send, status: int, body: bytes = b"",
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that runs it handles its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, port: int) -> AsyncIterator[None]:
    """A real HTTP server for ``app`` on 127.0.0.1:``port`` while the block runs."""
    server = QuietServer(uvicorn.Config(app, host="127.0.0.1", port=port,
                                        log_level="warning", lifespan="off",
                                        access_log=False))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # uvicorn sets a flag, not an event, once it listens
            if server.started:
                break
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError(f"the HTTP server on port {port} did not start")
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


class FastReceiver:
    """Answers 204 at once and notes when each event arrived (wall clock)."""

    def __init__(self) -> None:
        self.arrived: dict[str, tuple[float, str]] = {}  # event id -> (time, event time)
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        ev = orjson.loads(await read_body(receive))
        self.arrived.setdefault(ev["id"], (time.time(), ev["time"]))
        await answer(send, 204)


async def webhooks(run: Run) -> None:
    n = run.sizes.webhooks_n
    w = await run.lab.world("webhooks", TASKFLOW_OUTBOUND_ALLOW="127.0.0.1",
                            TASKFLOW_NOTIFIER_ENDPOINT_CONCURRENCY="32")
    receiver, port = FastReceiver(), free_port()
    res: dict[str, Any] = {}
    hold = contextlib.AsyncExitStack()
    try:
        await hold.enter_async_context(serving(receiver, port))
        w.start("notifier")
        await w.start_all(api_workers=run.args.api_workers, workers=run.args.workers)
        conn = Connection("127.0.0.1", w.api_port)
        try:
            r = await conn.request("POST", "/webhooks", orjson.dumps(
                {"url": f"http://127.0.0.1:{port}/hook", "events": ["task.done"]}))
            if r.status != 201:
                raise RuntimeError(f"POST /webhooks answered {r.status}: {r.body[:300]!r}")
            say(f"webhooks: {n:,} tasks, one webhook on task.done")
            batch = [{"title": "w", "type": "noop", "payload": {}}] * 500
            sent = 0
            while sent < n:
                size = min(500, n - sent)
                r = await conn.request("POST", "/tasks:batch",
                                       orjson.dumps({"tasks": batch[:size]}))
                if r.status != 202:
                    raise RuntimeError(f"POST /tasks:batch answered {r.status}")
                sent += size
        finally:
            await conn.close()
        async def all_in() -> bool:  # the warm-up task came before the webhook
            return len(receiver.arrived) >= n

        await poll_until(all_in, timeout=300, what="every delivery", interval=0.2)
        times = sorted(t for t, _ in receiver.arrived.values())
        lags = [t - datetime.fromisoformat(et).timestamp()
                for t, et in receiver.arrived.values()]
        span = times[-1] - times[0]
        res = {"n": n, "deliveries_per_s": round((len(times) - 1) / span, 1) if span else None,
               "event_to_delivery": summary_ms(lags), "requests": receiver.requests}
        run.detail("webhooks", "taskflow", res)
    except Exception as exc:
        run.failed("webhooks", "taskflow", exc)
    finally:
        w.stop()
        await hold.aclose()
        with contextlib.suppress(Exception):
            await delete_topics(w.bootstrap, [wh.topic_for(w.topic)])
    rate = run.figure("webhooks", f"deliveries to a fast receiver, {n:,} tasks", "deliveries/s",
                      "higher", comparable=False)
    rate.values["taskflow"] = res.get("deliveries_per_s")
    p99 = run.figure("webhooks", "p99 task.done → delivery", "ms", "lower", comparable=False)
    p99.values["taskflow"] = (res.get("event_to_delivery") or {}).get("p99_ms")
