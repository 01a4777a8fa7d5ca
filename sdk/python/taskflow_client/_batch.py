"""Auto-batching: concurrent ``submit()`` calls go out as one ``POST /tasks:batch``.

The first submit of a batch waits ``window_s`` for others (or until ``max_size`` have
come); then the batch is sent, and each caller gets its own handle or its own error.
A single request carries many tasks, so a process that submits from many coroutines
pays one round trip and one request's CPU, on both sides, per batch instead of per task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from taskflow_client.errors import ProblemError
from taskflow_client.models import TaskHandle

Send = Callable[[list[dict[str, Any]]], Awaitable[list[TaskHandle | ProblemError]]]


class Batcher:
    def __init__(self, send: Send, *, window_s: float, max_size: int) -> None:
        self._send = send
        self.window_s = window_s
        self.max_size = max_size
        self._pending: list[tuple[dict[str, Any], asyncio.Future[TaskHandle]]] = []
        self._timer: asyncio.Handle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.batches = 0  # requests sent

    def add(self, item: dict[str, Any]) -> asyncio.Future[TaskHandle]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TaskHandle] = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = (loop.call_later(self.window_s, self._flush) if self.window_s > 0
                           else loop.call_soon(self._flush))
        return fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run(self, batch: list[tuple[dict[str, Any], asyncio.Future[TaskHandle]]]
                   ) -> None:
        self.batches += 1
        try:
            results = await self._send([item for item, _ in batch])
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), res in zip(batch, results, strict=True):
            if fut.done():
                continue  # its caller gave up (cancelled)
            if isinstance(res, ProblemError):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    async def drain(self) -> None:
        """Send what is pending and wait for every batch in flight."""
        self._flush()
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
