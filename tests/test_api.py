"""The HTTP API: idempotency, read-your-writes, listing, batch, errors, tenants, limits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest

from api.schemas import BatchAccepted
from tests.helpers import ROOT, Env, free_port, wait_until
from tests.test_projections import count

PROBLEM = "application/problem+json"


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    doc: dict[str, Any] = r.json()
    assert doc["status"] == status and doc["title"] and "Traceback" not in r.text
    return doc


def cli(env: Env, *args: str, **extra: str) -> str:
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                         env={**os.environ, **env.vars, **extra}, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


async def created_events(env: Env, tid: str) -> int:
    return sum(1 for _, ev in await env.log_events()
               if str(ev.subject) == tid and ev.type.value == "task.created")


async def test_idempotency_key_same_body_same_task_different_body_422(env: Env) -> None:
    env.proc("projector")
    await env.api()
    body = {"title": "pay invoice 7", "payload": {"message": "x"}}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        h = {"Idempotency-Key": "invoice-7"}
        first = await c.post("/tasks", json=body, headers=h)
        assert first.status_code == 202
        tid = first.json()["task_id"]
        await wait_until(lambda: _exists(c, tid), timeout=20)
        again = await c.post("/tasks", json=body, headers=h)
        assert again.status_code == 200 and again.json()["task_id"] == tid
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["position"] == first.json()["position"]
        clash = await c.post("/tasks", json={**body, "title": "pay invoice 8"}, headers=h)
        problem(clash, 422)
        other = await c.post("/tasks", json=body, headers={"Idempotency-Key": "invoice-8"})
        assert other.json()["task_id"] != tid
        bad = await c.post("/tasks", json=body, headers={"Idempotency-Key": "has space"})
        problem(bad, 422)
    assert await created_events(env, tid) == 1


async def test_idempotent_retry_before_projection_appends_nothing(env: Env) -> None:
    await env.api()  # no projector: the read model never learns of the first submit
    body = {"title": "pay invoice 9", "payload": {"message": "x"}}
    h = {"Idempotency-Key": "invoice-9"}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        first = await c.post("/tasks", json=body, headers=h)
        assert first.status_code == 202, first.text
        again = await c.post("/tasks", json=body, headers=h)
        assert again.status_code == 200, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["task_id"] == first.json()["task_id"]
        assert again.json()["position"] == first.json()["position"]
        assert again.json()["status"] == "PENDING"
        clash = await c.post("/tasks", json={**body, "title": "other"}, headers=h)
        problem(clash, 422)
    assert await created_events(env, first.json()["task_id"]) == 1


async def _exists(c: httpx.AsyncClient, tid: str) -> bool:
    return (await c.get(f"/tasks/{tid}")).status_code == 200


async def test_read_your_writes_across_two_api_processes(env: Env) -> None:
    env.proc("projector")
    a_port, b_port = env.api_port, free_port()
    await env.api()
    await env.api(port=b_port)
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(20):
            r = await c.post(f"http://127.0.0.1:{a_port}/tasks", json={"title": f"ryw{i}"})
            doc = r.json()
            got = await c.get(f"http://127.0.0.1:{b_port}/tasks/{doc['task_id']}")
            assert got.status_code == 200, got.text
            pos = f"{doc['position']['partition']}:{doc['position']['offset']}"
            lst = await c.get(f"http://127.0.0.1:{b_port}/tasks",
                              params={"min_position": pos, "limit": 50})
            assert doc["task_id"] in {t["task_id"] for t in lst.json()["items"]}
        far = await c.get(f"http://127.0.0.1:{b_port}/tasks",
                          params={"min_position": "0:999999"})
        assert problem(far, 503) and far.headers["retry-after"] == "1"


async def test_listing_filters_sorting_caps_and_stable_pages(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": f"alpha {i}", "payload": {"message": "m"}} for i in range(30)] + [
            {"title": f"beta {i}", "type": "fail", "max_attempts": 1} for i in range(10)]})
        assert r.status_code == 202
        await wait_until(lambda: _terminal(env, 40), timeout=60)
        failed = (await c.get("/tasks", params={"status": "FAILED", "limit": 100})).json()
        assert len(failed["items"]) == 10 and all(t["type"] == "fail" for t in failed["items"])
        by_type = (await c.get("/tasks", params={"type": "echo", "limit": 100})).json()
        assert len(by_type["items"]) == 30
        search = (await c.get("/tasks", params={"q": "BETA 1"})).json()
        assert {t["title"] for t in search["items"]} == {"beta 1"}
        asc = (await c.get("/tasks", params={"order": "asc", "limit": 100})).json()["items"]
        desc = (await c.get("/tasks", params={"limit": 100})).json()["items"]
        assert [t["task_id"] for t in asc] == [t["task_id"] for t in reversed(desc)]
        mid = asc[20]["created_at"]
        after = (await c.get("/tasks", params={"created_after": mid, "limit": 100})).json()
        before = (await c.get("/tasks", params={"created_before": mid, "limit": 100})).json()
        assert len(after["items"]) + len(before["items"]) == 40
        problem(await c.get("/tasks", params={"limit": 5000}), 422)
        problem(await c.get("/tasks", params={"limit": -1}), 422)
        problem(await c.get("/tasks", params={"cursor": "!!!"}), 400)
        problem(await c.get("/tasks", params={"created_after": "2026-01-01T00:00:00"}), 422)

        # Page through while tasks keep arriving: no task twice, none of the old ones missed.
        before_ids = {t["task_id"] for t in desc}
        seen: list[str] = []
        cursor = None
        adding = asyncio.create_task(_keep_adding(c, 30))
        while True:
            params: dict[str, Any] = {"limit": 7}
            if cursor:
                params["cursor"] = cursor
            page = (await c.get("/tasks", params=params)).json()
            seen += [t["task_id"] for t in page["items"]]
            cursor = page["next_cursor"]
            await asyncio.sleep(0.05)
            if not cursor:
                break
        await adding
    assert len(seen) == len(set(seen))
    assert before_ids <= set(seen)


async def _keep_adding(c: httpx.AsyncClient, n: int) -> None:
    for i in range(n):
        await c.post("/tasks", json={"title": f"late {i}", "payload": {"message": "m"}})
        await asyncio.sleep(0.02)


async def _terminal(env: Env, n: int) -> bool:
    return await count(env, "SELECT count(*) FROM tasks WHERE status IN ('DONE','FAILED')") >= n


async def test_positions_answered_for_concurrent_batches_are_where_the_events_are(
        env: Env) -> None:
    """A batch fills Kafka record batches itself and computes each task's position from
    the batch's base offset; concurrent batches and single POSTs must not shift them."""
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as c:
        async def batch(k: int) -> list[dict[str, Any]]:
            r = await c.post("/tasks:batch",
                             json={"tasks": [{"title": f"c{k}.{i}"} for i in range(300)]})
            assert r.status_code == 202, r.text
            return list(r.json()["items"])

        async def single(k: int) -> list[dict[str, Any]]:
            r = await c.post("/tasks", json={"title": f"s{k}"})
            assert r.status_code == 202, r.text
            return [r.json()]

        answered = [item for part in await asyncio.gather(
            *(batch(k) for k in range(4)), *(single(k) for k in range(20))) for item in part]
    logged = {(rec.partition, rec.offset): str(ev.subject) for rec, ev in await env.log_events()}
    assert len(answered) == 1220 == len(logged)
    for item in answered:
        pos = (item["position"]["partition"], item["position"]["offset"])
        assert logged[pos] == item["task_id"], (pos, item)


