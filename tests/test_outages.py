"""Outages are waited out: Postgres and Kafka restarts, a stalled broker, a killed child.

Each test runs one ``taskflow run`` against a private stack (``tests.faultstack``), so
that restarting Kafka or Postgres never disturbs the other tests. Tasks are submitted
before, during and after the fault. Afterwards every task in the log has exactly one
terminal event, the read model holds every one of them as finished,
``taskflow projections verify`` finds no difference, and (for the outages) the very
same API, worker and projector processes are still running: nobody restarted anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from events.db import ensure_database, migrate
from events.log import delete_topics, ensure_topic
from events.models import EventType
from tests.faultstack import FaultStack, private_stack, run_pids
from tests.helpers import Env, Proc, SSEReader, free_port, new_name, wait_until

__all__ = ["private_stack"]  # the fixture, imported for the tests below

# How long the broker stays frozen in the stall test (the 30 s by default).
STALL_S = float(os.environ.get("TASKFLOW_TEST_STALL_S", "30"))
TERMINAL = {EventType.DONE, EventType.FAILED, EventType.CANCELLED}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass
class Run:
    """One ``taskflow run`` on the private stack, with its own topic and database."""

    env: Env
    proc: Proc
    stack: FaultStack
    accepted: list[uuid.UUID] = field(default_factory=list)
    refused: int = 0  # submits answered 503 (Kafka away)
    last_ready: str = ""  # the last /readyz answer, for failure messages
    where: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)  # task.created's

    @property
    def url(self) -> str:
        return self.env.base_url

    def children(self) -> dict[str, int]:
        return run_pids(self.proc.output())

    async def submit(self, c: httpx.AsyncClient) -> int:
        try:
            r = await c.post(f"{self.url}/tasks", json={"title": "t",
                                                        "payload": {"message": "hi"}})
        except httpx.TransportError:
            return 0
        if r.status_code == 202:
            self.accepted.append(uuid.UUID(r.json()["task_id"]))
        else:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "retry-after" in r.headers
            self.refused += 1
        return r.status_code

    async def readyz(self, c: httpx.AsyncClient) -> httpx.Response | None:
        try:
            return await c.get(f"{self.url}/readyz", timeout=10)
        except httpx.TransportError:
            return None


@pytest.fixture
async def run(private_stack: FaultStack, request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    s = private_stack.settings
    name = new_name("out_")
    url = s.database_url.rsplit("/", 1)[0] + "/" + name
    await ensure_database(url)
    await asyncio.to_thread(migrate, url)
    topic = f"test.{name}"
    await ensure_topic(s.kafka_bootstrap, topic, 6)
    env = Env(name=name, database_url=url, topic=topic, bootstrap=s.kafka_bootstrap,
              api_port=free_port())
    proc = env.proc("run", TASKFLOW_SHUTDOWN_GRACE_S="5")
    r = Run(env=env, proc=proc, stack=private_stack)
    async with httpx.AsyncClient() as c:

        async def ready() -> bool:
            assert proc.alive(), proc.output()[-3000:]
            resp = await r.readyz(c)
            return resp is not None and resp.status_code == 200

        await wait_until(ready, timeout=60, what="taskflow run to be ready")
    try:
        yield r
    finally:
        env.stop_all()
        with contextlib.suppress(Exception):
            await delete_topics(s.kafka_bootstrap, [topic])


@contextlib.asynccontextmanager
async def flowing(r: Run, c: httpx.AsyncClient) -> AsyncIterator[None]:
    """Tasks submitted every 0.2 s for as long as the block runs."""
    stop = asyncio.Event()

    async def feed() -> None:
        while not stop.is_set():
            await r.submit(c)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        stop.set()
        await task


async def not_ready_naming(r: Run, c: httpx.AsyncClient, dependency: str) -> None:
    """/readyz answers 503 problem+json naming ``dependency``, promptly."""

    async def down() -> bool:
        t0 = time.monotonic()
        resp = await r.readyz(c)
        assert resp is not None and time.monotonic() - t0 < 8, "readyz hung"
        if resp.status_code != 503:
            return False
        assert resp.headers["content-type"].startswith("application/problem+json")
        body = resp.json()
        return dependency in body["detail"] and body["checks"][dependency] != "ok"

    await wait_until(down, timeout=30, what=f"/readyz to say {dependency} is down")


async def settled(r: Run, c: httpx.AsyncClient, *, before: int) -> None:
    """Ready again, then: every task reached exactly one terminal event, the read model
    agrees, ``projections verify`` finds nothing."""
    try:
        await wait_until(lambda: _ready(r, c), timeout=90, what="/readyz to answer 200 again")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {r.last_ready}") from None
    for _ in range(5):  # work submitted after the fault flows too
        assert await r.submit(c) == 202
    assert len(r.accepted) > before + 5

    state: dict[str, object] = {}

    async def all_finished() -> bool:
        created, terminals = await _log_tally(r)
        conn = await r.env.db()
        try:
            statuses = dict(await conn.fetch(
                "SELECT status, count(*) FROM tasks GROUP BY status"))
            cps = dict(await conn.fetch('SELECT partition, "offset" FROM projector_offsets'))
        finally:
            await conn.close()
        state.update(missing=len(set(r.accepted) - created), created=len(created),
                     open=[(str(t), r.where.get(t)) for t in created
                           if terminals.get(t, 0) != 1][:5],
                     statuses=statuses, checkpoints=cps)
        return (set(r.accepted) <= created and all(terminals.get(t, 0) == 1 for t in created)
                and sum(statuses.values()) == len(created)
                and set(statuses) <= {"DONE", "FAILED", "CANCELLED"})

    try:
        await wait_until(all_finished, timeout=120, interval=1, what="every task to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {state}") from None
    created, terminals = await _log_tally(r)
    assert all(n == 1 for n in terminals.values()) and set(terminals) == created
    verify = await asyncio.to_thread(
        r.stack.taskflow, "projections", "verify", check=False, extra_env=r.env.vars)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    assert "0 difference(s)" in verify.stderr


async def _ready(r: Run, c: httpx.AsyncClient) -> bool:
    resp = await r.readyz(c)
    r.last_ready = resp.text if resp is not None else "no answer"
    return resp is not None and resp.status_code == 200


async def _log_tally(r: Run) -> tuple[set[uuid.UUID], dict[uuid.UUID, int]]:
    created: set[uuid.UUID] = set()
    terminals: dict[uuid.UUID, int] = {}
    for rec, ev in await r.env.log_events():
        if ev.type is EventType.CREATED:
            created.add(ev.subject)
            r.where[ev.subject] = (rec.partition, rec.offset)
        elif ev.type in TERMINAL:
            terminals[ev.subject] = terminals.get(ev.subject, 0) + 1
    return created, terminals


def all_alive(pids: dict[str, int]) -> bool:
    for pid in pids.values():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
    return True


async def ride_out(r: Run, fault: Callable[[httpx.AsyncClient], object]) -> None:
    """Submit tasks before, during and after ``fault``; check nobody restarted anything."""
    pids = r.children()
    async with httpx.AsyncClient(timeout=15) as c:
        for _ in range(5):
            assert await r.submit(c) == 202
        before = len(r.accepted)
        async with flowing(r, c):
            result = fault(c)
            if asyncio.iscoroutine(result):
                await result
        await settled(r, c, before=before)
    assert all_alive(pids), r.proc.output()[-4000:]
    assert r.children() == pids
    assert "restarted" not in r.proc.output()


async def test_a_postgres_restart_is_waited_out(run: Run) -> None:
    async def fault(c: httpx.AsyncClient) -> None:
        await asyncio.to_thread(run.stack.stop_postgres)
        await not_ready_naming(run, c, "postgres")
        reads = await c.get(f"{run.url}/tasks")  # a read while Postgres is away: 503
        assert reads.status_code == 503, reads.text
        assert reads.headers["content-type"].startswith("application/problem+json")
        await asyncio.sleep(2)
        await asyncio.to_thread(run.stack.start_postgres)

    await ride_out(run, fault)
    out = run.proc.output()
    assert "postgres (change feed) unavailable, retrying" in out
    assert out.count("postgres (change feed) unavailable, retrying") == 1  # once, not per try
    assert "postgres (change feed) back after" in out


async def test_a_kafka_restart_is_waited_out(run: Run) -> None:
    async def fault(c: httpx.AsyncClient) -> None:
        await asyncio.to_thread(run.stack.stop_kafka)
        await not_ready_naming(run, c, "kafka")
        await asyncio.sleep(3)
        await asyncio.to_thread(run.stack.start_kafka)

    await ride_out(run, fault)
    assert run.refused > 0  # submits while the broker was away got 503, not a hang


async def test_a_stalled_broker_is_waited_out(run: Run) -> None:
    async def fault(c: httpx.AsyncClient) -> None:
        with run.stack.kafka_stalled():
            await not_ready_naming(run, c, "kafka")
            await asyncio.sleep(STALL_S)

    await ride_out(run, fault)


async def test_a_killed_child_of_taskflow_run_is_restarted(run: Run) -> None:
    pids = run.children()
    async with httpx.AsyncClient(timeout=15) as c:
        for _ in range(5):
            assert await run.submit(c) == 202
        before = len(run.accepted)
        async with flowing(run, c):
            await asyncio.sleep(1)
            os.kill(pids["worker"], signal.SIGKILL)
            await wait_until(lambda: _said(run.proc, "worker restarted"), timeout=30,
                             what="the worker to be restarted")
            await asyncio.sleep(1)
        await settled(run, c, before=before)
    out = run.proc.output()
    assert re.search(rf"worker \(pid {pids['worker']}\) exited with -9", out), out[-3000:]
    assert run.proc.alive()
    assert all_alive({k: v for k, v in pids.items() if k != "worker"})  # the others ran on
    # SIGTERM to `taskflow run` still stops everything, cleanly.
    assert run.proc.terminate(60) == 0
    assert not all_alive({k: v for k, v in pids.items() if k != "worker"})


async def _said(p: Proc, text: str) -> bool:
    return text in p.output()


async def test_an_api_started_while_postgres_is_away_streams_from_now_on(run: Run) -> None:
    """An API process that starts while Postgres is away has no position in the change
    feed yet. A client that connects to its SSE stream then, without Last-Event-ID, asks
    for what happens from now on: once Postgres is back it gets the new changes only,
    not the whole history of the read model. A client that resumes from an older
    position gets the changes after it, none skipped."""
    async with httpx.AsyncClient(timeout=15) as c:
        before = [await run.submit(c) for _ in range(3)]
        assert before == [202] * 3

        async def finished() -> bool:
            docs = [(await c.get(f"{run.url}/tasks/{t}")).json() for t in run.accepted]
            return all(d.get("status") == "DONE" for d in docs)

        await wait_until(finished, timeout=60, what="the first tasks to finish")
        conn = await run.env.db()
        try:
            history = int(await conn.fetchval("SELECT max(position) FROM task_changes"))
        finally:
            await conn.close()
        assert history > 0

        await asyncio.to_thread(run.stack.stop_postgres)
        try:
            port = free_port()
            await run.env.api(port=port)  # starts, and answers /healthz, without Postgres
            resume = {"Last-Event-ID": str(history - 2)}
            async with SSEReader(f"http://127.0.0.1:{port}/events") as sse, \
                    SSEReader(f"http://127.0.0.1:{port}/events", resume) as resumed:
                assert sse.status == 200 and resumed.status == 200
                await asyncio.to_thread(run.stack.start_postgres)
                await wait_until(lambda: _answers_ready(c, f"http://127.0.0.1:{port}"),
                                 timeout=60,
                                 what="the second API to see Postgres again")
                assert await run.submit(c) == 202
                new = run.accepted[-1]

                async def streamed_new() -> bool:
                    return any(new.hex in e.get("data", "").replace("-", "")
                               for e in sse.events)

                await wait_until(streamed_new, timeout=60, what="the new task on the stream")

                async def resumed_new() -> bool:
                    return any(new.hex in e.get("data", "").replace("-", "")
                               for e in resumed.events)

                await wait_until(resumed_new, timeout=60, what="the new task, resumed")
            positions = [int(e["id"]) for e in sse.events if "id" in e]
            assert positions and min(positions) > history, (history, positions[:10])
            # A client resuming from before the outage gets everything after its position
            # exactly once: the history it missed, then the new changes.
            again = [int(e["id"]) for e in resumed.events if "id" in e]
            assert again[:2] == [history - 1, history], (history, again[:10])
            assert again == sorted(set(again)) and set(positions) <= set(again)
        finally:
            await asyncio.to_thread(run.stack.start_postgres)  # idempotent


async def _answers_ready(c: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await c.get(f"{url}/readyz", timeout=10)).status_code == 200
    except httpx.TransportError:
        return False
