"""Schedules over HTTP and the scheduler service, with real processes.

Each fire is checked in the log itself: for every due time exactly one ``task.created``
with the id derived from the schedule and the due time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from events.constants import SCHEDULER_SOURCE_PREFIX
from events.log import delete_topics
from events.models import EventType, ScheduleCreated, ScheduleTask, TaskCreated
from events.schedules import fire_task_id, next_due, schedule_topic
from tests.helpers import ROOT, Env, wait_until


@pytest.fixture
async def senv(env: Env) -> AsyncIterator[Env]:
    try:
        yield env
    finally:
        env.stop_all()
        await delete_topics(env.bootstrap, [schedule_topic(env.topic)])


DOWNTIME_S = 30  # seconds without a scheduler in the catchup test
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


async def schedule_log(env: Env) -> list[Any]:
    """The schedule topic's events, in partition then offset order."""
    other = dataclasses.replace(env, topic=schedule_topic(env.topic), procs=[])
    return [ev for _, ev in await other.log_events()]


def contiguous(dues: list[datetime], every_s: float) -> bool:
    return all((b - a).total_seconds() == every_s for a, b in itertools.pairwise(dues))


async def test_kill9_and_a_second_scheduler_never_double_or_skip_a_fire(senv: Env) -> None:
    env = senv
    env.proc("projector")
    env.proc("worker")
    first = env.proc("scheduler")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        sids = [await create(c, every_s=1, catchup="all", name=f"s{i}") for i in range(4)]
        await wait_until(lambda: _more_fires(env, sids[0], 3), timeout=30, what="fires")
        first.kill9()  # while it fires: some transaction may be open, some unread
        env.proc("scheduler")
        env.proc("scheduler")  # two owners at once split the partitions and fence
        await asyncio.sleep(1)
        env.procs[-1].kill9()
        await asyncio.sleep(2)
        env.proc("scheduler")
        cutoff = await wait_until(lambda: _after_restart(env, sids), timeout=60,
                                  what="fires to resume on every schedule")
    conn = await env.db()
    try:
        for sid in sids:
            fires = await fired(env, sid)
            assert_once_per_due(sid, fires)
            dues = sorted(d.due_at for _, d in fires if d.due_at is not None)
            assert contiguous(dues, 1.0), dues  # catchup all: nothing missed
            assert cutoff is not None and dues[-1] >= cutoff
            n = len(dues)
            await wait_until(lambda: _projected(conn, sid, n),  # noqa: B023
                             timeout=30, what="read model to hold every fire")
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT due_at) AS d FROM tasks "
                "WHERE schedule_id = $1 AND due_at <= $2", uuid.UUID(sid), dues[-1])
            assert row["n"] == row["d"] == len(dues)
    finally:
        await conn.close()


async def _after_restart(env: Env, sids: list[str]) -> datetime | None:
    now = datetime.now(UTC)
    for sid in sids:
        dues = [d.due_at for _, d in await fired(env, sid) if d.due_at is not None]
        if not dues or (now - max(dues)).total_seconds() > 1.5:
            return None
    return now - timedelta(seconds=1.5)


async def _projected(conn: Any, sid: str, n: int) -> bool:
    got = await conn.fetchval("SELECT count(*) FROM tasks WHERE schedule_id = $1",
                              uuid.UUID(sid))
    return bool(got >= n)


