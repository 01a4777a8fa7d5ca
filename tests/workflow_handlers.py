"""Handlers for tests/test_workflows.py, loaded by the worker through TASKFLOW_HANDLER_MODULES."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.handlers import TaskContext, handler


@handler("gate")
def gate(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Fails until the file ``payload["gate"]`` exists (the "fix"), then passes."""
    if not Path(payload["gate"]).exists():
        raise RuntimeError("the gate is closed")
    return {"passed": sorted(payload.get("parents", {}))}


@handler("big")
def big(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """A result of ``payload["n"]`` characters."""
    return "x" * int(payload["n"])
