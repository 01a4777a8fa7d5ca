"""The ``priority`` and ``fairness`` scenarios: start latency behind a backlog.

``priority``: ``priority_backlog`` ``normal`` tasks (``sleep`` of ``priority_task_s``,
far more work than the worker does in the run) are queued, then ``priority_n`` ``critical``
tasks are submitted one by one through ``POST /tasks``. Each one's start latency is its
first ``task.processing`` minus its ``task.created``, both read back from the log.

``fairness``: tenant ``flood`` queues ``priority_backlog`` tasks, then tenant ``other``
submits ``priority_n`` single tasks, one at a time; the figure is their start latency.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from bench.http import Connection
from bench.stats import percentile
from bench.world import World
from events.codec import decode
from events.errors import UndecodableEvent
from events.log import EventProducer
from events.models import EventType, TaskCreated, new_event
from projector.replay import read_records

if TYPE_CHECKING:
    from bench.run import Run

READ_AHEAD_S = 3.0  # seconds for the worker to read the backlog before the measured tasks
GAP_S = 0.25  # seconds between two measured submits


async def _flood(w: World, n: int, seconds: float, tenant: str | None) -> None:
    producer = EventProducer(bootstrap=w.bootstrap, topic=w.topic, timeout_s=60)
    await producer.start()
    try:
        for i in range(0, n, 1000):
            await producer.append([
                new_event(TaskCreated(title=f"b{i + j}", type="sleep",
                                      payload={"seconds": seconds}),
                          task_id=uuid.uuid4(), source="bench", tenant=tenant)
                for j in range(min(1000, n - i))])
    finally:
        await producer.stop()


async def _latencies(w: World, measured: set[uuid.UUID]) -> list[float]:
    created: dict[uuid.UUID, float] = {}
    started: dict[uuid.UUID, float] = {}
    async for r in read_records(bootstrap=w.bootstrap, topic=w.topic):
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue
        if ev.subject not in measured:
            continue
        if ev.type is EventType.CREATED:
            created.setdefault(ev.subject, ev.time.timestamp())
        elif ev.type is EventType.PROCESSING:
            started.setdefault(ev.subject, ev.time.timestamp())
    return sorted(started[t] - created[t] for t in started if t in created)


async def measure(w: World, *, kind: str, backlog: int, n: int, task_s: float,
                  workers: int) -> dict[str, Any]:
    for _ in range(workers):
        w.start("worker")
    await w.start_api()
    await asyncio.sleep(READ_AHEAD_S)  # the group settles before the flood
    await _flood(w, backlog, task_s, "flood" if kind == "fairness" else None)
    await asyncio.sleep(READ_AHEAD_S)
    measured: set[uuid.UUID] = set()
    if kind == "priority":
        conn = Connection("127.0.0.1", w.api_port)
        try:
            for i in range(n):
                body = orjson.dumps({"title": f"crit{i}", "type": "noop", "payload": {},
                                     "priority": "critical"})
                resp = await conn.request("POST", "/tasks", body)
                if resp.status != 202:
                    raise RuntimeError(f"POST /tasks answered {resp.status}: "
                                       f"{resp.body[:300]!r}")
                measured.add(uuid.UUID(orjson.loads(resp.body)["task_id"]))
                await asyncio.sleep(GAP_S)
        finally:
            await conn.close()
    else:  # another tenant's single tasks (tenants come from API keys; written directly)
        producer = EventProducer(bootstrap=w.bootstrap, topic=w.topic, timeout_s=60)
        await producer.start()
        try:
            for i in range(n):
                tid = uuid.uuid4()
                await producer.append([new_event(
                    TaskCreated(title=f"other{i}", type="noop", payload={}),
                    task_id=tid, source="bench", tenant="other")])
                measured.add(tid)
                await asyncio.sleep(GAP_S)
        finally:
            await producer.stop()
    await asyncio.sleep(3)
    w.stop()
    late = await _latencies(w, measured)
    p50, p99 = percentile(late, 50), percentile(late, 99)
    return {"backlog": backlog, "measured": n, "started": len(late), "workers": workers,
            "start_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "start_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
            "start_max_ms": round(late[-1] * 1000, 1) if late else None}


async def scenario(run: Run, kind: str) -> None:
    """One of ``priority`` and ``fairness``, as figures of ``run``."""
    z = run.sizes
    w = await run.lab.world(kind)
    what = ("critical task" if kind == "priority" else "second tenant's task")
    label = f"{what} behind {z.priority_backlog:,} queued"
    p50 = run.figure(kind, f"start latency p50, {label}", "ms", "lower", comparable=False)
    p99 = run.figure(kind, f"start latency p99, {label}", "ms", "lower", comparable=False)
    try:
        res = await measure(w, kind=kind, backlog=z.priority_backlog, n=z.priority_n,
                            task_s=z.priority_task_s, workers=run.args.workers)
        run.detail(kind, "taskflow", res)
        p50.values["taskflow"] = res["start_p50_ms"]
        p99.values["taskflow"] = res["start_p99_ms"]
        p99.notes["taskflow"] = f"{res['started']} of {res['measured']} started"
    except Exception as exc:
        run.failed(kind, "taskflow", exc)
    finally:
        w.stop()
