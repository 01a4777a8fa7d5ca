"""``POST /tasks`` answered as plain ASGI: the same answers as the route, without routing.

In-process, against the real Kafka and Postgres of the test stack: the app's lifespan
runs, so the producer, key ring and settings are the ones a server would have.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from api import metrics
from api.app import create_app
from api.fastpath import FastSubmit
from api.limits import RequestGuard
from events.models import EventType
from events.settings import Settings
from tests.helpers import Env

PROBLEM = "application/problem+json"


@pytest.fixture
async def app(env: Env) -> AsyncIterator[FastAPI]:
    settings = Settings(database_url=env.database_url, topic=env.topic,
                        kafka_bootstrap=env.bootstrap, rate_limit_per_s=0, auth=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


class Below:
    """Stands for the rest of the app under ``FastSubmit``: records what reaches it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"below"})


async def call(app: FastAPI, below: Below, body: bytes,
               headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
               chunk: int = 0) -> tuple[int, dict[str, str], bytes]:
    """One request through the guard and ``FastSubmit(below)``, as uvicorn would deliver
    it (an empty body as one empty message) and as the app stacks them."""
    scope = {"type": "http", "method": "POST", "path": "/tasks", "app": app,
             "headers": [(b"content-type", b"application/json"), *headers],
             "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    parts = ([body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]) if chunk \
        else [body]
    incoming: list[Message] = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
                               for i, p in enumerate(parts)]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    settings = app.state.settings
    guard = RequestGuard(FastSubmit(below), max_body_bytes=settings.max_body_bytes,
                         max_json_depth=settings.max_json_depth)
    await guard(scope, receive, send)
    start = sent[0]
    hdrs = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_plain_submit_is_answered_without_the_app_below(app: FastAPI, env: Env) -> None:
    below = Below()
    body = orjson.dumps({"title": "fast", "type": "echo", "payload": {"n": 1}, "priority": 7})
    status, headers, raw = await call(app, below, body, chunk=5)  # a body in several messages
    assert below.bodies == []
    assert status == 202 and headers["content-type"] == "application/json"
    doc = orjson.loads(raw)
    assert doc["status"] == "PENDING" and headers["location"] == f"/tasks/{doc['task_id']}"
    # The event is in the log where the 202 says, with the body's fields.
    [(record, event)] = await env.log_events()
    assert event.type == EventType.CREATED and str(event.subject) == doc["task_id"]
    assert doc["position"] == {"partition": record.partition, "offset": record.offset}
    assert event.data.title == "fast" and event.data.payload == {"n": 1}  # type: ignore[attr-defined]
    assert event.data.priority == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize("body,headers", [
    (b'{"title": "keyed"}', [(b"idempotency-key", b"k-1")]),  # keyed: the route's own path
    (b'{"title": ""}', []),  # TaskIn refuses: FastAPI's route words the 422
    (b'{"title": "x", "extra": 1}', []),
    (b'[1, 2]', []),
    (b"", []),
])
async def test_everything_else_reaches_the_app_below_with_its_body(
        app: FastAPI, env: Env, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    below = Below()
    assert await call(app, below, body, headers, chunk=4) == (299, {}, b"below")
    assert below.bodies == [body]
    assert await env.log_events() == []


async def test_a_body_that_is_not_json_is_refused_by_the_guard(app: FastAPI, env: Env) -> None:
    """The guard parses every body (it must, to check its values): not JSON is its 422."""
    below = Below()
    status, headers, raw = await call(app, below, b'{"title": "x", ', chunk=4)
    assert status == 422 and headers["content-type"] == "application/problem+json"
    assert orjson.loads(raw)["errors"][0]["type"] == "json_invalid"
    assert below.bodies == [] and await env.log_events() == []


async def _both(app: FastAPI, body: dict[str, Any], **headers: str) -> list[httpx.Response]:
    """The same body through the fast path (no key) and through the route (a key)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        return [await c.post("/tasks", json=body, headers=headers),
                await c.post("/tasks", json=body, headers={**headers, "Idempotency-Key": "k"})]


async def test_errors_read_as_the_route_words_them(app: FastAPI) -> None:
    fast, routed = await _both(app, {"title": "x", "type": "no-such-type"})
    assert fast.status_code == routed.status_code == 422
    assert fast.headers["content-type"] == routed.headers["content-type"] == PROBLEM
    assert fast.json() == routed.json()


async def test_rate_limit_and_auth_apply_to_the_fast_path(env: Env) -> None:
    limited = Settings(database_url=env.database_url, topic=env.topic,
                       kafka_bootstrap=env.bootstrap, rate_limit_per_s=0.01,
                       rate_limit_burst=1, auth=False)
    app = create_app(limited)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        first = await c.post("/tasks", json={"title": "one"})
        second = await c.post("/tasks", json={"title": "two"})
    assert first.status_code == 202
    assert second.status_code == 429 and second.headers["content-type"] == PROBLEM
    assert int(second.headers["retry-after"]) >= 1
    assert [e.data.title for _, e in await env.log_events()] == ["one"]  # type: ignore[attr-defined]

    app = create_app(Settings(database_url=env.database_url, topic=env.topic,
                              kafka_bootstrap=env.bootstrap, auth=True))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        refused = await c.post("/tasks", json={"title": "anonymous"})
    assert refused.status_code == 401 and refused.json()["type"].endswith("/unauthorized")
    assert len(await env.log_events()) == 1


async def test_the_request_metric_names_the_route(app: FastAPI) -> None:
    def accepted() -> float:
        return metrics.REGISTRY.get_sample_value(
            "taskflow_http_requests_total",
            {"method": "POST", "route": "/tasks", "status": "202"}) or 0.0

    before = accepted()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        assert (await c.post("/tasks", json={"title": "counted"})).status_code == 202
    assert accepted() == before + 1
