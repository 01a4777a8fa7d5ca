"""Priorities, fair share between tenants, and waiting that costs no slot.

The gate's choices are pure logic and are tested without I/O; the rest runs on the real
stack and is checked from the log itself: when each task's ``task.processing`` landed.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from events.log import EventProducer
from events.models import CloudEvent, TaskCreated, new_event
from events.priority import PRIORITY_NAMES, parse_tenant_weights
from tests.helpers import Env, wait_until
from tests.test_worker import all_terminal_in_log, by_task, submit, wait_status
from worker.gate import Gate

# ------------------------------------------------------------------ the gate, no I/O


async def _order(gate: Gate, waiters: list[tuple[int, str | None]]) -> list[int]:
    """Fill every slot, queue ``waiters`` in order, then free one slot at a time."""
    holders = [asyncio.Event() for _ in range(gate.slots)]
    granted: list[int] = []

    async def hold(ev: asyncio.Event) -> None:
        async with gate.slot(0, "holder"):
            await ev.wait()

    async def wait(i: int, priority: int, tenant: str | None) -> None:
        async with gate.slot(priority, tenant):
            granted.append(i)
            await asyncio.sleep(0)

    held = [asyncio.create_task(hold(ev)) for ev in holders]
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(wait(i, p, t)) for i, (p, t) in enumerate(waiters)]
    await asyncio.sleep(0)
    holders[0].set()
    await asyncio.gather(*tasks)
    for ev in holders:
        ev.set()
    await asyncio.gather(*held)
    return granted


async def test_gate_grants_the_highest_priority_first_then_in_order() -> None:
    got = await _order(Gate(1), [(0, None), (0, None), (100, None), (-50, None), (50, None)])
    assert got == [2, 4, 0, 1, 3]


async def test_gate_alternates_tenants_of_equal_weight() -> None:
    a: tuple[int, str | None] = (0, "a")
    b: tuple[int, str | None] = (0, "b")
    flood = [a] * 6 + [b] * 2
    got = await _order(Gate(1), flood)
    assert got[:4] == [0, 6, 1, 7]  # b's two tasks do not wait behind a's six


async def test_gate_shares_slots_by_weight() -> None:
    gate = Gate(4, weights={"a": 3.0})
    holding: dict[str, int] = {"a": 0, "b": 0}
    release = asyncio.Event()

    async def run(t: str) -> None:
        async with gate.slot(0, t):
            holding[t] += 1
            await release.wait()

    tasks = [asyncio.create_task(run(t)) for t in ["b"] * 10 + ["a"] * 10]
    await asyncio.sleep(0.01)
    # b came first and took the free slots: from here on, every freed slot is handed out
    # by share. Free all four and see where they go.
    assert sum(holding.values()) == 4
    before = dict(holding)
    release.set()
    await asyncio.sleep(0)
    release.clear()
    for _ in range(5):
        await asyncio.sleep(0)
    grown = {t: holding[t] - before[t] for t in holding}
    assert grown["a"] >= 3 and grown["a"] > grown["b"], (before, holding)
    release.set()
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_keeps_no_slot() -> None:
    gate = Gate(1)
    await gate.acquire(0, None)
    waiter = asyncio.create_task(gate.acquire(0, None))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release(None)
    assert gate.free == 1 and gate.waiting == 0
    await asyncio.wait_for(gate.acquire(5, "x"), 1)


def test_priority_names_and_tenant_weights_parse() -> None:
    assert PRIORITY_NAMES == {"low": -50, "normal": 0, "high": 50, "critical": 100}
    assert parse_tenant_weights(" a=3, b=0.5 ") == {"a": 3.0, "b": 0.5}
    for bad in ("a", "a=0", "=2", "a=x"):
        with pytest.raises(ValueError):
            parse_tenant_weights(bad)


async def test_post_tasks_takes_priority_names_and_refuses_others(env: Env) -> None:
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "c", "payload": {"message": "m"},
                               "priority": "critical"})
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": "h", "payload": {"message": "m"}, "priority": "high"},
            {"title": "n", "payload": {"message": "m"}, "priority": -7}]})
        assert r.status_code == 202, r.text
        for body in ({"title": "x", "priority": "urgent"}, {"title": "x", "priority": 101}):
            bad = await c.post("/tasks", json=body)
            assert bad.status_code == 422, bad.text
            assert bad.headers["content-type"].startswith("application/problem+json")
    created = {str(ev.subject): ev.data for _, ev in await env.log_events()
               if ev.type.value == "task.created"}
    assert created[tid].priority == 100  # type: ignore[attr-defined]
    items = r.json()["items"]
    assert created[items[0]["task_id"]].priority == 50  # type: ignore[attr-defined]
    assert created[items[1]["task_id"]].priority == -7  # type: ignore[attr-defined]


# ------------------------------------------------------------------ on the real stack


async def _append(env: Env, events: list[CloudEvent]) -> None:
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=30)
    await producer.start()
    try:
        for i in range(0, len(events), 500):
            await producer.append(events[i:i + 500])
    finally:
        await producer.stop()


def _backlog(n: int, *, seconds: float, tenant: str | None = None,
             priority: int = 0) -> list[CloudEvent]:
    return [new_event(TaskCreated(title=f"b{i}", type="sleep", payload={"seconds": seconds},
                                  priority=priority),
                      task_id=uuid.uuid4(), source="test", tenant=tenant) for i in range(n)]


async def _starts(env: Env) -> dict[str, datetime]:
    """Each task's first ``task.processing`` time, from the log."""
    out: dict[str, datetime] = {}
    for tid, evs in (await by_task(env)).items():
        t = next((e.time for e in evs if e.type.value == "task.processing"), None)
        if t is not None:
            out[tid] = t
    return out


