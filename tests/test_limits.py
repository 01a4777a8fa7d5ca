"""Unit tests of the request guard's JSON depth scan (no I/O)."""

from __future__ import annotations

import pytest

from api.limits import json_depth


@pytest.mark.parametrize(("body", "depth"), [
    (b"{}", 1),
    (b'{"a": [1, {"b": 2}]}', 3),
    (b'{"a": "[[[[{{{{"}', 1),               # brackets inside strings do not count
    (b'{"a": "quote \\" then [[["}', 1),     # nor after an escaped quote
    (b'{"a": "\\\\", "b": [[[]]]}', 4),      # an escaped backslash ends before the quote
    (b"[" * 500 + b"]" * 500, 500),
    (b'"just a string"', 0),
])
def test_json_depth(body: bytes, depth: int) -> None:
    assert json_depth(body) == depth
