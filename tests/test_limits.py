"""Unit tests of the request guard's JSON check (no I/O): what it refuses, and its cost."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator

import pytest
from pydantic import ValidationError

from api.app import GC_THRESHOLDS
from api.limits import inspect_json
from api.schemas import TaskIn
from events.constants import MAX_JSON_DEPTH
from events.errors import UnsafeJson

LIMIT = 256 * 1024  # the default TASKFLOW_MAX_BODY_BYTES


def worst_bodies(limit: int = LIMIT) -> dict[str, bytes]:
    """Bodies of about ``limit`` bytes, each the worst case of some parser on the path."""
    def fill(unit: bytes, head: bytes = b'{"title":"x","payload":{"a":"', tail: bytes = b'"}}'
             ) -> bytes:
        return head + unit * ((limit - len(head) - len(tail)) // len(unit)) + tail

    array = b'{"title":"x","payload":{"a":['
    return {
        "escaped quotes": fill(b'\\"'),
        "escaped quotes, unterminated": fill(b'\\"', tail=b""),
        "quotes after a backslash": fill(b'\\"', head=b'{"title":"', tail=b'"}'),
        "backslashes": fill(b"\\\\"),
        "unicode escapes": fill(b"\\u20ac"),
        "surrogate pairs": fill(b"\\ud83d\\ude00"),
        "lone surrogates": fill(b"\\ud800"),
        "many small values": fill(b"0,", head=array, tail=b"0]}}"),
        "many empty lists": fill(b"[],", head=array, tail=b"0]}}"),
        "many small objects": fill(b'{"k":0},', head=array, tail=b"0]}}"),
        "many small keys": fill(b'"k":0,', head=b'{"title":"x","payload":{', tail=b'"z":0}}'),
        "long digit run": fill(b"1", head=b'{"title":"x","payload":{"a":0.', tail=b"}}"),
        "long integer": fill(b"1", head=b'{"title":"x","payload":{"a":', tail=b"}}"),
        "many long integers": fill(b"1234567890123456789,", head=array, tail=b"0]}}"),
        "brackets at the depth limit": fill(b"[" * 28 + b"]" * 28 + b",", head=array,
                                            tail=b"0]}}"),
        "deep brackets": b"[" * limit,
        "deep brackets in a string": fill(b"["),
        "NaN at the end": fill(b"[],", head=array, tail=b"NaN]}}"),
    }


@pytest.mark.parametrize(("body", "loc", "kind"), [
    (b'{"a": [1, {"b": 9223372036854775808}]}', ["body", "a", 1, "b"], "int_range"),
    (b'{"a": -9223372036854775809}', ["body", "a"], "int_range"),
    (b'{"a": -1000000000000000001}', None, None),  # 19 digits, in range: exact
    (b'{"a": 9223372036854775807}', None, None),
    (b'{"a": 1e308, "b": 4.73643996407975e16}', None, None),
    (b'{"a": "[[[[{{{{"}', None, None),  # brackets in strings do not nest
    (b'{"a": "quote \\" then [[["}', None, None),
    (b'{"a": "\\\\", "b": [[[]]]}', None, None),
    (b'[' * 33 + b']' * 33, ["body", *[0] * 32], "json_depth"),
    (b'[' * 32 + b']' * 32, None, None),
    (b'{"a": NaN}', ["body", "a"], "float_not_finite"),
    (b'{"a": "\\udfff"}', ["body", "a"], "lone_surrogate"),
    (b'{"a": "\\ud83d\\ude00"}', None, None),  # a pair is one character
    (b'{"\\u0000": 1}', ["body", "\x00"], "nul_character"),
    (b'{"a": 1', ["body"], "json_invalid"),
    (b'\xff', ["body"], "json_invalid"),
])
def test_inspect_json(body: bytes, loc: list[object] | None, kind: str | None) -> None:
    if loc is None:
        inspect_json(body, max_depth=MAX_JSON_DEPTH)
        return
    with pytest.raises(UnsafeJson) as err:
        inspect_json(body, max_depth=MAX_JSON_DEPTH)
    assert (err.value.loc, err.value.kind) == (loc, kind)


def _cpu_ms(fn: Callable[[], object]) -> float:
    """The least CPU time of three runs (the machine is shared: the least is the cost)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        try:
            fn()
        except (UnsafeJson, ValidationError, ValueError, RecursionError):
            pass
        best = min(best, time.process_time() - t0)
    return best * 1000


@pytest.fixture
def api_gc() -> Iterator[None]:
    """The collector's thresholds as an API process sets them (``api.app``)."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("name", list(worst_bodies()))
def test_any_body_up_to_the_limit_costs_under_50ms_of_cpu(name: str, api_gc: None) -> None:
    """The guard, then both parsers behind it (the fast path's pydantic over the guard's
    parse, and the route's stdlib + pydantic), on the worst body of each kind: a
    request's whole check, the guard and the parser behind it, under 50 ms of CPU."""
    body = worst_bodies()[name]
    assert len(body) <= LIMIT
    guard = _cpu_ms(lambda: inspect_json(body, max_depth=MAX_JSON_DEPTH))
    assert guard < 50, f"{name}: the guard took {guard:.1f} ms"
    try:
        doc = inspect_json(body, max_depth=MAX_JSON_DEPTH)
    except UnsafeJson:
        return  # refused: nothing behind the guard sees it
    fast = _cpu_ms(lambda: TaskIn.model_validate(doc))  # the guard's parse, validated
    route = _cpu_ms(lambda: TaskIn.model_validate(json.loads(body)))
    # A request pays for the guard and then one of the two parsers.
    assert guard + max(fast, route) < 50, (
        f"{name}: guard {guard:.1f} ms + pydantic {fast:.1f} ms / route {route:.1f} ms")
