"""End to end on the real Kafka and Postgres, with every service in its own process."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Sequence

import httpx
import orjson

from api.schemas import TaskAccepted
from tests.helpers import Env, SSEReader, assert_read_model_is_fold_of_log, wait_until

TERMINAL_TYPES = {"task.done", "task.failed", "task.cancelled"}


async def _submit(client: httpx.AsyncClient, n: int, *, start: int = 0) -> dict[str, bool]:
    """Submit ``n`` echo tasks, even ones with a message; returns task_id -> has_message."""
    sem = asyncio.Semaphore(20)
    out: dict[str, bool] = {}

    async def one(i: int) -> None:
        with_msg = i % 2 == 0
        body = {"title": f"task {i}", "payload": {"message": f"m{i}"} if with_msg else {}}
        async with sem:
            r = await client.post("/tasks", json=body)
        assert r.status_code == 202, r.text
        doc = r.json()
        assert r.headers["location"] == f"/tasks/{doc['task_id']}"
        assert r.headers["content-type"] == "application/json"
        assert doc["status"] == "PENDING"
        # The documented TaskAccepted, exactly (the 202 is encoded by hand).
        assert TaskAccepted.model_validate(doc).model_dump(mode="json") == doc
        out[doc["task_id"]] = with_msg

    await asyncio.gather(*(one(i) for i in range(start, start + n)))
    return out


async def _all_terminal(env: Env, n: int) -> bool:
    conn = await env.db()
    try:
        done = await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE status IN ('DONE','FAILED','CANCELLED')")
    finally:
        await conn.close()
    return bool(done == n)


async def test_200_tasks_follow_the_echo_rule_and_sse_sees_every_change(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as client, \
            SSEReader(env.base_url + "/events") as sse:
        submitted = await _submit(client, 200)
        await wait_until(lambda: _all_terminal(env, 200), timeout=90, what="200 terminal tasks")

        for tid, with_msg in submitted.items():
            task = (await client.get(f"/tasks/{tid}")).json()
            hist = (await client.get(f"/tasks/{tid}/events")).json()["items"]
            types = [h["type"] for h in hist]
            if with_msg:
                assert task["status"] == "DONE"
                assert task["result"] == task["payload"]["message"]
                assert types == ["task.created", "task.processing", "task.done"]
            else:
                assert task["status"] == "FAILED"
                assert "message" in task["error"]
                assert types == ["task.created", "task.processing", "task.failed",
                                 "task.dead_lettered"]
            offsets = [(h["position"]["partition"], h["position"]["offset"]) for h in hist]
            assert offsets == sorted(offsets) and len({p for p, _ in offsets}) == 1

        conn = await env.db()
        try:
            rows = await conn.fetch("SELECT position, task_id::text AS tid, type "
                                    "FROM task_changes ORDER BY position")
        finally:
            await conn.close()
        await wait_until(lambda: _len_at_least(sse.events, len(rows) + 1), timeout=30,
                         what="SSE to deliver every change")
    got = [(int(e["id"]), orjson.loads(e["data"])["task_id"], e["event"])
           for e in sse.events if "id" in e]
    assert any(e.get("retry") == "2000" for e in sse.events)
    assert got == [(r["position"], r["tid"], r["type"]) for r in rows]
    per_task: dict[str, list[str]] = defaultdict(list)
    for _, tid, etype in got:
        per_task[tid].append(etype)
    assert set(per_task) == set(submitted)
    for tid, with_msg in submitted.items():
        assert per_task[tid][:2] == ["task.created", "task.processing"]
        assert per_task[tid][2] == ("task.done" if with_msg else "task.failed")


async def _len_at_least(items: Sequence[object], n: int) -> bool:
    return len(items) >= n


async def test_projector_kill9_midstream_loses_nothing_and_applies_nothing_twice(
        env: Env) -> None:
    rng = random.Random(7)
    projector = env.proc("projector")
    env.proc("worker")
    await env.api()
    submitted: dict[str, bool] = {}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as client:
        for round_ in range(4):
            batch = asyncio.create_task(_submit(client, 100, start=round_ * 100))
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            projector.kill9()
            submitted |= await batch
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            projector = env.proc("projector")
        await wait_until(lambda: _all_terminal(env, 400), timeout=120,
                         what="400 terminal tasks")
    await asyncio.sleep(1.0)  # let the last terminal events (dead_lettered) be projected
    await assert_read_model_is_fold_of_log(env)
    assert len(submitted) == 400
