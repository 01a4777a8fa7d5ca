"""A user's handler module, loaded by the worker through TASKFLOW_HANDLER_MODULES."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from worker.handlers import TaskContext, handler


@handler("spin")
def spin(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """A synchronous (thread) handler that stops when cancellation is signalled."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ctx.is_cancelled():
            Path(payload["marker"]).write_text(f"{ctx.task_id} saw the cancel")
            return "stopped"
        time.sleep(0.02)
    return "spun"


@handler("bad_result")
def bad_result(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Returns what the log or the read model cannot hold: a NUL, or no JSON at all."""
    ctx.progress(50, "half\x00way")  # a NUL in a progress message is replaced, not fatal
    return "nul\x00byte" if payload.get("kind") == "nul" else object()


@handler("pooled")
async def pooled(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """A type only some workers have: for the worker-pool tests."""
    return "pooled ok"
