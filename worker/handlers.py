"""Task handlers, registered by name.

A handler is ``async def handler(payload, ctx) -> result`` (a plain ``def`` runs in a
thread). Raising fails the attempt; the error text becomes the event's ``error``.
``ctx.progress(percent, message)`` reports progress; the worker rate-limits it.

    @handler("resize")
    async def resize(payload: dict[str, Any], ctx: TaskContext) -> Any: ...
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class HandlerError(Exception):
    """A permanent failure: the task fails at once, without retries.

    Any other exception fails the attempt and is retried while attempts are left.
    """


class TaskContext(Protocol):
    """What a handler gets besides its payload."""

    task_id: str
    attempt: int

    def progress(self, percent: int, message: str | None = None) -> None:
        """Report 0-100 progress; the worker turns it into rate-limited task.progress."""

    def is_cancelled(self) -> bool:
        """True once cancellation was requested (check it in long synchronous loops)."""


AsyncHandler = Callable[[dict[str, Any], TaskContext], Awaitable[Any]]
SyncHandler = Callable[[dict[str, Any], TaskContext], Any]

REGISTRY: dict[str, AsyncHandler] = {}


def handler(name: str) -> Callable[[SyncHandler], SyncHandler]:
    """Register a handler under ``name`` (the task's ``type``)."""

    def register(fn: SyncHandler) -> SyncHandler:
        if inspect.iscoroutinefunction(fn):
            REGISTRY[name] = fn
        else:

            async def in_thread(payload: dict[str, Any], ctx: TaskContext) -> Any:
                return await asyncio.to_thread(fn, payload, ctx)

            REGISTRY[name] = in_thread
        return fn

    return register


def names() -> list[str]:
    return sorted(REGISTRY)


@handler("echo")
async def echo(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """DONE with ``payload["message"]`` as the result; FAILED without a message."""
    if "message" not in payload:
        raise HandlerError("payload has no 'message'")
    return payload["message"]


@handler("sleep")
async def sleep(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Sleep ``seconds`` (default 1), reporting progress ten times on the way."""
    seconds = float(payload.get("seconds", 1))
    if not 0 <= seconds <= 86_400:
        raise HandlerError("seconds must be between 0 and 86400")
    steps = 10
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        ctx.progress((i + 1) * 100 // steps, f"slept {(i + 1) * seconds / steps:.2f}s")
    return {"slept": seconds}


@handler("fail")
async def fail(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Always raises (a retryable error), with ``payload["error"]`` if given."""
    raise RuntimeError(str(payload.get("error", "fail handler always fails")))


@handler("flaky")
async def flaky(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Fails its first ``fail_times`` attempts (default 1), then returns ``"ok"``."""
    if ctx.attempt <= int(payload.get("fail_times", 1)):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return "ok"


@handler("noop")
async def noop(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """Does nothing; the benchmark's task."""
    return None


@handler("compute")
def compute(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """``fibonacci n`` (0 <= n <= 100000), computed iteratively in a thread."""
    n = payload.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 100_000:
        raise HandlerError("compute needs an integer n between 0 and 100000")
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return {"n": n, "fibonacci": str(a) if a > 2**53 else a}
