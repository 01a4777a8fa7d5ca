"""Delayed tasks (``run_at`` / ``delay_s``): never early, no slot while waiting, cancel,
and a worker killed while they wait."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from events.fold import apply
from events.models import TaskCreated, TaskStatus, new_event
from tests.helpers import Env, assert_read_model_is_fold_of_log, wait_until
from tests.test_worker import history, submit, wait_status


def _times(h: list[dict[str, Any]], etype: str) -> list[datetime]:
    return [datetime.fromisoformat(e["time"]) for e in h if e["type"] == etype]


def test_fold_reads_a_task_with_run_at_as_delayed_until_it_starts() -> None:
    due = datetime(2030, 1, 1, tzinfo=UTC)
    tid = uuid.uuid4()
    st = apply(None, new_event(TaskCreated(title="t", run_at=due), task_id=tid, source="t"))
    assert st.status is TaskStatus.DELAYED and st.not_before == due
    now = apply(None, new_event(TaskCreated(title="t"), task_id=tid, source="t"))
    assert now.status is TaskStatus.PENDING and now.not_before is None


async def test_delayed_task_waits_for_its_time_and_shows_as_delayed(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        run_at = datetime.now(UTC) + timedelta(seconds=10)
        tid = await submit(c, {"title": "later", "payload": {"message": "hi"},
                               "run_at": run_at.isoformat()})
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": "b", "payload": {"message": "b"}, "delay_s": 8}]})
        assert r.status_code == 202 and r.json()["items"][0]["status"] == "DELAYED"
        batch_tid = r.json()["items"][0]["task_id"]
        doc = await wait_status(c, tid, {"DELAYED"})
        assert datetime.fromisoformat(doc["not_before"]) == run_at
        await wait_status(c, batch_tid, {"DELAYED"})  # another partition: projected apart
        listed = (await c.get("/tasks", params={"status": "DELAYED"})).json()["items"]
        assert {tid, batch_tid} <= {t["task_id"] for t in listed}
        await wait_status(c, tid, {"DONE"}, timeout=60)
        await wait_status(c, batch_tid, {"DONE"}, timeout=60)
        h = await history(c, tid)
        hb = await history(c, batch_tid)
    assert _times(h, "task.processing")[0] >= run_at
    due_b = datetime.fromisoformat(hb[0]["data"]["run_at"])
    assert _times(hb, "task.processing")[0] >= due_b
    await assert_read_model_is_fold_of_log(env)


async def test_run_at_needs_an_offset_and_excludes_delay_s(env: Env) -> None:
    env.proc("projector")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "x", "run_at": "2030-01-01T00:00:00"})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "run_at" in r.text
        r = await c.post("/tasks", json={"title": "x", "delay_s": 1,
                                         "run_at": "2030-01-01T00:00:00Z"})
        assert r.status_code == 422 and "not both" in r.text
        r = await c.post("/tasks", json={"title": "x", "delay_s": -1})
        assert r.status_code == 422 and "delay_s" in r.text


async def test_cancel_while_waiting_never_starts_it(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "never", "payload": {"message": "x"}, "delay_s": 30})
        await wait_status(c, tid, {"DELAYED"})
        assert (await c.post(f"/tasks/{tid}/cancel")).status_code == 202
        await wait_status(c, tid, {"CANCELLED"}, timeout=20)
        h = [e["type"] for e in await history(c, tid)]
    assert "task.processing" not in h and h[-1] == "task.cancelled"


async def test_waiting_tasks_hold_no_worker_slot(env: Env) -> None:
    # Concurrency 1: the worker stops polling past 8 tasks in flight. Forty delayed tasks
    # must not count, or the task submitted after them would never run.
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="1")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": f"d{i}", "payload": {"message": "x"}, "delay_s": 600}
            for i in range(40)]})
        assert r.status_code == 202
        delayed = [i["task_id"] for i in r.json()["items"]]
        now = await submit(c, {"title": "now", "payload": {"message": "now"}})
        await wait_status(c, now, {"DONE"}, timeout=60)
        for tid in delayed[:3]:
            assert (await c.get(f"/tasks/{tid}")).json()["status"] == "DELAYED"


async def test_delayed_task_survives_a_worker_kill9(env: Env) -> None:
    env.proc("projector")
    w = env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "later", "payload": {"message": "hi"},
                               "delay_s": 6})
        await wait_status(c, tid, {"DELAYED"})
        # Let the worker take it in (and commit past it, if it would), then kill it.
        await wait_until(lambda: _worker_saw(w.output()), timeout=20, what="worker up")
        w.kill9()
        env.proc("worker")
        await wait_status(c, tid, {"DONE"}, timeout=60)
        h = await history(c, tid)
    due = datetime.fromisoformat(h[0]["data"]["run_at"])
    assert _times(h, "task.processing")[0] >= due
    assert [e["type"] for e in h] == ["task.created", "task.processing", "task.done"]


async def _worker_saw(out: str) -> bool:
    return "assigned" in out
