"""Which pools run, and why a task waits: each worker's row in ``worker_pools`` feeds
``/handlers``' ``pools`` and a PENDING task's ``waiting_reason``; a clean stop removes the
row at once, a worker killed with SIGKILL lapses after a few refresh intervals."""

from __future__ import annotations

import socket
from typing import Any

import httpx

from tests.helpers import Env, free_port, wait_until
from tests.test_worker import submit, wait_status

TYPES = "echo,sleep,fail,flaky,compute,noop,pooled"
REASON = "no running worker pool serves type 'pooled'"


def _worker_id(pid: int) -> str:
    return f"{socket.gethostname()}-{pid}"


async def _pools(c: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    r = await c.get("/handlers")
    assert r.status_code == 200, r.text
    return {p["pool"]: p for p in r.json()["pools"]}


async def test_a_task_no_pool_serves_says_why_it_waits(env: Env) -> None:
    env.extra.update(TASKFLOW_TASK_TYPES=TYPES, TASKFLOW_POOLED_TYPES="pooled",
                     TASKFLOW_HANDLER_MODULES="tests.plugin_handlers")
    env.proc("projector")
    # A long refresh: its row can go away at its stop only by being deleted.
    default = env.proc("worker", TASKFLOW_WORKER_POOL_REFRESH_S="120")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "p", "type": "pooled", "payload": {}})
        echo = await submit(c, {"title": "e", "payload": {"message": "m"}})
        await wait_status(c, echo, {"DONE"})
        pools = await wait_until(lambda: _pools(c), what="the default pool in /handlers")
        assert set(pools) == {"default"}
        assert pools["default"]["workers"] == 1 and pools["default"]["seen_at"]
        assert "echo" in pools["default"]["types"] and "pooled" not in pools["default"]["types"]
        handlers = (await c.get("/handlers")).json()
        assert handlers["types"] == TYPES.split(",") and handlers["unserved"] == ["pooled"]

        doc = (await c.get(f"/tasks/{tid}")).json()
        assert (doc["status"], doc["waiting_reason"]) == ("PENDING", REASON)
        [item] = (await c.get("/tasks", params={"type": "pooled"})).json()["items"]
        assert item["waiting_reason"] == REASON
        assert (await c.get(f"/tasks/{echo}")).json()["waiting_reason"] is None

        # A pool for the type starts: the task runs, and /handlers shows the pool.
        pool = env.proc("worker", "--types", "pooled", TASKFLOW_WORKER_POOL_REFRESH_S="0.5")
        done = await wait_status(c, tid, {"DONE", "FAILED"}, timeout=90)
        assert (done["status"], done["waiting_reason"]) == ("DONE", None)

        async def pool_listed() -> dict[str, dict[str, Any]]:
            p = await _pools(c)
            return p if "pooled" in p else {}

        pools = await wait_until(pool_listed, what="the pooled pool in /handlers")
        assert pools["pooled"]["types"] == ["pooled"] and pools["pooled"]["workers"] == 1
        assert (await c.get("/handlers")).json()["unserved"] == []
        conn = await env.db()
        try:
            rows = {r["worker_id"]: r["pool"] for r in
                    await conn.fetch("SELECT worker_id, pool FROM worker_pools")}
        finally:
            await conn.close()
        assert rows == {_worker_id(default.pid): "default", _worker_id(pool.pid): "pooled"}

        # Killed outright: its row lapses, and a new task of the type says why it waits.
        pool.kill9()
        later = await submit(c, {"title": "p2", "type": "pooled", "payload": {}})

        async def reason() -> str | None:
            doc = (await c.get(f"/tasks/{later}")).json()
            assert doc["status"] == "PENDING", doc
            return doc["waiting_reason"]  # type: ignore[no-any-return]

        assert await wait_until(reason, timeout=30, what="the waiting reason") == REASON
        assert set(await _pools(c)) == {"default"}

        # A clean stop deletes the row at once (it would hold two minutes more).
        assert default.terminate() == 0
        assert await _pools(c) == {}
        doc = (await c.get(f"/tasks/{echo}")).json()
        assert doc["status"] == "DONE" and doc["waiting_reason"] is None



async def test_a_worker_without_postgres_runs_on_and_is_reported_unserved(env: Env) -> None:
    env.proc("projector")
    nowhere = f"postgresql+asyncpg://taskflow:taskflow@127.0.0.1:{free_port()}/taskflow"
    worker = env.proc("worker", TASKFLOW_DATABASE_URL=nowhere,
                      TASKFLOW_WORKER_POOL_REFRESH_S="0.5")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        echo = await submit(c, {"title": "e", "payload": {"message": "m"}})
        assert (await wait_status(c, echo, {"DONE"}))["result"] == "m"
        handlers = (await c.get("/handlers")).json()
        assert handlers["pools"] == [] and "echo" in handlers["unserved"]
    assert worker.terminate() == 0
    assert "cannot register the worker pool default" in worker.output()
