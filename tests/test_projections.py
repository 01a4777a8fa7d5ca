"""Projections you can trust: crash-proof batches, replay, as-of, verify, rebuild, poison."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from events import constants
from events.db import asyncpg_dsn
from events.fold import apply
from events.log import EventProducer
from events.models import TaskCreated, TaskDone, TaskProcessing, new_event
from events.settings import Settings
from projector import connections, store
from projector.service import Projector
from tests.helpers import (
    ROOT,
    Env,
    SSEReader,
    assert_read_model_is_fold_of_log,
    wait_until,
)

GOLDEN = Path(__file__).parent / "golden" / "v1_log.jsonl"


def cli(env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                         env={**os.environ, **env.vars}, capture_output=True, text=True,
                         timeout=300, check=False)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


async def produce_tasks(env: Env, n: int, *, type_: str = "noop", chunk: int = 500,
                        pause_s: float = 0.05) -> list[uuid.UUID]:
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=30)
    await producer.start()
    ids = [uuid.uuid4() for _ in range(n)]
    try:
        for i in range(0, n, chunk):
            await producer.append([
                new_event(TaskCreated(title=f"t{j}", type=type_, payload={"message": "x"}),
                          task_id=ids[j], source=constants.API_SOURCE)
                for j in range(i, min(n, i + chunk))])
            await asyncio.sleep(pause_s)
    finally:
        await producer.stop()
    return ids


async def count(env: Env, sql: str) -> int:
    conn = await env.db()
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def log_size(env: Env) -> int:
    return len(await env.read_log())


async def projected_all(env: Env, n: int) -> bool:
    return await count(env, "SELECT count(*) FROM task_events") >= n


async def produce_histories(env: Env, n: int, chunk: int = 500) -> None:
    """``n`` complete no-op histories (created, processing, done), as a worker leaves them."""
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=30)
    await producer.start()
    try:
        for i in range(0, n, chunk):
            evs = []
            for j in range(i, min(n, i + chunk)):
                tid = uuid.uuid4()
                evs += [new_event(TaskCreated(title=f"t{j}", type="noop"), task_id=tid,
                                  source=constants.API_SOURCE),
                        new_event(TaskProcessing(worker_id="w"), task_id=tid, source="w",
                                  attempt=1),
                        new_event(TaskDone(result=j), task_id=tid, source="w", attempt=1)]
            await producer.append(evs)
    finally:
        await producer.stop()


async def test_zombie_projector_on_every_partition_applies_nothing_twice(env: Env) -> None:
    """Two projectors in different groups both own every partition: each batch one of
    them folded ahead (on the other's uncommitted ground, as the pipeline does) finds
    its checkpoints moved when it locks them, and must be folded again, not written."""
    settings = Settings(database_url=env.database_url, topic=env.topic,
                        kafka_bootstrap=env.bootstrap, projector_batch_max=300)
    redone = 0
    # The race depends on timing: on a busy machine one pair can happen to take turns
    # cleanly. Another round on more of the log, then, until it has happened.
    for round_ in range(4):
        await produce_histories(env, 3000)
        pair = [Projector(settings, group_id=f"{env.topic}.zombie{round_}.{i}")
                for i in range(2)]
        for p in pair:
            await p.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.run(until_idle=True, idle_ms=1500)
                                                    for p in pair)), 120)
        finally:
            for p in pair:
                await p.stop()
        assert sum(p.events_applied for p in pair) == 9000, pair  # each event exactly once
        redone += sum(p.redone for p in pair)
        if redone:
            break
    assert redone > 0  # the race this test is about happened
    await assert_read_model_is_fold_of_log(env)


async def test_kill9_projectors_during_5000_event_stream_then_verify(env: Env) -> None:
    rng = random.Random(11)
    projectors = [env.proc("projector"), env.proc("projector")]
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="32")
    producing = asyncio.create_task(produce_tasks(env, 1700))  # ~5,100 events with workers
    for _ in range(4):
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        victim = rng.randrange(len(projectors))
        projectors[victim].kill9()
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        projectors[victim] = env.proc("projector")
    await producing

    async def terminal() -> bool:
        return await count(env, "SELECT count(*) FROM tasks WHERE status = 'DONE'") == 1700

    await wait_until(terminal, timeout=180, what="1700 DONE tasks")
    total = await log_size(env)
    assert total >= 5000
    await wait_until(lambda: projected_all(env, total), timeout=60, what="journal caught up")
    await assert_read_model_is_fold_of_log(env)
    res = cli(env, "projections", "verify")
    assert f"verified {total} event(s): 0 difference(s)" in res.stderr


async def test_verify_reports_every_difference_and_exits_1(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    ids = await produce_tasks(env, 20, type_="echo")
    await wait_until(lambda: _done(env, 20), timeout=60, what="20 DONE")
    conn = await env.db()
    try:
        await conn.execute("UPDATE tasks SET status = 'FAILED' WHERE task_id = $1", ids[3])
        await conn.execute("UPDATE tasks SET attempt = 7 WHERE task_id = $1", ids[5])
    finally:
        await conn.close()
    res = cli(env, "projections", "verify", check=False)
    assert res.returncode == 1
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    assert any(str(ids[3]) in ln and "status" in ln and "'DONE'" in ln for ln in lines)
    assert any(str(ids[5]) in ln and "attempt" in ln and "7" in ln for ln in lines)


async def _done(env: Env, n: int) -> bool:
    return await count(env, "SELECT count(*) FROM tasks WHERE status = 'DONE'") >= n


async def test_replay_streams_the_log_with_filters(env: Env) -> None:
    env.proc("worker")
    ids = await produce_tasks(env, 30, type_="echo")
    found = await wait_until(lambda: _full_log(env, 30 * 3), timeout=60, what="log")
    assert found is not None
    logged: list[Any] = found
    everything = [orjson.loads(x) for x in cli(env, "replay").stdout.splitlines()]
    assert sorted((d["position"]["partition"], d["position"]["offset"]) for d in everything) == [
        (r.partition, r.offset) for r, _ in logged]
    assert {d["id"] for d in everything} == {str(ev.id) for _, ev in logged}

    one = [orjson.loads(x) for x in cli(env, "replay", "--task", str(ids[7])).stdout.splitlines()]
    assert [d["type"] for d in one] == ["task.created", "task.processing", "task.done"]
    assert {d["subject"] for d in one} == {str(ids[7])}

    done = [orjson.loads(x) for x in cli(env, "replay", "--type", "task.done").stdout.splitlines()]
    assert len(done) == 30 and {d["type"] for d in done} == {"task.done"}

    times = sorted(ev.time for _, ev in logged)
    mid = times[len(times) // 2]
    since = [orjson.loads(x) for x in
             cli(env, "replay", "--since", mid.isoformat()).stdout.splitlines()]
    until = [orjson.loads(x) for x in
             cli(env, "replay", "--until", mid.isoformat()).stdout.splitlines()]
    assert since and until
    assert all(d["time"] >= mid.isoformat().replace("+00:00", "Z")[:19] for d in since)
    assert len(since) + len(until) >= len(logged)

    r0 = next(r for r, _ in logged if r.offset >= 2)
    frm = [orjson.loads(x) for x in cli(
        env, "replay", "--from-position", f"{r0.partition}:{r0.offset}").stdout.splitlines()]
    in_p = [d["position"]["offset"] for d in frm if d["position"]["partition"] == r0.partition]
    assert min(in_p) == r0.offset
    assert len(frm) == len(logged) - sum(1 for r, _ in logged
                                         if r.partition == r0.partition and r.offset < r0.offset)


async def _full_log(env: Env, n: int) -> list[Any] | None:
    evs = await env.log_events()
    return evs if len(evs) >= n else None


async def test_state_as_of_a_time_or_a_position(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "f", "type": "flaky",
                                         "payload": {"fail_times": 1}, "max_attempts": 3})
        tid = r.json()["task_id"]

        async def done() -> bool:
            return bool((await c.get(f"/tasks/{tid}")).json()["status"] == "DONE")

        await wait_until(done, timeout=60, what="DONE")
        hist = (await c.get(f"/tasks/{tid}/events")).json()["items"]
        kinds = [h["type"] for h in hist]
        assert kinds == ["task.created", "task.processing", "task.retry_scheduled",
                         "task.processing", "task.done"]
        expect = ["PENDING", "PROCESSING", "RETRYING", "PROCESSING", "DONE"]
        for h, status in zip(hist, expect, strict=True):
            pos = f"{h['position']['partition']}:{h['position']['offset']}"
            at_pos = (await c.get(f"/tasks/{tid}", params={"as_of": pos})).json()
            at_time = (await c.get(f"/tasks/{tid}", params={"as_of": h["time"]})).json()
            assert at_pos["status"] == status, (pos, at_pos)
            assert at_time["status"] == status
        before = (await c.get(f"/tasks/{tid}", params={"as_of": "2000-01-01T00:00:00Z"}))
        assert before.status_code == 404
        bad = await c.get(f"/tasks/{tid}", params={"as_of": "yesterday"})
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")


async def test_rebuild_swaps_with_no_read_downtime_and_no_sse_gap(env: Env) -> None:
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="32")
    await env.api()
    first = await produce_tasks(env, 600)
    await wait_until(lambda: _done(env, 600), timeout=120, what="600 DONE")
    probe = str(first[0])
    errors: list[str] = []
    reads = 0
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c, \
            SSEReader(env.base_url + "/events?after=0") as sse:

        async def reader() -> None:
            nonlocal reads
            while not stop.is_set():
                r = await c.get(f"/tasks/{probe}")
                reads += 1
                if r.status_code != 200 or r.json()["status"] != "DONE":
                    errors.append(f"{r.status_code} {r.text[:200]}")
                lst = await c.get("/tasks", params={"limit": 5})
                if lst.status_code != 200 or len(lst.json()["items"]) != 5:
                    errors.append(f"list {lst.status_code} {lst.text[:200]}")

        reading = asyncio.create_task(reader())
        more = asyncio.create_task(produce_tasks(env, 300))  # live traffic during the rebuild
        res = await asyncio.to_thread(cli, env, "projections", "rebuild")
        await more
        await wait_until(lambda: _done(env, 900), timeout=120, what="900 DONE")
        stop.set()
        await reading
        n_changes = await count(env, "SELECT count(*) FROM task_changes")
        await wait_until(lambda: _sse_count(sse, n_changes), timeout=60, what="SSE caught up")
    assert "swapped in" in res.stderr
    assert reads > 20 and not errors, errors[:5]
    conn = await env.db()
    try:
        positions = [r["position"] for r in await conn.fetch(
            "SELECT position FROM task_changes ORDER BY position")]
    finally:
        await conn.close()
    got = [int(e["id"]) for e in sse.events if "id" in e]
    assert got == positions  # every change once, in order: no gap, no replay
    total = await log_size(env)
    await wait_until(lambda: projected_all(env, total), timeout=60, what="journal caught up")
    await assert_read_model_is_fold_of_log(env)
    assert "0 difference(s)" in cli(env, "projections", "verify").stderr


# The rows, and the table's own identity: a swap puts another table in its place.
TASKS_AND_TABLE = ("SELECT task_id, status, attempt, updated_at, "
                   "'public.tasks'::regclass::oid AS oid FROM tasks ORDER BY 1")


async def test_rebuild_refuses_to_swap_in_a_read_model_the_log_cannot_reach(env: Env) -> None:
    """A read model ahead of its log (the topic was recreated or truncated under it) must
    not be rebuilt into one that silently lacks events: the live projector would carry on
    from its own checkpoints, past what the shadow never read. The rebuild exits 1, says
    where the log ends, and leaves the read model and the schema list as they were."""
    env.proc("projector")
    await produce_histories(env, 40)
    await wait_until(lambda: projected_all(env, 120), timeout=60, what="120 events applied")
    env.stop_all()
    conn = await env.db()
    try:
        partition = await conn.fetchval(
            'SELECT partition FROM projector_offsets ORDER BY "offset" DESC LIMIT 1')
        await conn.execute(
            'UPDATE projector_offsets SET "offset" = "offset" + 50 WHERE partition = $1',
            partition)
        before = await conn.fetch(TASKS_AND_TABLE)
    finally:
        await conn.close()
    res = cli(env, "projections", "rebuild", check=False)
    assert res.returncode == 1, res.stderr[-2000:]
    assert f"partition {partition}: read to offset" in res.stderr, res.stderr[-2000:]
    assert "nothing was swapped" in res.stderr
    conn = await env.db()
    try:
        after = await conn.fetch(TASKS_AND_TABLE)
        shadows = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%'")
    finally:
        await conn.close()
    assert len(before) == 40 and after == before
    assert shadows == 0


async def _sse_count(sse: SSEReader, n: int) -> bool:
    return sum(1 for e in sse.events if "id" in e) >= n


async def test_poison_records_are_parked_and_the_partition_moves_on(env: Env) -> None:
    env.proc("projector")
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        key = str(uuid.uuid4()).encode()
        p1 = await producer.append_raw(env.topic, key, b"{not json")
        unknown = orjson.dumps({"specversion": "1.0", "id": str(uuid.uuid4()),
                                "source": "x", "type": "task.teleported",
                                "subject": key.decode(), "time": "2026-01-01T00:00:00Z",
                                "data": {}})
        p2 = await producer.append_raw(env.topic, key, unknown)
        ok = uuid.UUID(key.decode())
        # Valid JSON and a valid event, but PostgreSQL cannot store U+0000 in jsonb or
        # text: before it was parked, this record stopped the projector for good.
        [p3] = await producer.append([new_event(TaskCreated(title="t", payload={"k": "a\x00"}),
                                                task_id=ok, source=constants.API_SOURCE)])
        await producer.append([new_event(TaskCreated(title="after the poison"), task_id=ok,
                                         source=constants.API_SOURCE)])
    finally:
        await producer.stop()

    async def projected() -> bool:
        return await count(env, f"SELECT count(*) FROM tasks WHERE task_id = '{ok}'") == 1

    await wait_until(projected, timeout=60, what="the good event after the poison")
    out = cli(env, "projections", "dead-letters").stdout.splitlines()
    parked = [orjson.loads(x) for x in out]
    assert [(d["partition"], d["offset"]) for d in parked] == [
        (p1.partition, p1.offset), (p2.partition, p2.offset), (p3.partition, p3.offset)]
    assert parked[0]["raw"] == "{not json" and "not JSON" in parked[0]["error"]
    assert "task.teleported" in parked[1]["error"]
    assert "NUL" in parked[2]["error"]


async def test_golden_v1_log_is_upcast_and_folded_by_the_projector(env: Env) -> None:
    env.proc("projector")
    await env.api()
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        for line in GOLDEN.read_bytes().splitlines():
            if line.strip():
                doc = orjson.loads(line)
                await producer.append_raw(env.topic, doc["subject"].encode(), line)
    finally:
        await producer.stop()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:

        async def got(tid: str) -> dict[str, Any] | None:
            r = await c.get(f"/tasks/{tid}")
            doc: dict[str, Any] = r.json()
            return doc if r.status_code == 200 and doc["status"] in ("DONE", "FAILED") else None

        ok = await wait_until(lambda: got("11111111-1111-4111-8111-111111111111"), timeout=30)
        bad = await wait_until(lambda: got("22222222-2222-4222-8222-222222222222"), timeout=30)
        crashed = await wait_until(lambda: got("33333333-3333-4333-8333-333333333333"),
                                   timeout=30)
        hist = (await c.get("/tasks/11111111-1111-4111-8111-111111111111/events")).json()
    assert ok is not None and bad is not None and crashed is not None
    assert (ok["status"], ok["payload"], ok["result"]) == ("DONE", {"message": "hello"}, "hello")
    assert (bad["status"], bad["payload"]) == ("FAILED", {})
    assert (crashed["status"], crashed["result"], crashed["attempt"]) == ("DONE", 55, 2)
    created = hist["items"][0]
    assert created["schemaversion"] == 2 and created["data"]["payload"] == {"message": "hello"}
    assert await count(env, "SELECT count(*) FROM dead_letters") == 0


async def test_metrics_show_projector_lag_per_partition(env: Env) -> None:
    await env.api()
    await produce_tasks(env, 60)  # no projector: everything is lag
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        text = (await c.get("/metrics")).text
        lag = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("taskflow_projector_lag_events{")}
        assert len(lag) == 6 and sum(lag.values()) == 60
        env.proc("projector")

        async def caught_up() -> bool:
            t = (await c.get("/metrics")).text
            return all(line.endswith(" 0.0") for line in t.splitlines()
                       if line.startswith("taskflow_projector_lag_events{"))

        await wait_until(caught_up, timeout=60, what="lag to reach 0")


async def test_a_projected_task_is_updated_without_its_definition_unless_it_changed(
        env: Env) -> None:
    """A task already in the read model whose batch leaves its definition alone gets only
    its changing columns written; a changed definition, or a row that is not there after
    all, is written whole."""
    conn = await env.db()
    await connections.init_connection(conn)
    tid = uuid.uuid4()
    worker = constants.WORKER_SOURCE_PREFIX + "t"
    created = new_event(TaskCreated(title="first", payload={"n": 1}), task_id=tid,
                        source=constants.API_SOURCE)
    s0 = apply(None, created)
    s1 = apply(s0, new_event(TaskProcessing(worker_id="t"), task_id=tid, source=worker,
                             attempt=1))
    s2 = apply(s1, new_event(TaskDone(result="ok"), task_id=tid, source=worker, attempt=1))

    async def write(state: Any, before: Any, offset: int) -> dict[str, Any]:
        async with conn.transaction():
            await store.write_batch(conn, schema="public", projection="t", topic="t",
                                    states={tid: (state, 0, offset)}, journal=[], changes=[],
                                    parked=[], checkpoints={}, before={tid: before})
        row = await conn.fetchrow("SELECT * FROM tasks WHERE task_id = $1", tid)
        return dict(row) if row is not None else {}

    try:
        assert (await write(s0, None, 0))["title"] == "first"
        # Tampered behind the projector's back: a narrow update does not write the title.
        await conn.execute("UPDATE tasks SET title = 'tampered' WHERE task_id = $1", tid)
        row = await write(s1, s0, 1)
        assert (row["status"], row["attempt"], row["last_offset"]) == ("PROCESSING", 1, 1)
        assert row["title"] == "tampered"
        # A definition that did change is written whole.
        retitled = s1.model_copy(update={"title": "second"})
        assert (await write(retitled, s1, 2))["title"] == "second"
        # The row is gone although the batch found the task: written whole, not lost.
        await conn.execute("DELETE FROM tasks WHERE task_id = $1", tid)
        row = await write(s2, s1, 3)
        assert (row["status"], row["title"], row["payload"]) == ("DONE", "first", {"n": 1})
        assert row["result"] == "ok"
    finally:
        await conn.close()


async def test_the_projectors_connections_plan_each_execution_even_after_reuse(
        env: Env) -> None:
    """The projector's state lookup must be planned for the table as it is now. The
    setting was a SET on each new pool connection, which the pool's RESET ALL on release
    undid: from its second use a connection fell back to generic plans, and the lookup
    became a sequential scan of the whole read model per batch (100-600 ms at 40,000
    tasks)."""
    pool = await connections.create_pool(asyncpg_dsn(env.database_url), min_size=1, max_size=1)
    try:
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    finally:
        await pool.close()


async def test_releasing_a_projector_connection_costs_no_round_trip(env: Env) -> None:
    """asyncpg's default release runs a reset query, one more round trip to Postgres per
    batch written; the projector's connections hold no session state, so they skip it.
    (A session setting surviving the release shows no RESET ALL ran.) A transaction left
    open is still rolled back."""
    pool = await connections.create_pool(asyncpg_dsn(env.database_url), min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'kept'")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same one
            assert await conn.fetchval("SHOW application_name") == "kept"
            tr = conn.transaction()
            await tr.start()
            await conn.execute("CREATE TEMP TABLE left_open (a int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'left_open'") == 0
    finally:
        await pool.close()


@pytest.mark.parametrize("n", [3, store.SMALL_BATCH_ROWS + 1])
async def test_a_small_and_a_big_batch_write_the_same_journal_and_changes(
        env: Env, n: int) -> None:
    """Up to SMALL_BATCH_ROWS the journal and the change feed go in as INSERTs of arrays
    (the changes with the checkpoint and the wake-up in the same statement); above, by
    COPY. Either way: every row as given, positions after the last, one wake-up naming
    the last position, the checkpoint moved."""
    conn = await env.db()
    await connections.init_connection(conn)
    listener = await env.db()
    woken: list[str] = []
    await listener.add_listener(constants.CHANGES_CHANNEL, lambda *a: woken.append(a[3]))
    tids = [uuid.uuid4() for _ in range(n)]
    when = datetime.now(UTC)
    journal = [store.JournalRow(partition=0, offset=i, task_id=t, event_id=uuid.uuid4(),
                                type="task.created", time=when, attempt=0,
                                event={"subject": str(t), "n": i})
               for i, t in enumerate(tids)]
    changes = [store.ChangeRow(task_id=t, tenant=None if i % 2 else "acme", type="echo",
                               status="PENDING", attempt=0, progress=0,
                               summary=None if i % 3 else "s", time=when, partition=0,
                               offset=i) for i, t in enumerate(tids)]
    try:
        await conn.execute("INSERT INTO projector_offsets (projection, topic, partition, "
                           "\"offset\") VALUES ('t', 't', 0, -1)")
        before = await conn.fetchval("SELECT coalesce(max(position), 0) FROM task_changes")
        async with conn.transaction():
            last = await store.write_batch(conn, schema="public", projection="t", topic="t",
                                           states={}, journal=journal, changes=changes,
                                           parked=[], checkpoints={0: n - 1})
        got = await conn.fetch("SELECT * FROM task_changes WHERE position > $1 "
                               "ORDER BY position", before)
        assert [r["position"] for r in got] == list(range(before + 1, before + n + 1))
        assert last == before + n
        assert [(r["task_id"], r["tenant"], r["summary"], r["offset"]) for r in got] == [
            (c.task_id, c.tenant, c.summary, c.offset) for c in changes]
        events = await conn.fetch('SELECT task_id, event FROM task_events ORDER BY "offset"')
        assert [(r["task_id"], r["event"]) for r in events] == [
            (j.task_id, j.event) for j in journal]
        assert await conn.fetchval("SELECT \"offset\" FROM projector_offsets "
                                   "WHERE projection = 't'") == n - 1
        await wait_until(lambda: _true(bool(woken)), timeout=5, what="the wake-up")
        assert woken == [str(last)]
    finally:
        await listener.close()
        await conn.close()


async def _true(value: bool) -> bool:
    return value
