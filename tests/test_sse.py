"""The SSE stream: resume without gaps, filters, reset, per-task stream, slow clients."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import uuid
from typing import Any

import httpx
import orjson

from api.feed import ChangeFeed, Filter
from events.constants import CHANGES_CHANNEL
from tests.helpers import ARTIFACTS, ROOT, Env, SSEReader, free_port, wait_until
from tests.test_projections import count, produce_tasks


async def positions(env: Env) -> list[int]:
    conn = await env.db()
    try:
        return [r["position"] for r in await conn.fetch(
            "SELECT position FROM task_changes ORDER BY position")]
    finally:
        await conn.close()


async def read_some(url: str, last: int | None, n: int, seconds: float) -> list[int]:
    """Connect (resuming after ``last``), read up to ``n`` events or ``seconds``, hang up."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    got: list[int] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as c:
        try:
            async with asyncio.timeout(seconds), c.stream("GET", url, headers=headers) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("id:"):
                        got.append(int(line[3:].strip()))
                        if len(got) >= n:
                            break
        except TimeoutError:
            pass
    return got


async def test_random_disconnects_resume_exactly_once_with_two_projectors(env: Env) -> None:
    rng = random.Random(5)
    env.proc("projector")
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="32")
    await env.api()
    producing = asyncio.create_task(produce_tasks(env, 500))
    seen: list[int] = []
    last: int | None = 0
    done = False
    while not done:
        got = await read_some(env.base_url + "/events", last, rng.randint(1, 200),
                              rng.uniform(0.05, 1.0))
        seen += got
        if got:
            last = got[-1]
        if producing.done() and await count(
                env, "SELECT count(*) FROM tasks WHERE status = 'DONE'") == 500:
            expected = await positions(env)
            done = bool(seen) and seen[-1] == expected[-1]
    await producing
    assert seen == await positions(env)  # every change, in order, exactly once
    assert len(seen) >= 1500


