"""Bad input gets a clear 4xx problem+json; a log that does not acknowledge gets 503."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.helpers import Env, free_port

PROBLEM = "application/problem+json"


def _is_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    doc = r.json()
    assert doc["status"] == status and doc["title"] and doc["type"].startswith("https://")
    assert "Traceback" not in r.text
    return dict(doc)


@pytest.mark.parametrize("body", [
    {},
    {"title": ""},
    {"title": 5},
    {"title": "x", "payload": [1, 2]},
    {"title": "x", "payload": "not an object"},
    {"title": "x", "max_attempts": 0},
    {"title": "x", "timeout_s": -1},
    {"title": "x", "unexpected": True},
    {"title": "nul \u0000 byte"},
    {"title": "x", "payload": {"k": "nul \u0000 byte"}},
    {"title": "x", "payload": {"deep": [{"nul \u0000 key": 1}]}},
])
async def test_invalid_bodies_get_422_problem(env: Env, body: dict[str, object]) -> None:
    await env.api(TASKFLOW_READ_WAIT_S="0.2")
    async with httpx.AsyncClient(base_url=env.base_url) as c:
        doc = _is_problem(await c.post("/tasks", json=body), 422)
        assert doc["errors"]


async def test_unknown_task_gets_404_problem(env: Env) -> None:
    await env.api(TASKFLOW_READ_WAIT_S="0.2")
    async with httpx.AsyncClient(base_url=env.base_url) as c:
        tid = uuid.uuid4()
        _is_problem(await c.get(f"/tasks/{tid}"), 404)
        _is_problem(await c.get(f"/tasks/{tid}/events"), 404)
        _is_problem(await c.post(f"/tasks/{tid}/cancel"), 404)
        _is_problem(await c.get("/tasks/not-a-uuid"), 422)
        _is_problem(await c.get("/no/such/route"), 404)
        _is_problem(await c.delete("/tasks"), 405)


async def test_post_answers_503_when_kafka_does_not_acknowledge(env: Env) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    await env.api(TASKFLOW_KAFKA_BOOTSTRAP=dead, TASKFLOW_PRODUCE_TIMEOUT_S="1")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        t0 = time.monotonic()
        r = await c.post("/tasks", json={"title": "never acknowledged"})
        elapsed = time.monotonic() - t0
        _is_problem(r, 503)
        assert elapsed < 10  # bounded: the produce timeout, not a hang
        ready = await c.get("/readyz")
        assert ready.status_code == 503
    conn = await env.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("path", [
    "/tasks?type=a%00b", "/tasks?q=a%00b", "/tasks?cursor=a%00b", "/tasks?min_position=a%00b",
    f"/tasks/{uuid.uuid4()}?as_of=a%00b", f"/tasks/{uuid.uuid4()}?min_position=a%00b",
])
async def test_nul_in_a_query_parameter_gets_a_4xx_problem(env: Env, path: str) -> None:
    """PostgreSQL refuses U+0000 in text: ``?type=`` used to reach the query as a 500."""
    await env.api(TASKFLOW_READ_WAIT_S="0.2")
    async with httpx.AsyncClient(base_url=env.base_url) as c:
        r = await c.get(path)
        assert 400 <= r.status_code < 500, r.text
        _is_problem(r, r.status_code)