async def test_each_catchup_policy_after_scheduler_downtime(senv: Env) -> None:
    env = senv
    env.extra["TASKFLOW_SCHEDULER_GRACE_S"] = "1"
    env.proc("projector")
    env.proc("worker")
    sched = env.proc("scheduler")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        sids = {p: await create(c, every_s=1, catchup=p, name=p)
                for p in ("none", "latest", "all")}
        await wait_until(lambda: _more_fires(env, sids["none"], 2), timeout=30, what="fires")
        sched.kill9()
        down_at = datetime.now(UTC)
        await asyncio.sleep(DOWNTIME_S)  # the 30 s without any scheduler
        env.proc("scheduler")
        await wait_until(lambda: _after_restart(env, list(sids.values())), timeout=60,
                         what="fires after the restart")
    marks = [ev for ev in await schedule_log(env) if ev.type is EventType.SCHEDULE_FIRED]
    missed = {p: [m.data for m in marks if str(m.subject) == sid and m.data.outcome == "missed"]
              for p, sid in sids.items()}
    late = {p: await late_fires(env, sid, 1.0) for p, sid in sids.items()}
    for sid in sids.values():
        assert_once_per_due(sid, await fired(env, sid))
    # all: every due time of the downtime fired, late, and none is missing.
    all_dues = sorted(d.due_at for _, d in await fired(env, sids["all"]) if d.due_at)
    assert not missed["all"] and contiguous(all_dues, 1.0)
    # The due time just before the kill may still have been waiting for its tick.
    assert len([d for d in late["all"] if d > down_at]) >= DOWNTIME_S - 2
    assert all(d > down_at - timedelta(seconds=2) for d in late["all"]), late["all"]
    # none: the downtime's due times were skipped; no fire is late.
    assert sum(m.count for m in missed["none"]) >= DOWNTIME_S - 2 and not late["none"]
    # latest: one late fire, the last missed due time; the ones before it skipped.
    assert sum(m.count for m in missed["latest"]) >= DOWNTIME_S - 3
    assert len(late["latest"]) == 1, late["latest"]
    assert late["latest"][0] > max(m.due_at for m in missed["latest"]) > down_at


async def projected(c: httpx.AsyncClient, sid: str) -> None:
    """Until the schedule is in the read model (one GET waits a bounded time for it)."""
    async def found() -> bool:
        return (await c.get(f"/schedules/{sid}")).status_code == 200
    await wait_until(found, timeout=30, what="the schedule's projection")


async def late_fires(env: Env, sid: str, over_s: float) -> list[datetime]:
    """Due times the scheduler fired more than ``over_s`` after they were due."""
    return [ev.data.due_at for _, ev in await env.log_events()
            if ev.type is EventType.CREATED and isinstance(ev.data, TaskCreated)
            and str(ev.data.schedule_id) == sid and ev.data.due_at is not None
            and (ev.time - ev.data.due_at).total_seconds() > over_s]


async def test_overlap_skip_never_runs_two_at_once(senv: Env) -> None:
    await services(senv)
    async with httpx.AsyncClient(base_url=senv.base_url, timeout=30) as c:
        r = await c.post("/schedules", json={
            "name": "slow", "every_s": 1, "overlap": "skip",
            "task": {"title": "slow", "type": "sleep", "payload": {"seconds": 2.5}}})
        assert r.status_code == 201, r.text
        sid = r.json()["schedule_id"]
        await wait_until(lambda: _done_runs(c, sid, 2), timeout=60, what="two slow runs")
        runs = (await c.get(f"/schedules/{sid}/runs")).json()["items"]
        spans = []
        for run in runs:
            if run["status"] != "DONE":
                continue
            h = (await c.get(f"/tasks/{run['task_id']}/events")).json()["items"]
            start = min(datetime.fromisoformat(e["time"]) for e in h
                        if e["type"] == "task.processing")
            spans.append((start, datetime.fromisoformat(run["finished_at"])))
        doc = (await c.get(f"/schedules/{sid}")).json()
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # the next run started only after the previous one ended
    assert doc["skips"] >= 2  # due times while one ran were skipped, and counted
    marks = [ev for ev in await schedule_log(senv) if ev.type is EventType.SCHEDULE_FIRED
             and str(ev.subject) == sid]
    assert any(m.data.outcome == "overlap" for m in marks)


async def _done_runs(c: httpx.AsyncClient, sid: str, n: int) -> bool:
    items: list[dict[str, Any]] = (await c.get(f"/schedules/{sid}/runs")).json()["items"]
    done: int = sum(i["status"] == "DONE" for i in items)
    return done >= n