async def test_filters_task_id_status_and_type(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    base = env.base_url + "/events"
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        ids = [(await c.post("/tasks", json={"title": f"f{i}", "payload": {"message": "x"}}))
               .json()["task_id"] for i in range(6)]

        async def all_done() -> bool:
            return await count(env, "SELECT count(*) FROM tasks WHERE status='DONE'") == 6

        await wait_until(all_done, timeout=60)
    qs = f"after=0&task_id={ids[0]}&task_id={ids[1]}"
    async with SSEReader(f"{base}?{qs}") as by_task, \
            SSEReader(f"{base}?after=0&status=DONE") as by_status, \
            SSEReader(f"{base}?after=0&type=task.created&type=task.processing") as by_type:
        await wait_until(lambda: _n(by_task, 6), timeout=20)
        await wait_until(lambda: _n(by_status, 6), timeout=20)
        await wait_until(lambda: _n(by_type, 12), timeout=20)
        await asyncio.sleep(0.5)
    assert {_data(e)["task_id"] for e in _ev(by_task)} == {ids[0], ids[1]}
    assert len(_ev(by_task)) == 6
    assert {_data(e)["status"] for e in _ev(by_status)} == {"DONE"} and len(_ev(by_status)) == 6
    assert {e["event"] for e in _ev(by_type)} == {"task.created", "task.processing"}
    assert len(_ev(by_type)) == 12


def _ev(r: SSEReader) -> list[dict[str, str]]:
    return [e for e in r.events if "id" in e]


def _data(e: dict[str, str]) -> dict[str, Any]:
    d: dict[str, Any] = orjson.loads(e["data"])
    return d


async def _n(r: SSEReader, n: int) -> bool:
    return len(_ev(r)) >= n


async def test_trimmed_position_gets_reset_event(env: Env) -> None:
    env.proc("projector", TASKFLOW_CHANGES_RETENTION_ROWS="10",
             TASKFLOW_CHANGES_TRIM_INTERVAL_S="0.3")
    env.proc("worker")
    await env.api()
    await produce_tasks(env, 20)

    async def trimmed() -> int:
        return await count(env, "SELECT trimmed_upto FROM change_retention")

    async def all_done() -> bool:
        return await count(env, "SELECT count(*) FROM tasks WHERE status = 'DONE'") == 20

    mark = await wait_until(trimmed, timeout=60, what="retention to trim")
    # Only new changes may follow the reset: let the 20 tasks finish, and let the API's
    # feed see the newest change (a probe resuming just before it gets it, backlog or live).
    await wait_until(all_done, timeout=60, what="the 20 tasks to finish")
    head = (await positions(env))[-1]
    async with SSEReader(env.base_url + "/events",
                         headers={"Last-Event-ID": str(head - 1)}) as probe:
        await wait_until(lambda: _n(probe, 1), timeout=20, what="the feed to reach the head")
    assert [int(e["id"]) for e in _ev(probe)] == [head]
    async with SSEReader(env.base_url + "/events",
                         headers={"Last-Event-ID": "1"}) as sse:
        await wait_until(lambda: _n(sse, 1), timeout=20, what=f"reset; got {sse.events}")
        async with httpx.AsyncClient(base_url=env.base_url) as c:
            r = await c.post("/tasks", json={"title": "after reset", "payload": {"message": "m"}})
            tid = r.json()["task_id"]
        await wait_until(lambda: _n(sse, 3), timeout=20)
    first = _ev(sse)[0]
    assert first["event"] == "reset"
    body = _data(first)
    assert body["trimmed_upto"] >= mark and int(first["id"]) == body["position"]
    assert body["position"] >= head
    live = _ev(sse)[1:]
    assert live and all(_data(e)["task_id"] == tid for e in live)  # continues live after it
    assert all(int(e["id"]) > body["position"] for e in live)
    # A client inside the retained range gets no reset (well inside: trimming goes on).
    await wait_until(lambda: _done_task(env, tid), timeout=20)
    keep = (await positions(env))[-4]
    async with SSEReader(env.base_url + "/events", headers={"Last-Event-ID": str(keep)}) as ok:
        await wait_until(lambda: _n(ok, 3), timeout=20)
    assert all(e["event"] != "reset" for e in _ev(ok))


async def _done_task(env: Env, tid: str) -> bool:
    return await count(env, f"SELECT count(*) FROM tasks WHERE task_id = '{tid}' "
                            "AND status = 'DONE'") == 1


async def test_per_task_stream_starts_with_snapshot_and_ends_after_terminal(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "s", "type": "sleep",
                                         "payload": {"seconds": 1.5}})
        tid = r.json()["task_id"]
        events: list[tuple[str, dict[str, Any]]] = []
        async with asyncio.timeout(30), c.stream("GET", f"/tasks/{tid}/stream") as resp:
            kind = ""
            async for line in resp.aiter_lines():  # ends by itself after the terminal event
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((kind, orjson.loads(line[5:])))
        done = await c.get(f"/tasks/{tid}/stream")  # already terminal: snapshot only
        missing = await c.get(f"/tasks/{uuid.uuid4()}/stream")
    assert events[0][0] == "snapshot" and events[0][1]["task_id"] == tid
    kinds = [k for k, _ in events[1:]]
    assert kinds[-1] == "task.done" and "task.progress" in kinds
    snap_status = events[0][1]["status"]
    assert snap_status in ("PENDING", "PROCESSING")
    assert ("task.processing" in kinds) == (snap_status == "PENDING")  # nothing twice
    assert all(d["task_id"] == tid for _, d in events[1:])
    assert done.text.count("event: snapshot") == 1 and "task.done" not in done.text
    assert missing.status_code == 404


async def test_one_database_reader_per_api_process(env: Env) -> None:
    other = free_port()
    await env.api()
    await env.api(port=other)
    readers = [SSEReader(f"http://127.0.0.1:{p}/events") for p in (env.api_port, other)
               for _ in range(15)]
    for r in readers:
        await r.__aenter__()
    try:
        conn = await env.db()
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'taskflow-feed' "
                "AND datname = current_database()")
        finally:
            await conn.close()
    finally:
        for r in readers:
            await r.__aexit__(None, None, None)
    assert n == 2


