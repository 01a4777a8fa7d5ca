"""Retention of the read model: finished tasks older than TASKFLOW_RETENTION_DAYS leave
``tasks`` and ``task_events``, and verify and rebuild agree with what is left."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from playwright.async_api import Browser

from events.log import EventProducer
from events.models import (
    CloudEvent,
    TaskCreated,
    TaskDone,
    TaskFailed,
    TaskProcessing,
    new_event,
)
from tests.helpers import ROOT, Env, wait_until
from tests.test_dashboard import browser, open_dashboard

__all__ = ["browser"]  # the fixture, for the dashboard's retention panel


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                         env={**os.environ, **env.vars}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _life(tid: uuid.UUID, created: datetime, finished: datetime | None,
          failed: bool = False) -> list[CloudEvent]:
    src = "taskflow/worker/w"
    events = [new_event(TaskCreated(title=f"t{tid}", payload={"message": "m"}), task_id=tid,
                        source="taskflow/api", time=created)]
    if finished is not None:
        events.append(new_event(TaskProcessing(worker_id="w"), task_id=tid, source=src,
                                attempt=1, time=finished))
        end = TaskFailed(error="boom") if failed else TaskDone(result="m")
        events.append(new_event(end, task_id=tid, source=src, attempt=1, time=finished))
    return events


async def _tasks(env: Env) -> set[uuid.UUID]:
    conn = await env.db()
    try:
        return {r["task_id"] for r in await conn.fetch("SELECT task_id FROM tasks")}
    finally:
        await conn.close()


async def test_retention_removes_old_finished_tasks_and_rebuild_and_verify_agree(
        env: Env, browser: Browser) -> None:
    env.extra.update({"TASKFLOW_RETENTION_DAYS": "30",
                      "TASKFLOW_RETENTION_SWEEP_INTERVAL_S": "0.3",
                      "TASKFLOW_CHANGES_TRIM_INTERVAL_S": "0.3"})
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    old_done, old_failed, old_open, new_done, late_finish = (uuid.uuid4() for _ in range(5))
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=30)
    try:
        await producer.append([*_life(old_done, old, old), *_life(old_failed, old, old, True),
                               *_life(old_open, old, None), *_life(new_done, now, now),
                               *_life(late_finish, old, now)])
    finally:
        await producer.stop()
    kept = {old_open, new_done, late_finish}
    env.proc("projector")
    await env.api()
    await wait_until(lambda: _expired(env, kept), timeout=60, what="the two old tasks expired")
    conn = await env.db()
    try:
        journal = {r["task_id"] for r in await conn.fetch("SELECT task_id FROM task_events")}
    finally:
        await conn.close()
    assert journal == kept
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        stats = (await c.get("/stats")).json()
        assert stats["retention"]["days"] == 30 and stats["retention"]["expired"] == 2
        assert datetime.fromisoformat(stats["retention"]["cutoff"]) > old
        assert (await c.get(f"/tasks/{old_done}")).status_code == 404
        assert (await c.get(f"/tasks/{late_finish}")).json()["status"] == "DONE"
    dash = await open_dashboard(browser, env)
    await dash.until("Array.from(document.querySelectorAll('#retention li'), li => li.textContent)"
                     ".join('|') === '3 kept|2 expired (> 30 d)'")

    assert "verified 13 event(s): 0 difference(s)" in cli(env, "projections", "verify").stderr
    cli(env, "projections", "rebuild")
    assert await _tasks(env) == kept  # the rebuilt model applies the same rule
    assert "0 difference(s)" in cli(env, "projections", "verify").stderr
    # The log keeps everything: replay still shows an expired task's history.
    replayed = cli(env, "replay", "--task", str(old_done)).stdout.splitlines()
    assert len(replayed) == 3


async def _expired(env: Env, kept: set[uuid.UUID]) -> bool:
    return await _tasks(env) == kept
