"""Unit tests of the request guard's JSON check (no I/O): what it refuses and what it reads."""

from __future__ import annotations

import json

import pytest

from api.limits import inspect_json
from bench.guard_cpu import LIMIT, worst_bodies
from events.constants import MAX_JSON_DEPTH
from events.errors import UnsafeJson


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


@pytest.mark.parametrize("name", list(worst_bodies()))
def test_the_worst_bodies_are_refused_or_read_exactly(name: str) -> None:
    """Each worst body up to the limit is either refused by the guard with a location, or
    passes it as exactly what the stdlib reads; deep nesting never reaches a parser.
    Their CPU cost is a benchmark: ``python -m bench.guard_cpu``."""
    body = worst_bodies()[name]
    assert len(body) <= LIMIT
    try:
        doc = inspect_json(body, max_depth=MAX_JSON_DEPTH)
    except UnsafeJson as err:
        assert err.loc and err.loc[0] == "body" and err.kind
        return
    assert doc == json.loads(body)
    assert "deep" not in name or "string" in name, f"{name} passed the guard"