async def test_heartbeat_and_retry_hint(env: Env) -> None:
    await env.api(TASKFLOW_SSE_HEARTBEAT_S="0.5")
    async with SSEReader(env.base_url + "/events") as sse:
        await asyncio.sleep(2.0)
    assert any(e.get("retry") == "2000" for e in sse.events)
    assert sum(1 for c in sse.comments if c.startswith("ping")) >= 2


async def test_stalled_subscriber_is_dropped_and_others_keep_receiving(env: Env) -> None:
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="64")
    await env.api(TASKFLOW_SSE_QUEUE_MAX="1000", TASKFLOW_SSE_SEND_TIMEOUT_S="2",
                  TASKFLOW_API_SOCKET_SNDBUF="32768")
    out = ARTIFACTS / env.name / "healthy.ids"
    out.parent.mkdir(parents=True, exist_ok=True)
    healthy = subprocess.Popen([sys.executable, "-m", "tests.sse_reader_proc",  # noqa: ASYNC220
                                env.base_url + "/events", str(out)], cwd=ROOT)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    stalled.connect(("127.0.0.1", env.api_port))
    # It asks for the stream and then never reads a byte.
    stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    try:
        await asyncio.sleep(1.0)
        producing = asyncio.create_task(produce_tasks(env, 2000, chunk=100, pause_s=0.1))

        async def dropped() -> float:
            async with httpx.AsyncClient() as c:
                m = (await c.get(env.base_url + "/metrics")).text
            return sum(float(x.split()[1]) for x in m.splitlines()
                       if x.startswith("taskflow_sse_dropped_total "))

        await wait_until(dropped, timeout=150, what="the stalled subscriber to be dropped")
        await producing

        async def all_done() -> bool:
            return await count(env, "SELECT count(*) FROM tasks WHERE status='DONE'") == 2000

        await wait_until(all_done, timeout=150)
        expected = await positions(env)

        async def healthy_has_all() -> bool:
            return out.exists() and len(out.read_text().split()) >= len(expected)

        await wait_until(healthy_has_all, timeout=60, what="healthy subscriber to get all")
        assert [int(x) for x in out.read_text().split()] == expected
        assert await dropped() == 1  # the stalled one, and only it
    finally:
        stalled.close()
        healthy.kill()
        healthy.wait()


async def _append_changes(env: Env, n: int) -> list[int]:
    """Append ``n`` rows to task_changes and wake the feed, as a projector batch does."""
    conn = await env.db()
    try:
        rows = await conn.fetch(
            "INSERT INTO task_changes (task_id, type, status, attempt, progress, time, "
            "partition, \"offset\") SELECT gen_random_uuid(), 'task.created', 'PENDING', 0, 0, "
            "now(), 0, g FROM generate_series(1, $1) g RETURNING position", n)
        await conn.execute("SELECT pg_notify($1, '')", CHANGES_CHANNEL)
        return [r["position"] for r in rows]
    finally:
        await conn.close()


async def test_feed_without_subscribers_only_moves_its_position_and_loses_nothing(
        env: Env) -> None:
    """With nobody subscribed the feed reads only the newest position, not the rows. A
    subscriber who joins while that read is in flight joined at the old position, so the
    feed must hand it the rows it skipped, not move past them."""
    feed = ChangeFeed(env.database_url, poll_s=30)
    await feed.start()
    try:
        first = await _append_changes(env, 3)
        await wait_until(lambda: _at(feed, first[-1]), what="feed position")
        assert feed.delivered == 0
        # Hold the feed's connection so that its next read is in flight, then join.
        async with feed._lock:
            second = await _append_changes(env, 4)
            await asyncio.sleep(0.3)  # the feed saw no subscriber and waits for the lock
            stream = feed.subscribe(Filter(), after=None)
            got: list[int] = []
            reading = asyncio.create_task(_collect(stream, got, len(second)))
            await asyncio.sleep(0.1)  # the subscriber joined at the old position
        await asyncio.wait_for(reading, 10)
        assert got == second  # nothing from before it joined, nothing skipped after
        assert feed.last == second[-1]
    finally:
        await feed.stop()


async def _at(feed: ChangeFeed, position: int) -> bool:
    return feed.last == position


async def _collect(stream: Any, got: list[int], n: int) -> None:
    async for batch in stream:
        got += [c.position for c in batch]
        if len(got) >= n:
            return
