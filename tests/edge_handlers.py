"""Handlers for tests/test_edge.py, loaded by the worker through TASKFLOW_HANDLER_MODULES."""

from __future__ import annotations

from typing import Any

from worker.handlers import TaskContext, handler

_RESULTS: dict[str, Any] = {
    "nan": {"x": float("nan")},
    "inf": [float("inf")],
    "big": {"n": 2**64},
    "surrogate_key": {"\ud800": 1},
    "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    "keys": {f"k{i}": i for i in range(1001)},
    "exact": {"": [None, 4.73643996407975e16], "tiny": 5e-324, "big": 2**63 - 1},
}


@handler("unsafe_result")
def unsafe_result(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Returns the result named by ``kind``; ``raise`` raises with a lone surrogate."""
    if payload["kind"] == "raise":
        raise ValueError("bad \ud800 text")
    return _RESULTS[payload["kind"]]