@pytest.mark.parametrize("zone,spring,fall", [
    ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25)),
    ("America/New_York", date(2026, 3, 8), date(2026, 11, 1)),
])
def test_daily_0230_fires_once_on_each_dst_transition_day(zone: str, spring: date,
                                                          fall: date) -> None:
    tz = ZoneInfo(zone)
    spec = ScheduleCreated(name="n", cron="30 2 * * *", timezone=zone,
                           task=ScheduleTask(title="t"))
    start = datetime(2026, 1, 1, tzinfo=tz).astimezone(UTC)
    dues, d = [], next_due(spec, start, start)
    while d is not None and d.year == 2026:
        dues.append(d.astimezone(tz))
        d = next_due(spec, start, d)
    per_day = Counter(x.date() for x in dues)
    assert per_day[spring] == 1 and per_day[fall] == 1
    assert len(dues) == 365 and set(per_day.values()) == {1}
    [s] = [x for x in dues if x.date() == spring]
    assert (s.hour, s.minute) == (3, 0)  # 02:30 does not exist: first instant after the gap
    [f] = [x for x in dues if x.date() == fall]
    assert (f.hour, f.minute, f.fold) == (2, 30, 0)  # happens twice: the first one


async def test_verify_and_rebuild_cover_schedules(senv: Env) -> None:
    from events.settings import Settings
    from projector import schedules as proj

    env = senv
    await services(env)
    settings = Settings(database_url=env.database_url, topic=env.topic,
                        kafka_bootstrap=env.bootstrap)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        a = await create(c, every_s=1, name="a")
        b = await create(c, cron="0 3 * * *", timezone="Europe/Berlin", name="b")
        gone = await create(c, every_s=3600, name="gone")
        await wait_until(lambda: _more_fires(env, a, 2), timeout=30, what="fires")
        assert (await c.post(f"/schedules/{b}:pause")).status_code == 200
        assert (await c.delete(f"/schedules/{gone}")).status_code == 204
        await wait_until(lambda: _paused(c, b, True), timeout=20, what="paused")
        await wait_until(lambda: _gone(c, gone), timeout=20, what="deleted")
    for p in env.procs:
        if p.argv[0] == "scheduler":
            p.terminate()
    diffs, n = await proj.verify(settings)
    assert n > 0 and diffs == []
    conn = await env.db()
    try:
        await conn.execute("UPDATE schedules SET paused = NOT paused, fires = fires + 7 "
                           "WHERE schedule_id = $1", uuid.UUID(b))
        await conn.execute("DELETE FROM schedules WHERE schedule_id = $1", uuid.UUID(a))
        diffs, _ = await proj.verify(settings)
        assert {(d.task_id, d.field) for d in diffs} == {
            (b, "paused"), (b, "fires"), (a, "row")}
        # A fire committed as the scheduler stopped may reach the rebuild's read and not
        # the verify's before it: the rebuild folds at least what verify saw.
        assert await proj.rebuild(settings) >= n
        diffs, _ = await proj.verify(settings)
        assert diffs == []
        row = await conn.fetchrow("SELECT paused, deleted FROM schedules WHERE schedule_id = $1",
                                  uuid.UUID(b))
        assert row["paused"] is True and row["deleted"] is False
    finally:
        await conn.close()


def _cli(env: Env, *args: str, ok: bool = True) -> str:
    res = subprocess.run([sys.executable, "-m", "cli.main", "schedules", *args], cwd=ROOT,
                         env={**os.environ, **env.vars, "TASKFLOW_API_URL": env.base_url},
                         capture_output=True, timeout=60, check=False)
    assert (res.returncode == 0) is ok, res.stderr.decode()
    return res.stdout.decode() + res.stderr.decode() * (not ok)


async def test_schedules_cli(senv: Env) -> None:
    env = senv
    await services(env)
    out = await asyncio.to_thread(_cli, env, "create", "--name", "c", "--title", "t",
                                  "--every-s", "3600", "--payload", '{"message": "m"}')
    sid = orjson.loads(out)["schedule_id"]
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        await projected(c, sid)
        listed = await asyncio.to_thread(_cli, env, "list")
        assert [orjson.loads(x)["schedule_id"] for x in listed.splitlines()] == [sid]
        await asyncio.to_thread(_cli, env, "pause", sid)
        await wait_until(lambda: _paused(c, sid, True), timeout=20, what="paused")
        await asyncio.to_thread(_cli, env, "resume", sid)
        await wait_until(lambda: _paused(c, sid, False), timeout=20, what="resumed")
        tid = orjson.loads(await asyncio.to_thread(_cli, env, "trigger", sid))["task_id"]
        await wait_until(lambda: _task_done(c, tid), timeout=30, what="triggered task done")
        await asyncio.to_thread(_cli, env, "delete", sid)
        await wait_until(lambda: _gone(c, sid), timeout=20, what="deleted")
    err = await asyncio.to_thread(_cli, env, "create", "--name", "x", "--title", "t",
                                  "--cron", "nope", ok=False)
    assert "422" in err and "cron" in err


