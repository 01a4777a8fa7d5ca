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
        res["steady"] = await steady(run, w.api_port, receiver)
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
    rate_s = run.sizes.webhooks_rate
    sp99 = run.figure("webhooks", f"p99 task.done → delivery at a steady {rate_s:g} tasks/s",
                      "ms", "lower", comparable=False)
    sp99.values["taskflow"] = ((res.get("steady") or {}).get("event_to_delivery")
                               or {}).get("p99_ms")


async def steady(run: Run, api_port: int, receiver: FastReceiver) -> dict[str, Any]:
    """Tasks one at a time at ``webhooks_rate`` per second, evenly spaced, for
    ``webhooks_steady_s``: the latency when the notifier keeps up (the burst above
    measures the queue as much as the notifier)."""
    rate, secs = run.sizes.webhooks_rate, run.sizes.webhooks_steady_s
    total = max(1, int(rate * secs))
    before = set(receiver.arrived)
    say(f"webhooks: steady {rate:g} tasks/s for {secs:g} s")
    body = orjson.dumps({"title": "w", "type": "noop", "payload": {}})
    conns = [Connection("127.0.0.1", api_port) for _ in range(8)]
    start = time.monotonic()
    late = 0

    free: asyncio.Queue[Connection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)

    async def one() -> None:
        conn = await free.get()  # one request per connection at a time
        try:
            r = await conn.request("POST", "/tasks", body)
        finally:
            free.put_nowait(conn)
        if r.status != 202:
            raise RuntimeError(f"POST /tasks answered {r.status}")

    pending: set[asyncio.Task[None]] = set()
    try:
        for i in range(total):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                late += 1
            pending = {t for t in pending if not t.done()}
            pending.add(asyncio.create_task(one()))
        await asyncio.gather(*pending)
    finally:
        for c in conns:
            await c.close()

    async def all_in() -> bool:
        return len(set(receiver.arrived) - before) >= total

    await poll_until(all_in, timeout=120, what="every steady delivery", interval=0.2)
    lags = [t - datetime.fromisoformat(et).timestamp()
            for eid, (t, et) in receiver.arrived.items() if eid not in before]
    return {"n": total, "rate_per_s": rate, "submits_behind_schedule": late,
            "event_to_delivery": summary_ms(lags)}
