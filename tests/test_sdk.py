"""The Python SDK (``sdk/python``, ``taskflow_client``) against the real stack: every call,
typed errors, the sync client, and ``mypy --strict`` on the package."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest
from taskflow_client import (
    AsyncTaskFlow,
    BatchError,
    Conflict,
    NotFound,
    ProblemError,
    RateLimited,
    Retry,
    TaskFlow,
    TaskFlowError,
    TaskSpec,
    Unauthorized,
    ValidationError,
)

from tests.helpers import ROOT, Env, wait_until
from tests.test_api import cli


async def _stack(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()


async def test_submit_get_wait_history_list(env: Env) -> None:
    await _stack(env)
    async with AsyncTaskFlow(env.base_url) as tf:
        h = await tf.submit("hello", type="echo", payload={"message": "hi"}, priority=5)
        assert uuid.UUID(h.id) and h.status == "PENDING" and h.position.offset >= 0
        got = await tf.get(h.id)
        assert got.id == h.id and got.title == "hello" and got.priority == 5
        done = await tf.wait(h.id, timeout=60)
        assert (done.status, done.result) == ("DONE", "hi") and done.finished_at is not None
        events = await tf.history(h.id)
        assert events[0].type == "task.created"
        assert events[-1].type == "task.done" and events[0].position == h.position
        ids = {(await tf.submit(f"t{i}", payload={"message": str(i)})).id for i in range(5)}
        for i in ids:
            await tf.wait(i, timeout=60)
        pages = [p async for p in tf.list(limit=2)]
        seen = [t.id for p in pages for t in p.items]
        assert len(pages) >= 3 and all(len(p.items) <= 2 for p in pages)
        assert len(seen) == len(set(seen)) == 6 and ids | {h.id} == set(seen)
        only_done = [t async for p in tf.list(status="DONE") for t in p.items]
        assert {t.status for t in only_done} == {"DONE"}


async def test_cancel_and_retry(env: Env) -> None:
    await _stack(env)
    async with AsyncTaskFlow(env.base_url) as tf:
        slow = await tf.submit("slow", type="sleep", payload={"seconds": 30})
        act = await tf.cancel(slow.id)
        assert act.task_id == slow.id
        assert (await tf.wait(slow.id, timeout=60)).status == "CANCELLED"
        with pytest.raises(Conflict) as conflict:
            await tf.cancel(slow.id)
        assert conflict.value.status == 409 and conflict.value.task_status == "CANCELLED"
        failing = await tf.submit("boom", type="fail", max_attempts=1)
        failed = await tf.wait(failing.id, timeout=60)
        assert failed.status == "FAILED"
        again = await tf.retry(failing.id)
        assert again.task_id == failing.id and again.status == "FAILED"

        async def redriven() -> bool:
            return "task.redriven" in [e.type for e in await tf.history(failing.id)]

        await wait_until(redriven, timeout=30, what="task.redriven in the history")
        ok = await tf.submit("fine", payload={"message": "x"})
        await tf.wait(ok.id, timeout=60)
        with pytest.raises(Conflict):
            await tf.retry(ok.id)


async def test_problems_become_typed_exceptions(env: Env) -> None:
    await _stack(env)
    async with AsyncTaskFlow(env.base_url, batch=False) as tf:
        missing = str(uuid.uuid4())
        with pytest.raises(NotFound) as nf:
            await tf.get(missing)
        e = nf.value
        assert isinstance(e, ProblemError) and isinstance(e, TaskFlowError)
        assert (e.status, e.title) == (404, "Not found") and missing in e.detail
        assert e.instance == f"/tasks/{missing}" and e.type.endswith("/not-found")
        with pytest.raises(ValidationError) as bad:
            await tf.submit("", payload={})
        assert bad.value.status == 422
        assert bad.value.errors[0]["loc"] == ["body", "title"]
        with pytest.raises(ValidationError) as unknown:
            await tf.submit("x", type="no-such-type")
        assert unknown.value.errors[0]["loc"] == ["body", "type"]
        with pytest.raises(NotFound):
            await tf.cancel(missing)


async def test_submit_many_in_chunks(env: Env) -> None:
    await _stack(env)
    async with AsyncTaskFlow(env.base_url) as tf:
        specs = [TaskSpec(f"m{i}", payload={"message": str(i)}) for i in range(2500)]
        handles = await tf.submit_many(specs, chunk_size=1000)
        assert len({h.id for h in handles}) == 2500
        assert (await tf.wait(handles[-1].id, timeout=120)).result == "2499"
        mixed = [{"title": "ok"}, {"title": ""}, {"title": "ok2", "type": "echo"}]
        with pytest.raises(BatchError) as be:
            await tf.submit_many(mixed)
        ok, bad, ok2 = be.value.results
        assert isinstance(bad, ValidationError) and bad.errors[0]["loc"][:3] == [
            "body", "tasks", 1]
        assert not isinstance(ok, ProblemError) and not isinstance(ok2, ProblemError)
        assert (await tf.get(ok2.id)).title == "ok2"
    logged = [ev for _, ev in await env.log_events() if ev.type == "task.created"]
    assert len(logged) == 2502


async def test_sync_client(env: Env) -> None:
    await _stack(env)

    def use() -> tuple[str, str, int, list[str]]:
        with TaskFlow(env.base_url) as tf:
            h = tf.submit("sync", payload={"message": "s"})
            done = tf.wait(h.id, timeout=60)
            pages = list(tf.list(limit=1))
            kinds = [e.type for e in tf.history(h.id)]
            return done.status, done.result, len(pages), kinds

    status, result, pages, kinds = await asyncio.to_thread(use)
    assert (status, result, pages) == ("DONE", "s", 1)
    assert kinds[0] == "task.created" and kinds[-1] == "task.done"


async def test_api_key_and_rate_limit(env: Env) -> None:
    env.proc("projector")
    await env.api(TASKFLOW_AUTH="true", TASKFLOW_RATE_LIMIT_PER_S="2",
                  TASKFLOW_RATE_LIMIT_BURST="3")
    key = cli(env, "keys", "create", "--tenant", "acme")
    async with AsyncTaskFlow(env.base_url) as anonymous:
        with pytest.raises(Unauthorized) as denied:
            await anonymous.get(str(uuid.uuid4()))
        assert denied.value.status == 401
    async with AsyncTaskFlow(env.base_url, key, retries=Retry(attempts=1)) as tf:
        h = await tf.submit("mine", payload={"message": "k"})
        with pytest.raises(RateLimited) as limited:
            for _ in range(10):
                await tf.get(h.id)
        assert limited.value.status == 429 and (limited.value.retry_after or 0) >= 1
    async with AsyncTaskFlow(env.base_url, key) as patient:
        # Retried after Retry-After, every call gets through.
        got = [await patient.get(h.id) for _ in range(6)]
        assert {t.id for t in got} == {h.id}


def test_sdk_passes_mypy_strict() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "taskflow_client"],
                       cwd=ROOT / "sdk" / "python", capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