async def test_batch_is_all_or_nothing_up_to_1000(env: Env) -> None:
    env.proc("projector")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as c:
        ok = await c.post("/tasks:batch", json={"tasks": [{"title": f"b{i}"}
                                                          for i in range(1000)]})
        assert ok.status_code == 202
        assert ok.headers["content-type"] == "application/json"
        # The documented BatchAccepted, exactly (the 202 is encoded by hand).
        assert BatchAccepted.model_validate(ok.json()).model_dump(mode="json") == ok.json()
        items = ok.json()["items"]
        assert len(items) == 1000 and len({i["task_id"] for i in items}) == 1000
        problem(await c.post("/tasks:batch", json={"tasks": [{"title": "x"}] * 1001}), 422)
        bad = await c.post("/tasks:batch", json={"tasks": [{"title": "fine"}, {"title": ""},
                                                            {"title": "x", "type": "nope"}]})
        doc = problem(bad, 422)
        assert any(e["loc"][:3] == ["body", "tasks", 1] for e in doc["errors"])
        problem(await c.post("/tasks:batch", json={"tasks": []}), 422)
    logged = await env.log_events()
    assert len(logged) == 1000  # nothing from the rejected batches


@pytest.mark.parametrize(("kind", "status"), [
    ("text/plain", 415), ("oversize", 413), ("oversize-chunked", 413), ("deep", 422),
    ("nul", 422), ("malformed", 422), ("not-object", 422)])
