"""The edge refuses what TaskFlow cannot carry, cheaply, and never answers 500.

Against a real API process: every hostile value class in a body gets 422 problem+json
naming where it is, on every route that takes a body; huge digit strings, far dates and
oversized headers get a 4xx; a worst-case body never holds the event loop; a handler
result the read model cannot hold fails its task, not the worker.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from bench.guard_cpu import worst_bodies
from tests.helpers import Env, wait_until
from tests.test_projections import cli

PROBLEM = "application/problem+json"
HUGE = "9" * 23  # wider than any 64-bit integer


def _problem(r: httpx.Response, lo: int = 400, hi: int = 499) -> dict[str, Any]:
    assert lo <= r.status_code <= hi, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    doc: dict[str, Any] = r.json()
    assert doc["status"] == r.status_code and doc["title"]
    return doc


def _payload(inner: bytes) -> bytes:
    return b'{"title":"x","payload":' + inner + b"}"


# (body, the location the 422 names, the error type)
HOSTILE: list[tuple[bytes, list[Any], str]] = [
    (_payload(b'{"a":{"b":' + HUGE.encode() + b"}}"), ["body", "payload", "a", "b"],
     "int_range"),
    (_payload(b'{"a":-9223372036854775809}'), ["body", "payload", "a"], "int_range"),
    (_payload(b'{"a":18446744073709551615}'), ["body", "payload", "a"], "int_range"),
    (_payload(b'{"a":NaN}'), ["body", "payload", "a"], "float_not_finite"),
    (_payload(b'{"a":[1,Infinity]}'), ["body", "payload", "a", 1], "float_not_finite"),
    (_payload(b'{"a":-Infinity}'), ["body", "payload", "a"], "float_not_finite"),
    (_payload(b'{"a":1e400}'), ["body", "payload", "a"], "float_not_finite"),
    (_payload(b'{"a":-0.0}'), ["body", "payload", "a"], "negative_zero"),
    (_payload(b'{"a":"x\\u0000"}'), ["body", "payload", "a"], "nul_character"),
    (_payload(b'{"k\\u0000":1}'), ["body", "payload", "k\x00"], "nul_character"),
    (_payload(b'{"a":"\\ud800"}'), ["body", "payload", "a"], "lone_surrogate"),
    (_payload(b'{"\\udc00":1}'), ["body", "payload", "\\udc00"], "lone_surrogate"),
    (b'{"title":"\\ud800"}', ["body", "title"], "lone_surrogate"),
    (_payload(b'{"a":' + b"[" * 40 + b"]" * 40 + b"}"),
     ["body", "payload", "a", *[0] * 30], "json_depth"),
    (_payload(orjson.dumps({f"k{i}": i for i in range(1001)})), ["body", "payload"],
     "json_keys"),
    (_payload(b'{"a":1' + b"0" * 5000 + b"}"), ["body"], "json_invalid"),
    (b'{"title": "x", "payload": {', ["body"], "json_invalid"),
]


async def test_every_hostile_value_class_gets_422_naming_where(env: Env) -> None:
    await env.api(TASKFLOW_READ_WAIT_S="0.2")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        for body, loc, kind in HOSTILE:
            batch = b'{"tasks":[{"title":"fine"},' + body + b"]}"
            for path, headers, where in (
                    ("/tasks", {}, loc),
                    ("/tasks", {"Idempotency-Key": uuid.uuid4().hex}, loc),
                    ("/tasks:batch", {}, ["body", "tasks", 1, *loc[1:]])):
                r = await c.post(path, content=body if path == "/tasks" else batch,
                                 headers={"content-type": "application/json", **headers})
                doc = _problem(r, 422, 422)
                [error] = doc["errors"]
                want = where if kind != "json_invalid" else ["body"]
                if kind == "json_depth" and path == "/tasks:batch":
                    want = where[:-2]  # the batch's list and object are two of the levels
                assert (error["loc"], error["type"]) == (want, kind), (body[:80], path, doc)
    assert await env.read_log() == []  # nothing refused reached the log


async def test_huge_numbers_far_dates_and_big_headers_get_a_4xx(env: Env) -> None:
    await env.api(TASKFLOW_READ_WAIT_S="0.2")
    tid = uuid.uuid4()

    def cursor(ts: str) -> str:
        raw = orjson.dumps([ts, str(uuid.uuid4())])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    paths = [
        f"/tasks?limit={HUGE}", f"/tasks?limit={'9' * 5000}", f"/tasks?cursor={HUGE}",
        f"/tasks?cursor={cursor('9999-12-31T23:59:59-14:00')}",
        f"/tasks?cursor={cursor('0001-01-01T00:00:00+14:00')}",
        f"/tasks?min_position=1:{HUGE}", f"/tasks?min_position={HUGE}:1",
        f"/tasks/{tid}?min_position=1:9999999999999999999",
        f"/tasks?min_position=1:{'9' * 5000}",
        "/tasks?created_after=9999-12-31T23:59:59-14:00",
        "/tasks?created_before=0001-01-01T00:00:00%2B14:00",
        "/tasks?created_after=10000-01-01T00:00:00Z",
        "/tasks?created_after=0000-01-01T00:00:00Z",
        f"/tasks?created_after={'9' * 5000}",
        f"/tasks/{tid}?as_of=9999-12-31T23:59:59-14:00",
        f"/tasks/{tid}?as_of=0001-01-01T00:00:00%2B14:00",
        f"/tasks/{tid}?as_of=1:{HUGE}", f"/tasks/{tid}?as_of={HUGE}",
        f"/tasks/{HUGE}", f"/stats?minutes={HUGE}",
    ]
    async with httpx.AsyncClient(base_url=env.base_url, timeout=10) as c:
        for path in paths:
            r = await c.get(path)
            assert r.status_code != 500 and r.status_code < 500, (path, r.text[:300])
            if r.status_code >= 400:
                _problem(r)
        # A date that is far but that every layer can hold is simply a filter.
        r = await c.get("/tasks?created_after=9999-12-31T23:59:59%2B14:00")
        assert r.status_code == 200 and r.json()["items"] == []
        for path, headers in ((f"/events?after={HUGE}", {}),
                              ("/events", {"Last-Event-ID": HUGE}),
                              ("/events", {"Last-Event-ID": "9" * 5000})):
            async with c.stream("GET", path, headers=headers) as r:
                await r.aread()
                _problem(r)
        r = await c.post("/tasks", json={"title": "k"}, headers={"Idempotency-Key": "k" * 256})
        _problem(r)
    # Headers past the server's limit are refused by the HTTP parser before the app.
    for name, value in (("X-Junk", "j" * 60_000), ("Idempotency-Key", "k" * 60_000)):
        async with httpx.AsyncClient(base_url=env.base_url, timeout=10) as c:
            try:
                r = await c.post("/tasks", json={"title": "h"}, headers={name: value})
            except httpx.RemoteProtocolError:
                continue  # the connection was closed: refused, nothing accepted
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
    assert await env.read_log() == []


async def test_healthz_answers_while_worst_case_bodies_are_checked(env: Env) -> None:
    await env.api()
    bodies = worst_bodies(256 * 1024 - 64)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as c:
        async def post_all() -> list[int]:
            codes = []
            for body in bodies.values():
                r = await c.post("/tasks", content=body,
                                 headers={"content-type": "application/json"})
                codes.append(r.status_code)
            return codes

        posting = asyncio.ensure_future(post_all())
        slowest = 0.0
        async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as probe:
            while not posting.done():
                t0 = time.monotonic()
                assert (await probe.get("/healthz")).status_code == 200
                slowest = max(slowest, time.monotonic() - t0)
                await asyncio.sleep(0.01)
        codes = await posting
    assert all(code in (202, 422) for code in codes), codes
    # Generous for a shared machine; a quadratic scan held the loop for tens of seconds.
    assert slowest < 1.0, slowest


async def test_a_result_the_read_model_cannot_hold_exactly_fails_only_its_task(
        env: Env) -> None:
    types = "echo,unsafe_result"
    env.proc("projector")
    env.proc("worker", TASKFLOW_HANDLER_MODULES="tests.edge_handlers", TASKFLOW_TASK_TYPES=types)
    await env.api(TASKFLOW_TASK_TYPES=types)
    kinds = ["nan", "inf", "big", "surrogate_key", "deep", "keys", "raise", "exact"]
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tids = {}
        for kind in kinds:
            r = await c.post("/tasks", json={"title": kind, "type": "unsafe_result",
                                             "payload": {"kind": kind}})
            assert r.status_code == 202, r.text
            tids[kind] = r.json()["task_id"]
        r = await c.post("/tasks", json={"title": "after", "payload": {"message": "still"}})
        after = r.json()["task_id"]

        async def finished() -> dict[str, dict[str, Any]] | None:
            out = {}
            for kind, tid in [*tids.items(), ("after", after)]:
                doc = (await c.get(f"/tasks/{tid}")).json()
                if doc["status"] not in ("DONE", "FAILED"):
                    return None
                out[kind] = doc
            return out

        found = await wait_until(finished, timeout=60, what="every task finished")
        assert found is not None
        docs = found
    assert docs.pop("after")["result"] == "still"
    exact = docs.pop("exact")
    assert exact["status"] == "DONE"
    assert exact["result"] == {"": [None, 4.73643996407975e16], "tiny": 5e-324,
                               "big": 2**63 - 1}
    assert type(exact["result"][""][1]) is float
    assert docs.pop("raise")["error"] == "ValueError: bad \ufffd text"
    for kind, doc in docs.items():
        assert doc["status"] == "FAILED", (kind, doc)
        assert doc["error"].startswith("the result cannot be stored"), (kind, doc["error"])
    assert "0 difference(s)" in cli(env, "projections", "verify").stderr


async def test_exponent_floats_read_back_as_floats_and_verify_agrees(env: Env) -> None:
    """The issue's case: jsonb numeric dropped the float-ness of ``4.73643996407975e16``."""
    env.proc("projector")
    await env.api()
    payload = {"": [None, 4.73643996407975e16], "e": 1e16, "huge": 1.7976931348623157e308,
               "tiny": 5e-324, "neg": -1.5e300, "int": 9223372036854775807,
               "min": -9223372036854775808, "whole": 3.0}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", content=orjson.dumps({"title": "floats", "type": "noop",
                                                          "payload": payload}),
                         headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        doc = (await c.get(f"/tasks/{tid}")).json()
        events = (await c.get(f"/tasks/{tid}/events")).json()["items"]
    assert doc["payload"] == payload
    assert {k: type(v) for k, v in doc["payload"].items()} == {
        k: type(v) for k, v in payload.items()}
    assert type(doc["payload"][""][1]) is float
    created = events[0]["data"]["payload"]
    assert created == payload and type(created["e"]) is float
    assert "0 difference(s)" in cli(env, "projections", "verify").stderr


@pytest.mark.parametrize("value", ["1e16", "4.73643996407975E16", "2.5e+3"])
async def test_the_journal_keeps_floats_written_with_any_exponent(env: Env, value: str) -> None:
    """A record's own bytes go into the journal; any exponent form keeps its float-ness."""
    from events import constants
    from events.log import EventProducer
    from events.models import TaskCreated, new_event

    env.proc("projector")
    await env.api()
    tid = uuid.uuid4()
    ev = new_event(TaskCreated(title="raw", type="noop", payload={"a": 1}), task_id=tid,
                   source=constants.API_SOURCE)
    raw = ev.__pydantic_serializer__.to_json(ev).replace(b'{"a":1}', b'{"a":' +
                                                         value.encode() + b"}")
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=30)
    await producer.start()
    try:
        await producer.append_raw(env.topic, str(tid).encode(), raw)
    finally:
        await producer.stop()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        async def journal() -> list[dict[str, Any]]:
            r = await c.get(f"/tasks/{tid}/events")
            return list(r.json().get("items", [])) if r.status_code == 200 else []

        [created] = await wait_until(journal, what="the journal row")
    assert created["data"]["payload"]["a"] == float(value)
    assert type(created["data"]["payload"]["a"]) is float