async def test_schedules_are_tenant_scoped(senv: Env) -> None:
    from tests.test_api import cli

    env = senv
    env.proc("projector")
    env.proc("worker")
    env.proc("scheduler")
    await env.api(TASKFLOW_AUTH="true")
    a = {"Authorization": f"Bearer {cli(env, 'keys', 'create', '--tenant', 'acme')}"}
    b = {"Authorization": f"Bearer {cli(env, 'keys', 'create', '--tenant', 'globex')}"}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        assert (await c.post("/schedules", json={"name": "x", "every_s": 1, "task": TASK})
                ).status_code == 401
        r = await c.post("/schedules", json={"name": "acme", "every_s": 1, "task": TASK},
                         headers=a)
        assert r.status_code == 201, r.text
        sid = r.json()["schedule_id"]
        assert (await c.get(f"/schedules/{sid}", headers=a)).status_code == 200
        assert (await c.get(f"/schedules/{sid}", headers=b)).status_code == 404
        assert (await c.get("/schedules", headers=b)).json()["items"] == []
        for path in (":pause", ":trigger", "/runs"):
            method = c.get if path == "/runs" else c.post
            assert (await method(f"/schedules/{sid}{path}", headers=b)).status_code == 404
        assert (await c.delete(f"/schedules/{sid}", headers=b)).status_code == 404
        assert (await c.patch(f"/schedules/{sid}", json={"name": "mine"}, headers=b)
                ).status_code == 404
        async def projected_runs() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = (await c.get(f"/schedules/{sid}/runs",
                                                       headers=a)).json()["items"]
            return items

        runs = await wait_until(projected_runs, timeout=30, what="a projected fire")
        task = await c.get(f"/tasks/{runs[0]['task_id']}", headers=a)
        assert task.status_code == 200  # the fired task is acme's
        assert (await c.get(f"/tasks/{runs[0]['task_id']}", headers=b)).status_code == 404


async def test_a_record_that_is_no_schedule_event_is_parked_and_fires_go_on(
        senv: Env) -> None:
    from events.log import EventProducer

    env = senv
    await services(env)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        sid = await create(c, every_s=1)
        await wait_until(lambda: _more_fires(env, sid, 1), timeout=30, what="a fire")
        producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=5)
        await producer.start()
        try:
            pos = await producer.append_raw(schedule_topic(env.topic), uuid.UUID(sid).bytes,
                                            b"not an event")
        finally:
            await producer.stop()
        n = len(await fire_ids(env, sid))
        await wait_until(lambda: _more_fires(env, sid, n + 3), timeout=30,
                         what="fires after the poison record")
    conn = await env.db()
    try:
        rows = await wait_until(lambda: conn.fetch(
            'SELECT topic, partition, "offset", error FROM dead_letters '
            "WHERE projection = 'schedules'"), timeout=20, what="the record to be parked")
    finally:
        await conn.close()
    assert [(r["topic"], r["partition"], r["offset"]) for r in rows] == [
        (schedule_topic(env.topic), pos.partition, pos.offset)]
    assert "JSON" in rows[0]["error"]
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        text = (await c.get("/metrics")).text
    assert ('taskflow_projector_parked_records{projection="schedules",reason="decode"} 1.0'
            in text), [x for x in text.splitlines() if "parked" in x]
    # A rebuild of the task projection keeps what the scheduler parked.
    from events.settings import Settings
    from projector.maintenance import rebuild

    await rebuild(Settings(database_url=env.database_url, topic=env.topic,
                           kafka_bootstrap=env.bootstrap))
    conn = await env.db()
    try:
        kept = await conn.fetch('SELECT topic, partition, "offset" FROM dead_letters '
                                "WHERE projection = 'schedules'")
    finally:
        await conn.close()
    assert [tuple(r) for r in kept] == [(schedule_topic(env.topic), pos.partition, pos.offset)]