async def test_hostile_bodies_get_4xx_problems(env: Env, kind: str, status: int) -> None:
    await env.api(TASKFLOW_MAX_BODY_BYTES="4096")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        js = {"content-type": "application/json"}
        if kind == "text/plain":
            r = await c.post("/tasks", content=b'{"title": "x"}',
                             headers={"content-type": "text/plain"})
        elif kind == "oversize":
            r = await c.post("/tasks", json={"title": "x", "payload": {"s": "a" * 10_000}})
        elif kind == "oversize-chunked":
            async def gen() -> Any:
                yield b'{"title": "x", "payload": {"s": "'
                for _ in range(100):
                    yield b"a" * 1000
                yield b'"}}'
            r = await c.post("/tasks", content=gen(), headers=js)
        elif kind == "deep":
            r = await c.post("/tasks", content=b'{"title": "x", "payload": {"a": '
                             + b"[" * 500 + b"]" * 500 + b"}}", headers=js)
        elif kind == "nul":
            r = await c.post("/tasks", content=b'{"title": "x", "payload": {"a": "\\u0000"}}',
                             headers=js)
        elif kind == "malformed":
            r = await c.post("/tasks", content=b'{"title": ', headers=js)
        else:
            r = await c.post("/tasks", content=b'[1, 2]', headers=js)
        problem(r, status)


async def test_tenants_are_isolated_and_keys_can_be_revoked(env: Env) -> None:
    env.proc("projector")
    await env.api(TASKFLOW_AUTH="true")
    key_a = cli(env, "keys", "create", "--tenant", "acme")
    key_b = cli(env, "keys", "create", "--tenant", "globex")
    assert key_a.startswith("tfk_") and key_a != key_b
    conn = await env.db()
    try:
        stored = [r["secret_hash"] for r in await conn.fetch("SELECT secret_hash FROM api_keys")]
    finally:
        await conn.close()
    secret_a = key_a[4:].partition("_")[2]  # tfk_<id>_<secret>; a secret may hold "_"
    assert all(secret_a not in h for h in stored)  # hashed, not stored
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        problem(await c.get("/tasks"), 401)
        problem(await c.get("/tasks", headers={"Authorization": "Bearer tfk_nope_nope"}), 401)
        a = {"Authorization": f"Bearer {key_a}"}
        b = {"X-API-Key": key_b}
        tid = (await c.post("/tasks", json={"title": "acme only"}, headers=a)).json()["task_id"]
        assert (await c.get(f"/tasks/{tid}", headers=a)).json()["title"] == "acme only"
        problem(await c.get(f"/tasks/{tid}", headers=b), 404)
        problem(await c.get(f"/tasks/{tid}/events", headers=b), 404)
        problem(await c.post(f"/tasks/{tid}/cancel", headers=b), 404)
        assert (await c.get("/tasks", headers=b)).json()["items"] == []
        assert [t["task_id"] for t in (await c.get("/tasks", headers=a)).json()["items"]] == [tid]
        hist = (await c.get(f"/tasks/{tid}/events", headers=a)).json()["items"]
        assert hist[0]["tenant"] == "acme"
        same_key = {"Idempotency-Key": "k1"}
        ta = (await c.post("/tasks", json={"title": "t"}, headers={**a, **same_key})).json()
        tb = (await c.post("/tasks", json={"title": "t"}, headers={**b, **same_key})).json()
        assert ta["task_id"] != tb["task_id"]  # keys are scoped to the tenant
        cli(env, "keys", "revoke", key_b)

        async def revoked() -> bool:
            return (await c.get("/tasks", headers=b)).status_code == 401

        await wait_until(revoked, timeout=15, what="revocation to take effect")


