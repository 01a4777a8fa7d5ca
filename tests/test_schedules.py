"""Schedules over HTTP and the scheduler service, with real processes.

Each fire is checked in the log itself: for every due time exactly one ``task.created``
with the id derived from the schedule and the due time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from events.constants import SCHEDULER_SOURCE_PREFIX
from events.log import delete_topics
from events.models import EventType, TaskCreated
from events.schedules import fire_task_id, schedule_topic
from tests.helpers import Env, wait_until


@pytest.fixture
async def senv(env: Env) -> AsyncIterator[Env]:
    try:
        yield env
    finally:
        env.stop_all()
        await delete_topics(env.bootstrap, [schedule_topic(env.topic)])


TASK = {"title": "tick", "type": "echo", "payload": {"message": "tick"}}


async def create(c: httpx.AsyncClient, **body: Any) -> str:
    r = await c.post("/schedules", json={"name": "s", "task": TASK, **body})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["next_run_at"] is not None
    return str(doc["schedule_id"])


async def fired(env: Env, sid: str, *, triggers: bool = False
                ) -> list[tuple[uuid.UUID, TaskCreated]]:
    """The schedule's task.created records in the log (by default the scheduler's own,
    not manual triggers), as (task id, data)."""
    out = []
    for _, ev in await env.log_events():
        if ev.type is EventType.CREATED and isinstance(ev.data, TaskCreated) \
                and str(ev.data.schedule_id) == sid \
                and (triggers or ev.source.startswith(SCHEDULER_SOURCE_PREFIX)):
            out.append((ev.subject, ev.data))
    return out


async def fire_ids(env: Env, sid: str, *, triggers: bool = True) -> list[uuid.UUID]:
    return [tid for tid, _ in await fired(env, sid, triggers=triggers)]


def assert_once_per_due(sid: str, fires: list[tuple[uuid.UUID, TaskCreated]]) -> None:
    dues = [d.due_at for _, d in fires]
    assert all(n == 1 for n in Counter(dues).values()), Counter(dues).most_common(3)
    assert all(n == 1 for n in Counter(t for t, _ in fires).values())
    for tid, d in fires:
        assert d.due_at is not None
        assert tid == fire_task_id(uuid.UUID(sid), d.due_at)


async def services(env: Env, scheduler: bool = True) -> None:
    env.proc("projector")
    env.proc("worker")
    if scheduler:
        env.proc("scheduler")
    await env.api()


async def test_schedule_fires_every_second_and_reads_back(senv: Env) -> None:
    await services(senv)
    async with httpx.AsyncClient(base_url=senv.base_url, timeout=30) as c:
        sid = await create(c, every_s=1)
        doc = (await c.get(f"/schedules/{sid}")).json()
        assert doc["every_s"] == 1 and doc["paused"] is False and doc["task"]["title"] == "tick"

        async def done_runs() -> list[dict[str, Any]] | None:
            items = (await c.get(f"/schedules/{sid}/runs")).json()["items"]
            return items if sum(i["status"] == "DONE" for i in items) >= 3 else None

        runs = await wait_until(done_runs, timeout=60, what="three runs done")
        listed = (await c.get("/schedules")).json()["items"]
        assert [s["schedule_id"] for s in listed] == [sid]
        doc = (await c.get(f"/schedules/{sid}")).json()
        assert doc["last_due_at"] is not None and doc["next_run_at"] > doc["last_due_at"]
        assert doc["last_status"] in {"PENDING", "PROCESSING", "DONE"}
        assert runs is not None
        task = (await c.get(f"/tasks/{runs[0]['task_id']}")).json()
        assert task["schedule_id"] == sid and task["due_at"] is not None
    assert_once_per_due(sid, await fired(senv, sid))


@pytest.mark.parametrize("body,field", [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({}, "cron"),
    ({"cron": "* * * * *", "every_s": 5}, "cron"),
])
async def test_bad_schedule_is_422_naming_the_field(senv: Env, body: dict[str, Any],
                                                    field: str) -> None:
    await senv.api()
    async with httpx.AsyncClient(base_url=senv.base_url, timeout=30) as c:
        r = await c.post("/schedules", json={"name": "bad", "task": TASK, **body})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(e["loc"][-1] == field for e in r.json()["errors"]), r.text


async def test_pause_resume_and_trigger(senv: Env) -> None:
    await services(senv)
    async with httpx.AsyncClient(base_url=senv.base_url, timeout=30) as c:
        sid = await create(c, every_s=1)
        await wait_until(lambda: _n_runs(c, sid, 2), timeout=30, what="two fires")
        r = await c.post(f"/schedules/{sid}:pause")
        assert r.status_code == 200, r.text
        assert (await c.post(f"/schedules/{sid}:pause")).status_code in (200, 409)
        await wait_until(lambda: _paused(c, sid, True), timeout=20, what="paused")
        await asyncio.sleep(1.5)  # a fire committed just before the pause may still land
        before = len(await fire_ids(senv, sid))
        await asyncio.sleep(3)
        assert len(await fire_ids(senv, sid)) == before  # nothing fires while paused
        r = await c.post(f"/schedules/{sid}:trigger")
        assert r.status_code == 202, r.text
        trig = r.json()["task_id"]
        task = await wait_until(lambda: _task_done(c, trig), timeout=30, what="trigger ran")
        assert task is not None and task["schedule_id"] == sid
        assert len(await fire_ids(senv, sid)) == before + 1
        assert (await c.post(f"/schedules/{sid}:resume")).status_code == 200
        await wait_until(lambda: _more_fires(senv, sid, before + 3), timeout=30,
                         what="fires after resume")
        assert (await c.delete(f"/schedules/{sid}")).status_code == 204
        await wait_until(lambda: _gone(c, sid), timeout=20, what="deleted")
    assert_once_per_due(sid, await fired(senv, sid))


async def _n_runs(c: httpx.AsyncClient, sid: str, n: int) -> bool:
    return len((await c.get(f"/schedules/{sid}/runs")).json()["items"]) >= n


async def _paused(c: httpx.AsyncClient, sid: str, paused: bool) -> bool:
    return bool((await c.get(f"/schedules/{sid}")).json()["paused"] is paused)


async def _task_done(c: httpx.AsyncClient, tid: str) -> dict[str, Any] | None:
    r = await c.get(f"/tasks/{tid}")
    doc: dict[str, Any] = r.json()
    return doc if r.status_code == 200 and doc["status"] == "DONE" else None


async def _more_fires(env: Env, sid: str, n: int) -> bool:
    return len(await fire_ids(env, sid)) >= n


async def _gone(c: httpx.AsyncClient, sid: str) -> bool:
    return (await c.get(f"/schedules/{sid}")).status_code == 404


def _now() -> datetime:
    return datetime.now(UTC)
