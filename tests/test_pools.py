"""Worker pools: ``taskflow worker --types`` serves only its types, and a task whose type
no running worker serves waits as PENDING instead of failing, then runs once one starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx

from events.pools import group_types, pool_group, serves, type_list
from tests.helpers import ROOT, Env
from tests.test_worker import history, submit, wait_status

TYPES = "echo,sleep,fail,flaky,compute,noop,pooled"


def test_pool_groups_and_what_each_serves() -> None:
    assert type_list(" http,email,http ") == ("email", "http")
    assert pool_group("tf.worker", ("email", "http")) == "tf.worker.pool.email+http"
    assert pool_group("tf.worker", ()) == "tf.worker"
    assert group_types("tf.worker", "tf.worker.pool.email+http") == ("email", "http")
    assert group_types("tf.worker", "tf.worker") == ()
    assert group_types("tf.worker", "tf.workers") is None
    assert serves("email", types=("email",), pooled=("email",))
    assert not serves("echo", types=("email",), pooled=("email",))
    assert not serves("email", types=(), pooled=("email",))
    assert serves("echo", types=(), pooled=("email",))


def _pid(source: str) -> int:
    return int(source.rsplit("-", 1)[1])


async def test_a_pooled_type_waits_then_runs_in_its_own_pool(env: Env) -> None:
    env.extra.update(TASKFLOW_TASK_TYPES=TYPES, TASKFLOW_POOLED_TYPES="pooled")
    env.proc("projector")
    # The default pool has the handler too: it must still leave the type to its pool.
    default = env.proc("worker", TASKFLOW_HANDLER_MODULES="tests.plugin_handlers")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "p", "type": "pooled", "payload": {}})
        echo = await submit(c, {"title": "e", "payload": {"message": "m"}})
        await wait_status(c, echo, {"DONE"})
        await asyncio.sleep(3)
        assert (await c.get(f"/tasks/{tid}")).json()["status"] == "PENDING"
        pool = env.proc("worker", "--types", "pooled",
                        TASKFLOW_HANDLER_MODULES="tests.plugin_handlers")
        doc = await wait_status(c, tid, {"DONE", "FAILED"}, timeout=90)
        assert doc["status"] == "DONE" and doc["result"] == "pooled ok"
        echo2 = await submit(c, {"title": "e2", "payload": {"message": "m"}})
        await wait_status(c, echo2, {"DONE"})
        ran = {t: [e["source"] for e in await history(c, t) if e["type"] == "task.processing"]
               for t in (tid, echo, echo2)}
    assert [_pid(s) for s in ran[tid]] == [pool.pid]
    assert [_pid(s) for s in ran[echo] + ran[echo2]] == [default.pid, default.pid]


async def test_a_type_without_a_handler_waits_instead_of_failing(env: Env) -> None:
    env.extra.update(TASKFLOW_TASK_TYPES=TYPES)
    env.proc("projector")
    first = env.proc("worker")  # no handler for "pooled"
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "p", "type": "pooled", "payload": {}})
        echo = await submit(c, {"title": "e", "payload": {"message": "m"}})
        await wait_status(c, echo, {"DONE"})
        await asyncio.sleep(3)
        assert (await c.get(f"/tasks/{tid}")).json()["status"] == "PENDING"
        assert first.terminate() == 0
        env.proc("worker", TASKFLOW_HANDLER_MODULES="tests.plugin_handlers")
        doc = await wait_status(c, tid, {"DONE", "FAILED"}, timeout=90)
    assert doc["status"] == "DONE" and doc["result"] == "pooled ok"
    assert "no handler for type 'pooled'" in first.output()


def test_types_not_pooled_are_refused_at_start(env: Env) -> None:
    out = subprocess.run([sys.executable, "-m", "cli.main", "worker", "--types", "email"],
                         cwd=ROOT, env={**os.environ, **env.vars, "TASKFLOW_POOLED_TYPES": ""},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "TASKFLOW_POOLED_TYPES" in out.stderr, out.stderr