async def _workers_settled(env: Env, n: int) -> None:
    """Wait until ``n`` workers share the partitions (a warm-up task per partition ran)."""
    async def assigned() -> bool:
        logs = [p.output() for p in env.procs if p.argv[0] == "worker"]
        return len(logs) == n and all("assigned [" in o for o in logs)

    await wait_until(assigned, timeout=60, what=f"{n} workers assigned")
    await asyncio.sleep(3)  # the group's last rebalance settles


async def _critical_behind_backlog(env: Env, workers: int) -> None:
    for _ in range(workers):
        env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="2")
    await env.api()
    await _workers_settled(env, workers)
    backlog = _backlog(100 * workers, seconds=0.3)
    await _append(env, backlog)
    normal = {str(e.subject) for e in backlog}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        crit = set()
        for i in range(6):
            crit.add(await submit(c, {"title": f"crit{i}", "type": "echo",
                                      "payload": {"message": "now"}, "priority": "critical"}))
    await wait_until(lambda: all_terminal_in_log(env, crit), timeout=120,
                     what="critical tasks terminal")
    starts = await _starts(env)
    last_critical = max(starts[t] for t in crit)
    not_started = [t for t in normal if t not in starts or starts[t] > last_critical]
    # Every critical task started while most of the backlog, written before them, waited.
    assert len(not_started) > len(normal) // 2, (len(not_started), len(normal))


async def test_critical_tasks_start_before_a_backlog_drains_one_worker(env: Env) -> None:
    await _critical_behind_backlog(env, 1)


async def test_critical_tasks_start_before_a_backlog_drains_three_workers(env: Env) -> None:
    await _critical_behind_backlog(env, 3)


async def test_second_tenant_is_not_held_behind_a_flooding_tenant(env: Env) -> None:
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="2")
    await _workers_settled(env, 1)
    flood = _backlog(120, seconds=0.3, tenant="acme")
    await _append(env, flood)
    await asyncio.sleep(1)  # the flood is read and queued before the other tenant's tasks
    small = _backlog(4, seconds=0.3, tenant="globex")
    await _append(env, small)
    mine = {str(e.subject) for e in small}
    await wait_until(lambda: all_terminal_in_log(env, mine), timeout=120,
                     what="the second tenant's tasks terminal")
    starts = await _starts(env)
    last_small = max(starts[t] for t in mine)
    flood_ids = {str(e.subject) for e in flood}
    waiting = [t for t in flood_ids if t not in starts or starts[t] > last_small]
    assert len(waiting) > len(flood_ids) // 2, (len(waiting), len(flood_ids))
    # And the two shared the slots while both had work: globex never waited for more than
    # a few of acme's tasks to start between two of its own.
    ordered = sorted(starts, key=lambda t: starts[t])
    first = ordered.index(min(mine, key=lambda t: starts[t]))
    assert sum(1 for t in ordered[first:] if t in mine and starts[t] <= last_small) == 4


async def test_retry_backoff_holds_no_slot_and_no_fetch_room(env: Env) -> None:
    # Concurrency 1 reads at most max(8, worker_queue_max) tasks ahead; with the queue at
    # 8, twenty tasks waiting for a ten-minute backoff would stop the worker from reading
    # (and hold its one slot) if waiting counted.
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="1", TASKFLOW_WORKER_QUEUE_MAX="8",
             TASKFLOW_RETRY_BASE_S="600", TASKFLOW_RETRY_CAP_S="600")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": f"f{i}", "type": "fail", "payload": {}, "max_attempts": 3}
            for i in range(20)]})
        assert r.status_code == 202, r.text
        failing = [i["task_id"] for i in r.json()["items"]]
        for tid in failing:
            await wait_status(c, tid, {"RETRYING"}, timeout=60)
        now = await submit(c, {"title": "now", "payload": {"message": "now"}})
        doc: dict[str, Any] = await wait_status(c, now, {"DONE"}, timeout=60)
        assert doc["result"] == "now"
        for tid in failing[:3]:
            assert (await c.get(f"/tasks/{tid}")).json()["status"] == "RETRYING"