async def test_rate_limit_answers_429_with_retry_after(env: Env) -> None:
    await env.api(TASKFLOW_RATE_LIMIT_PER_S="2", TASKFLOW_RATE_LIMIT_BURST="5")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        codes = [(await c.get("/tasks")).status_code for _ in range(12)]
        limited = await c.get("/tasks")
    assert codes[:5] == [200] * 5 and 429 in codes
    doc = problem(limited, 429)
    assert int(limited.headers["retry-after"]) >= 1 and "rate" in doc["detail"]


async def test_metrics_cors_and_openapi(env: Env) -> None:
    env.proc("projector")
    await env.api(TASKFLOW_CORS_ORIGINS="http://dash.example")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        await c.post("/tasks", json={"title": "m", "type": "sleep", "payload": {"seconds": 0}})
        await c.get(f"/tasks/{uuid.uuid4()}")
        text = (await c.get("/metrics")).text
        pre = await c.options("/tasks", headers={
            "Origin": "http://dash.example", "Access-Control-Request-Method": "POST"})
        other = await c.options("/tasks", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        spec = (await c.get("/openapi.json")).json()
    assert 'taskflow_http_requests_total{method="POST",route="/tasks",status="202"} 1.0' in text
    assert 'route="/tasks/{task_id}",status="404"' in text
    assert "taskflow_http_request_duration_seconds_bucket" in text
    assert 'taskflow_tasks_submitted_total{type="sleep"} 1.0' in text
    assert "taskflow_sse_subscribers" in text and "taskflow_projector_lag_events{" in text
    assert pre.headers.get("access-control-allow-origin") == "http://dash.example"
    assert "access-control-allow-origin" not in other.headers
    post = spec["paths"]["/tasks"]["post"]
    for code in ("202", "413", "415", "422", "429", "503"):
        assert code in post["responses"], code
    assert "application/problem+json" in post["responses"]["422"]["content"]
    assert spec["components"]["schemas"]["TaskIn"]["examples"]
    assert "/tasks:batch" in spec["paths"]


async def _children(pid: int) -> list[int]:
    proc = await asyncio.create_subprocess_exec("pgrep", "-P", str(pid),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return [int(x) for x in out.split()]


async def test_api_workers_share_the_port_and_stop_together(env: Env) -> None:
    """``taskflow api --workers 2``: two processes, each with its own SO_REUSEPORT socket,
    under one supervisor. SIGTERM stops them all; a child that dies is started again,
    and the other keeps serving meanwhile."""
    port = free_port()
    for ending in ("sigterm", "child dies"):
        sup = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "api", "--workers", "2", "--port", str(port),
            cwd=ROOT, env={**os.environ, **env.vars}, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                async def up() -> bool:
                    try:
                        return (await c.get("/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_until(up, timeout=60, what="the API processes")
                kids: list[int] = []

                async def two(pid: int = sup.pid, kids: list[int] = kids) -> bool:
                    kids[:] = await _children(pid)
                    return len(kids) == 2

                await wait_until(two, timeout=30, what="two API processes")
                codes = {(await c.post("/tasks", json={"title": f"w{i}"})).status_code
                         for i in range(20)}
                assert codes == {202}
            if ending == "sigterm":
                sup.terminate()
                assert await asyncio.wait_for(sup.wait(), 30) == 0
            else:
                os.kill(kids[0], 9)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                    async def replaced(pid: int = sup.pid, dead: int = kids[0]) -> bool:
                        now = await _children(pid)
                        return len(now) == 2 and dead not in now

                    await wait_until(replaced, timeout=60, what="the dead API process restarted")
                    await wait_until(up, timeout=60, what="the API after the restart")
                    assert sup.returncode is None  # the supervisor itself never stopped
                sup.terminate()
                assert await asyncio.wait_for(sup.wait(), 30) == 0
            assert await _children(sup.pid) == []
        finally:
            if sup.returncode is None:
                sup.kill()
                await sup.wait()
