"""No cheap request causes heavy work; a submit that answered 503 can be retried safely.

* per-key structures stay at their bound however many keys clients make up;
* a read that waits for the projector does not poll Postgres on a timer;
* ``/stats`` counts and ``?q=`` search read indexes, not the whole table;
* a 503 on submit names the task id(s) the append may still create.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api import auth, metrics, submit
from api.app import create_app
from events import constants, queries
from events.settings import Settings
from events.tables import tasks
from tests.helpers import Env, free_port, wait_until
from tests.test_projections import cli, count, produce_tasks

PROBLEM = "application/problem+json"


@pytest.fixture
async def app(env: Env) -> AsyncIterator[FastAPI]:
    """The app in-process, its lifespan run (feed, producer, key ring); no projector."""
    settings = Settings(database_url=env.database_url, topic=env.topic,
                        kafka_bootstrap=env.bootstrap, rate_limit_per_s=0, read_wait_s=2.0,
                        auth=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                             timeout=30)


def _count(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of ``queries.<name>`` (the routes call it through the module)."""
    calls = [0]
    real: Callable[..., Awaitable[Any]] = getattr(queries, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(queries, name, counted)
    return calls


# -- bounded per-key structures ------------------------------------------------------------

async def test_idempotency_key_locks_stay_at_their_bound(app: FastAPI) -> None:
    async with _client(app) as c:
        for i in range(20):
            r = await c.post("/tasks", json={"title": f"k{i}"},
                             headers={"Idempotency-Key": f"key-{i}"})
            assert r.status_code == 202, r.text
    locks = app.state.key_locks
    assert len(locks) == submit.KEY_LOCK_STRIPES
    seen = {id(submit.key_lock(app.state, uuid.uuid4())) for _ in range(12_000)}
    assert len(seen) <= submit.KEY_LOCK_STRIPES
    assert app.state.key_locks is locks and len(locks) == submit.KEY_LOCK_STRIPES
    # The same key always maps to the same lock (the lock is what serialises its retries).
    tid = uuid.uuid4()
    assert submit.key_lock(app.state, tid) is submit.key_lock(app.state, tid)


async def test_made_up_api_keys_leave_the_key_cache_at_its_bound(app: FastAPI) -> None:
    ring: auth.KeyRing = app.state.keys
    ring.fail_rate_per_s = 0  # this test is about the cache, not the failure limit
    for i in range(auth.CACHE_MAX + 500):
        assert await ring.tenant_of(f"tfk_made{i:06d}_secret") is None
    assert len(ring._unknown) == auth.CACHE_MAX
    assert len(ring._cache) == 0  # made-up ids never take the place of known keys


def _request_samples() -> list[Any]:
    return [s for m in metrics.REQUESTS.collect() for s in m.samples]


def test_made_up_http_methods_share_one_metric_label() -> None:
    before = len(_request_samples())
    for i in range(200):
        metrics.observe_request(f"M{i}", "unmatched", 405, 0.001)
    assert not any(s.labels["method"].startswith("M") for s in _request_samples())
    assert len(_request_samples()) <= before + 2  # one label set: its total and created


# -- read-your-writes without polling -------------------------------------------------------

async def test_waiting_for_a_position_reads_checkpoints_on_wake_ups_only(
        app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """No projector runs: the position is never reached. Polling every 10 ms read the
    checkpoints about 200 times in the 2 s wait; wake-ups come once a second (the feed's
    poll) and from the projector's notifications, of which there are none."""
    calls = _count(monkeypatch, "checkpoints")
    async with _client(app) as c:
        t0 = time.monotonic()
        r = await c.get("/tasks", params={"min_position": "0:5"})
        waited = time.monotonic() - t0
    assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
    assert 1.9 <= waited < 5  # the bounded wait is kept
    assert calls[0] <= 5, calls[0]


async def test_concurrent_waiters_share_one_checkpoint_read_per_wake_up(
        app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count(monkeypatch, "checkpoints")
    async with _client(app) as c:
        rs = await asyncio.gather(*(c.get("/tasks", params={"min_position": f"{i % 6}:9"})
                                    for i in range(20)))
    assert {r.status_code for r in rs} == {503}
    assert calls[0] <= 6, calls[0]


async def test_waiting_for_an_unknown_task_reads_it_a_handful_of_times(
        app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count(monkeypatch, "get_task")
    async with _client(app) as c:
        t0 = time.monotonic()
        r = await c.get(f"/tasks/{uuid.uuid4()}")
        waited = time.monotonic() - t0
    assert r.status_code == 404
    assert waited >= 1.9
    assert calls[0] <= 3, calls[0]  # polling every 20 ms made about 100


async def test_a_waiting_read_wakes_when_the_projector_applies(env: Env) -> None:
    """With the projector running, a read of a task just accepted answers as soon as it
    is applied (woken by the projector's notification), well inside the wait."""
    env.proc("projector")
    await env.api(TASKFLOW_READ_WAIT_S="10")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        for i in range(3):
            acc = (await c.post("/tasks", json={"title": f"w{i}"})).json()
            pos = acc["position"]
            t0 = time.monotonic()
            r = await c.get(f"/tasks/{acc['task_id']}")
            assert r.status_code == 200, r.text
            r = await c.get("/tasks", params={
                "min_position": f"{pos['partition']}:{pos['offset']}"})
            assert r.status_code == 200, r.text
            assert acc["task_id"] in {t["task_id"] for t in r.json()["items"]}
            assert time.monotonic() - t0 < 8


# -- 503 names the task ----------------------------------------------------------------------

async def test_a_503_on_submit_names_the_task_the_append_may_create(env: Env) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    await env.api(TASKFLOW_KAFKA_BOOTSTRAP=dead, TASKFLOW_PRODUCE_TIMEOUT_S="1")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "unkeyed"})  # the fast path
        assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
        doc = r.json()
        uuid.UUID(doc["task_id"])
        assert "Idempotency-Key" in doc["note"] and r.headers["retry-after"]

        keyed = [await c.post("/tasks", json={"title": "keyed"},
                              headers={"Idempotency-Key": "retry-me"}) for _ in range(2)]
        assert [k.status_code for k in keyed] == [503, 503]
        # The same key names the same task on every attempt: the retry is safe.
        assert keyed[0].json()["task_id"] == keyed[1].json()["task_id"]
        assert keyed[0].json()["task_id"] == str(
            uuid.uuid5(submit.IDEMPOTENCY_NS, "\nretry-me"))

        b = await c.post("/tasks:batch", json={"tasks": [{"title": f"b{i}"} for i in range(3)]})
        assert b.status_code == 503
        ids = b.json()["task_ids"]
        assert len(ids) == 3 and len({uuid.UUID(i) for i in ids}) == 3


# -- /stats reads task_counts ---------------------------------------------------------------

_BY_STATUS = "SELECT status, count(*) AS n FROM tasks GROUP BY 1"
_COUNTED = "SELECT status, sum(n) AS n FROM task_counts GROUP BY 1 HAVING sum(n) > 0"


async def _counts_agree(env: Env) -> dict[str, int]:
    conn = await env.db()
    try:
        scanned = {r["status"]: r["n"] for r in await conn.fetch(_BY_STATUS)}
        counted = {r["status"]: r["n"] for r in await conn.fetch(_COUNTED)}
    finally:
        await conn.close()
    assert counted == scanned
    return counted


async def test_stats_counts_follow_the_projector_and_survive_a_rebuild(env: Env) -> None:
    """The triggers keep task_counts equal to a count of tasks through inserts and status
    updates, and a rebuild swaps in a shadow whose counts and triggers are its own."""
    env.proc("projector")
    await env.api()
    await produce_tasks(env, 40)
    await wait_until(lambda: _n_tasks(env, 40), timeout=60, what="40 tasks")
    assert await _counts_agree(env) == {"PENDING": 40}
    env.proc("worker")
    await wait_until(lambda: _done(env, 40), timeout=120, what="40 DONE")
    assert await _counts_agree(env) == {"DONE": 40}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        assert (await c.get("/stats")).json()["counts"] == {"DONE": 40}
    res = cli(env, "projections", "rebuild")
    assert "swapped in" in res.stderr
    assert await _counts_agree(env) == {"DONE": 40}
    await produce_tasks(env, 10)  # the swapped-in table's triggers keep counting
    await wait_until(lambda: _done(env, 50), timeout=120, what="50 DONE")
    assert await _counts_agree(env) == {"DONE": 50}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        assert (await c.get("/stats")).json()["counts"] == {"DONE": 50}


async def _n_tasks(env: Env, n: int) -> bool:
    return await count(env, "SELECT count(*) FROM tasks") >= n


async def _done(env: Env, n: int) -> bool:
    return await count(env, "SELECT count(*) FROM tasks WHERE status = 'DONE'") >= n


# -- every filter of GET /tasks, /stats and ?q= read an index ----------------------------

class _Seeded:
    """What ``bench.reads.seed`` needs of a bench world: a connection to the database."""

    def __init__(self, env: Env) -> None:
        self.env = env

    async def connect(self) -> Any:
        return await self.env.db()


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", ()):
        out += _plan_nodes(child)
    return out


async def test_each_read_of_the_read_model_uses_an_index(env: Env) -> None:
    """The real queries of GET /tasks (each filter, a cursor), /stats and the task reads,
    captured as the API sends them and EXPLAINed over 30,000 seeded tasks: none scans
    ``tasks`` whole (``?q=`` as ILIKE '%q%' did, and /stats's GROUP BY did)."""
    from sqlalchemy import event

    from bench.reads import seed
    from events.db import make_engine

    seeded = await seed(_Seeded(env), tasks=30_000)  # type: ignore[arg-type]
    # A rare type and a rare status: where a filter is selective its own index must serve
    # it (for a common one, walking creation order and filtering is the better plan).
    conn = await env.db()
    try:
        await conn.execute(
            "INSERT INTO tasks SELECT gen_random_uuid(), tenant, title, 'rare', 'RETRYING', "
            "payload, result, error, attempt, progress, progress_message, priority, "
            "max_attempts, timeout_s, not_before, cancel_requested, dead_lettered, "
            "created_at, updated_at, finished_at, partition, last_offset "
            "FROM tasks ORDER BY created_at LIMIT 20")
        await conn.execute("ANALYZE tasks")
    finally:
        await conn.close()
    engine = make_engine(env.database_url)
    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _m: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        rows, nxt = await queries.list_tasks(engine, status=None, type_=None, limit=50,
                                             cursor=None)
        reads: dict[str, Callable[[], Awaitable[Any]]] = {
            "none": lambda: queries.list_tasks(engine, status=None, type_=None, limit=50,
                                               cursor=None),
            "status": lambda: queries.list_tasks(engine, status="RETRYING", type_=None,
                                                 limit=50, cursor=None),
            "type": lambda: queries.list_tasks(engine, status=None, type_="rare", limit=50,
                                               cursor=None),
            "q": lambda: queries.list_tasks(engine, status=None, type_=None, limit=50,
                                            cursor=None, search=rows[0]["title"][11:19]),
            "cursor": lambda: queries.list_tasks(engine, status=None, type_=None, limit=50,
                                                 cursor=nxt),
            "tenant": lambda: queries.list_tasks(engine, status=None, type_=None, limit=50,
                                                 cursor=None, tenant="acme"),
            "counts": lambda: queries.status_counts(engine),
            "throughput": lambda: queries.throughput(engine, minutes=15),
            "task": lambda: queries.get_task(engine, task_id=uuid.UUID(seeded["probed"][0])),
            "events": lambda: queries.task_history(engine,
                                                   task_id=uuid.UUID(seeded["probed"][0])),
        }
        plans: dict[str, list[dict[str, Any]]] = {}
        for name, read in reads.items():
            sent.clear()
            await read()
            assert sent, name
            statements = list(sent)  # what runs below is captured too
            plans[name] = []
            # Each statement planned as it ran: after the settings the read set for it.
            async with engine.connect() as conn, conn.begin():
                for statement, params in statements:
                    if "set_config(" in statement:
                        await conn.exec_driver_sql(statement, params)
                        continue
                    doc: Any = (await conn.exec_driver_sql(
                        "EXPLAIN (FORMAT JSON) " + statement, params)).scalar()
                    plans[name] += _plan_nodes((doc if isinstance(doc, list) else
                                                json.loads(doc))[0]["Plan"])
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
        await engine.dispose()
    for name, nodes in plans.items():
        seq = [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"]
        assert not {"tasks", "task_changes", "task_events"} & set(seq), (name, nodes)
    used = {name: {n.get("Index Name") for n in nodes} for name, nodes in plans.items()}
    assert "tasks_title_trgm" in used["q"], used["q"]
    assert "tasks_type_created" in used["type"], used["type"]
    assert "tasks_status_created" in used["status"], used["status"]
    assert "tasks_tenant_created" in used["tenant"], used["tenant"]
    assert "task_changes_finished" in used["throughput"], used["throughput"]
    assert all(n.get("Relation Name") != "tasks" for n in plans["counts"])
    # The cursor is the index condition: page N starts where N-1 ended.
    assert any(n.get("Index Name") == "tasks_created" and "Index Cond" in n
               for n in plans["cursor"]), plans["cursor"]


async def test_a_title_search_pages_alike_for_rare_and_common_terms(env: Env) -> None:
    """``?q=`` asks the trigram index for every match first and walks the tasks newest
    first only for a term with more than ``SEARCH_FEW_ROWS`` matches: either way the
    pages are exactly what the plain query gives, in order, cursor included."""
    from bench.reads import seed
    from events.db import make_engine

    await seed(_Seeded(env), tasks=12_000)  # type: ignore[arg-type]
    conn = await env.db()
    try:
        rare = (await conn.fetchval("SELECT title FROM tasks ORDER BY created_at LIMIT 1"))[11:19]

        async def truth(term: str) -> list[uuid.UUID]:
            rows = await conn.fetch(
                "SELECT task_id FROM tasks WHERE title ILIKE $1 "
                "ORDER BY created_at DESC, task_id DESC LIMIT 60", f"%{term}%")
            return [r["task_id"] for r in rows]

        engine = make_engine(env.database_url)
        try:
            for term, many in ((rare, False), ("report", True)):
                want = await truth(term)
                n = await conn.fetchval("SELECT count(*) FROM tasks WHERE title ILIKE $1",
                                        f"%{term}%")
                assert (n > constants.SEARCH_FEW_ROWS) is many, (term, n)
                got: list[uuid.UUID] = []
                cursor = None
                while len(got) < len(want):
                    rows, cursor = await queries.list_tasks(
                        engine, status=None, type_=None, limit=25, cursor=cursor,
                        search=term, tenant=object())
                    got += [r["task_id"] for r in rows]
                    if cursor is None:
                        break
                assert got[:len(want)] == want, term
            # The index-only settings and the time bound end with the probe: the walk
            # that follows a common term's probe runs under the server's own settings.
            from sqlalchemy import text

            async with engine.connect() as c:
                assert await queries._few_matches(c, [tasks.c.title.ilike("%report%")]) is None
                assert (await c.execute(text("SHOW statement_timeout"))).scalar() == "0"
                assert (await c.execute(text("SHOW enable_indexscan"))).scalar() == "on"
        finally:
            await engine.dispose()
    finally:
        await conn.close()
