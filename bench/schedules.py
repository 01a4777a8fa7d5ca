"""The ``schedules`` scenario: many interval schedules, fire lateness and fire counts.

``schedules_n`` schedules with ``every_s`` = ``schedules_every_s`` are created through the
API, one scheduler fires them for ``schedules_s`` seconds, and then the task topic is read
back: each fire's lateness is its ``task.created`` record's broker timestamp minus its due
time, and every due time of the measured window is looked for exactly once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench.http import Connection
from bench.stats import percentile
from bench.world import World
from events.codec import decode
from events.errors import UndecodableEvent
from events.log import delete_topics
from events.models import EventType, ScheduleCreated, ScheduleTask, TaskCreated
from events.schedules import next_due, schedule_topic
from projector.replay import read_records

WARMUP_S = 3.0  # seconds after the last schedule is created before the window opens
TAIL_S = 3.0  # seconds before the stop at which the window closes


async def run(w: World, *, n: int, every_s: float, seconds: float) -> dict[str, Any]:
    await w.start_api()
    w.start("scheduler")
    body = {"name": "bench", "every_s": every_s,
            "task": {"title": "tick", "type": "noop", "payload": {}}}
    raw = orjson.dumps(body)
    created: list[str] = []

    async def make(k: int) -> None:
        conn = Connection("127.0.0.1", w.api_port)
        try:
            for _ in range(k):
                resp = await conn.request("POST", "/schedules", raw)
                if resp.status != 201:
                    raise RuntimeError(f"POST /schedules answered {resp.status}: "
                                       f"{resp.body[:300]!r}")
                created.append(orjson.loads(resp.body)["schedule_id"])
        finally:
            await conn.close()

    per = [n // 8 + (1 if i < n % 8 else 0) for i in range(8)]
    await asyncio.gather(*(make(k) for k in per if k))
    opens = datetime.now(UTC) + timedelta(seconds=WARMUP_S)
    before, t0 = w.cpu(), time.perf_counter()
    await asyncio.sleep(WARMUP_S + seconds)
    cores = World.cores(before, w.cpu(), time.perf_counter() - t0)
    closes = datetime.now(UTC) - timedelta(seconds=TAIL_S)
    w.stop()
    anchors: dict[uuid.UUID, datetime] = {}
    async for r in read_records(bootstrap=w.bootstrap, topic=schedule_topic(w.topic)):
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue
        if ev.type is EventType.SCHEDULE_CREATED:
            anchors.setdefault(ev.subject, ev.time)
    spec = ScheduleCreated(name="b", every_s=every_s, task=ScheduleTask(title="t"))
    expected = 0
    for anchor in anchors.values():
        d = next_due(spec, anchor, opens - timedelta(microseconds=1))
        while d is not None and d <= closes:
            expected += 1
            d = next_due(spec, anchor, d)
    lateness: list[float] = []
    seen: Counter[tuple[uuid.UUID, datetime]] = Counter()
    async for r in read_records(bootstrap=w.bootstrap, topic=w.topic):
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue
        tc = ev.data
        if not isinstance(tc, TaskCreated) or tc.schedule_id is None or tc.due_at is None:
            continue
        if opens <= tc.due_at <= closes:
            seen[(tc.schedule_id, tc.due_at)] += 1
            lateness.append(r.timestamp_ms / 1000 - tc.due_at.timestamp())
    await delete_topics(w.bootstrap, [schedule_topic(w.topic)])
    lateness.sort()
    p50, p99 = percentile(lateness, 50), percentile(lateness, 99)
    return {
        "schedules": len(anchors), "every_s": every_s,
        "window_s": round((closes - opens).total_seconds(), 1),
        "fires_expected": expected, "fires": len(seen),
        "missing": expected - len(seen), "doubled": sum(c - 1 for c in seen.values()),
        "lateness_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
        "lateness_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
        "lateness_max_ms": round(lateness[-1] * 1000, 1) if lateness else None,
        "cores": cores,
    }


async def delayed(w: World, *, n: int, spread_s: float) -> dict[str, Any]:
    """``n`` delayed tasks due over ``spread_s`` seconds: how long after its ``run_at``
    each starts (the time of its first ``task.processing``), and how many started early."""
    w.start("worker")
    await w.start_api()
    lead_s = 3.0  # seconds before the first due time: the worker is up and has folded them
    tasks = [{"title": f"d{i}", "type": "noop", "payload": {},
              "delay_s": round(lead_s + spread_s * i / max(1, n - 1), 3)} for i in range(n)]
    conn = Connection("127.0.0.1", w.api_port)
    try:
        for i in range(0, n, 1000):
            resp = await conn.request("POST", "/tasks:batch",
                                      orjson.dumps({"tasks": tasks[i:i + 1000]}))
            if resp.status != 202:
                raise RuntimeError(f"POST /tasks:batch answered {resp.status}: "
                                   f"{resp.body[:300]!r}")
    finally:
        await conn.close()
    await asyncio.sleep(lead_s + spread_s + 3)
    w.stop()
    due: dict[uuid.UUID, float] = {}
    started: dict[uuid.UUID, float] = {}
    async for r in read_records(bootstrap=w.bootstrap, topic=w.topic):
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue
        if isinstance(ev.data, TaskCreated) and ev.data.run_at is not None:
            due[ev.subject] = ev.data.run_at.timestamp()
        elif ev.type is EventType.PROCESSING and ev.subject in due:
            # The event's own time (microseconds), not the record's timestamp: that one is
            # in whole milliseconds, and a start within the due millisecond read as early.
            started.setdefault(ev.subject, ev.time.timestamp())
    late = sorted(started[t] - due[t] for t in started)
    p50, p99 = percentile(late, 50), percentile(late, 99)
    return {"tasks": len(due), "started": len(started),
            "early": sum(1 for x in late if x < 0),
            "start_lateness_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "start_lateness_p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
            "start_lateness_max_ms": round(late[-1] * 1000, 1) if late else None}