async def test_patch_changes_the_definition_and_is_checked_like_a_create(senv: Env) -> None:
    await services(senv)
    async with httpx.AsyncClient(base_url=senv.base_url, timeout=30) as c:
        sid = await create(c, every_s=3600, name="slow")
        await projected(c, sid)
        r = await c.patch(f"/schedules/{sid}", json={"cron": "nope"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "cron"]
        r = await c.patch(f"/schedules/{sid}", json={"timezone": "Nowhere/Land"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "timezone"]
        r = await c.patch(f"/schedules/{sid}", json={"every_s": 1, "name": "fast"})
        assert r.status_code == 200, r.text
        await wait_until(lambda: _more_fires(senv, sid, 2), timeout=30,
                         what="fires at the new interval")
        doc = (await c.get(f"/schedules/{sid}")).json()
        assert doc["name"] == "fast" and doc["every_s"] == 1 and doc["cron"] is None
        r = await c.patch(f"/schedules/{sid}", json={"cron": "0 0 1 1 *"})
        assert r.status_code == 200, r.text

        async def yearly() -> bool:
            d = (await c.get(f"/schedules/{sid}")).json()
            return bool(d["cron"] == "0 0 1 1 *" and d["every_s"] is None)

        await wait_until(yearly, timeout=20, what="the cron definition")
    assert_once_per_due(sid, await fired(senv, sid))


def test_schedule_fold_handles_every_schedule_event() -> None:
    from events.models import (
        ScheduleDeleted,
        ScheduleFired,
        SchedulePaused,
        ScheduleResumed,
        ScheduleUpdated,
        new_event,
    )
    from events.schedules import apply_schedule

    sid, t0 = uuid.uuid4(), datetime(2026, 1, 1, tzinfo=UTC)

    def ev(data: Any, s: int) -> Any:
        return new_event(data, task_id=sid, source="t", time=t0 + timedelta(seconds=s))

    spec = {"name": "n", "every_s": 10.0, "task": ScheduleTask(title="t")}
    st = apply_schedule(None, ev(ScheduleCreated(**spec), 0))
    assert st is not None and st.next_run_at() == t0 + timedelta(seconds=10)
    assert apply_schedule(st, ev(ScheduleCreated(**{**spec, "name": "dup"}), 1)) == st
    tid = uuid.uuid4()
    st = apply_schedule(st, ev(ScheduleFired(due_at=t0 + timedelta(seconds=10), task_id=tid), 10))
    assert st is not None and (st.fires, st.last_task_id) == (1, tid)
    assert st.next_run_at() == t0 + timedelta(seconds=20)
    again = apply_schedule(st, ev(ScheduleFired(due_at=t0 + timedelta(seconds=10),
                                                task_id=tid), 11))
    assert again == st  # a due time is handled once
    st = apply_schedule(st, ev(ScheduleFired(due_at=t0 + timedelta(seconds=40),
                                             outcome="missed", count=3), 45))
    assert st is not None and st.skips == 3 and st.fires == 1
    st = apply_schedule(st, ev(SchedulePaused(), 50))
    assert st is not None and st.paused and st.next_run_at() is None
    st = apply_schedule(st, ev(ScheduleResumed(), 95))
    assert st is not None and st.next_run_at() == t0 + timedelta(seconds=105)  # from resume
    st = apply_schedule(st, ev(ScheduleUpdated(**{**spec, "every_s": 60.0}), 100))
    assert st is not None and st.next_run_at() == t0 + timedelta(seconds=160)
    st = apply_schedule(st, ev(ScheduleDeleted(), 110))
    assert st is not None and st.deleted and st.next_run_at() is None
    assert apply_schedule(st, ev(ScheduleResumed(), 120)) == st  # deleted absorbs
