"""Property: a JSON value is either refused at the edge or read back exactly.

Generated JSON covers what clients send by mistake or on purpose: integers past 64 bits,
floats in exponent form, NaN and infinities, negative zero, NUL and lone surrogates in
keys and values, deep nesting. The unit property runs the guard's check and the jsonb
encoding on many values; the end-to-end one submits to a real API, projector, Kafka and
Postgres, reads the task back, and runs ``taskflow projections verify``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.limits import inspect_json
from events import jsonsafe
from events.constants import MAX_JSON_DEPTH
from events.errors import UnsafeJson
from tests.helpers import Env
from tests.test_projections import cli

_ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70),
                  st.sampled_from([2**63, -(2**63) - 1, 2**64 - 1, 2**64]))
_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([4.73643996407975e16, 1e16, 1.5e300, 5e-324, -0.0, 1e-7,
                                     1.7976931348623157e308]))
_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=8)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), _ints, _floats, _text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_text, inner, max_size=4)),
    max_leaves=12,
)
_payloads = st.dictionaries(_text, _json, max_size=4)


def same(a: Any, b: Any) -> bool:
    """Equal with types: 1, 1.0 and True differ, and so do 0.0 and -0.0. Key order is
    not compared: JSON objects have none, and jsonb keeps its own."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return ((a == b and math.copysign(1, a) == math.copysign(1, b))
                or (a != a and b != b))
    if isinstance(a, dict):
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _body(payload: dict[str, Any]) -> bytes:
    # The stdlib writes what orjson refuses (NaN, big integers, lone surrogates), as a
    # client library might.
    return json.dumps({"title": "p", "type": "noop", "payload": payload},
                      ensure_ascii=True).encode()


def _accepted(body: bytes) -> bool:
    try:
        inspect_json(body, max_depth=MAX_JSON_DEPTH)
    except UnsafeJson:
        return False
    return True


@settings(max_examples=2000, deadline=None)
@given(_payloads)
def test_a_value_the_check_accepts_reads_back_from_jsonb_text_exactly(
        payload: dict[str, Any]) -> None:
    """What Postgres does to a number (numeric: a decimal point kept only if written) is
    modelled by the stdlib's reading of the text: ``1e+16`` is a float to it too, so the
    check is that no float is written with a positive exponent."""
    if not _accepted(_body(payload)):
        return
    text = jsonsafe.jsonb_text(payload)
    assert b"e+" not in text.replace(b'"', b"") or any(
        b"e+" in orjson.dumps(k) for k in _keys_and_strings(payload))
    assert same(orjson.loads(text), payload)
    assert same(json.loads(text), payload)


def _keys_and_strings(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [*v, *(s for x in v.values() for s in _keys_and_strings(x))]
    if isinstance(v, list):
        return [s for x in v for s in _keys_and_strings(x)]
    return []


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payloads=st.lists(_payloads, min_size=1, max_size=1))
async def test_submit_is_refused_or_read_back_exactly(
        env: Env, payloads: list[dict[str, Any]]) -> None:
    if not hasattr(env, "_started"):
        env.proc("projector")
        await env.api(TASKFLOW_READ_WAIT_S="5")
        env._started = True  # type: ignore[attr-defined]
    [payload] = payloads
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", content=_body(payload),
                         headers={"content-type": "application/json"})
        if 400 <= r.status_code < 500:
            assert r.headers["content-type"].startswith("application/problem+json")
            return
        assert r.status_code == 202, r.text
        doc = (await c.get(f"/tasks/{r.json()['task_id']}")).json()
    assert doc["status"] == "PENDING"
    assert same(doc["payload"], payload), (doc["payload"], payload)


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payloads=st.lists(_payloads, min_size=20, max_size=20))
async def test_verify_finds_no_difference_after_any_mix_of_payloads(
        env: Env, payloads: list[dict[str, Any]]) -> None:
    """Whatever mix was submitted, the read model is exactly the fold of the log."""
    if not hasattr(env, "_started"):
        env.proc("projector")
        await env.api(TASKFLOW_READ_WAIT_S="5")
        env._started = True  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        last = None
        for p in payloads:
            r = await c.post("/tasks", content=_body(p),
                             headers={"content-type": "application/json"})
            assert r.status_code in (202, 422), r.text
            if r.status_code == 202:
                last = r.json()["task_id"]
        if last is not None:  # read-your-writes: the projector has reached it
            assert (await c.get(f"/tasks/{last}")).status_code == 200
    assert "0 difference(s)" in cli(env, "projections", "verify").stderr
