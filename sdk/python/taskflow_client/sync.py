"""``TaskFlow``: the same calls as ``AsyncTaskFlow``, for code without an event loop.

It runs one ``AsyncTaskFlow`` on a private event loop in a background thread and waits
for each call. One implementation serves both, and submits from many threads are
gathered into batches just as concurrent coroutines' are.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar

from taskflow_client.aio import AsyncTaskFlow, Retry
from taskflow_client.errors import TaskFlowError
from taskflow_client.models import (
    Action,
    Change,
    Event,
    Priority,
    Task,
    TaskHandle,
    TaskPage,
    TaskSpec,
)

T = TypeVar("T")


class TaskFlow:
    """A TaskFlow API, for synchronous code; safe to share between threads.

    Takes the same arguments as ``AsyncTaskFlow``. Close it (or use ``with``) to stop its
    thread.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout_s: float = 30.0, max_connections: int = 64,
                 retries: Retry | None = None, batch: bool = True,
                 batch_window_s: float = 0.002, batch_max: int = 500) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="taskflow-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncTaskFlow:
            return AsyncTaskFlow(base_url, api_key, timeout_s=timeout_s,
                                 max_connections=max_connections, retries=retries,
                                 batch=batch, batch_window_s=batch_window_s,
                                 batch_max=batch_max)

        self._aio = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise TaskFlowError("the client is closed")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except KeyboardInterrupt:
            fut.cancel()
            raise

    def _iterate(self, ait: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(_next(ait))
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                aclose = getattr(ait, "aclose", None)
                if aclose is not None:
                    self._run(aclose())

    def __enter__(self) -> TaskFlow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._run(self._aio.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def submit(self, title: str, *, type: str = "echo",
               payload: Mapping[str, Any] | None = None, priority: Priority | None = None,
               max_attempts: int | None = None, timeout_s: float | None = None,
               idempotency_key: str | None = None, delay_s: float | None = None,
               run_at: datetime | str | None = None,
               callback_url: str | None = None, concurrency_key: str | None = None,
               max_concurrency: int | None = None) -> TaskHandle:
        """Submit one task (see ``AsyncTaskFlow.submit``)."""
        return self._run(self._aio.submit(
            title, type=type, payload=payload, priority=priority, max_attempts=max_attempts,
            timeout_s=timeout_s, idempotency_key=idempotency_key, delay_s=delay_s,
            run_at=run_at, callback_url=callback_url, concurrency_key=concurrency_key,
            max_concurrency=max_concurrency))

    def submit_many(self, tasks: Iterable[TaskSpec | Mapping[str, Any]], *,
                    chunk_size: int = 1000) -> builtins.list[TaskHandle]:
        """Submit many tasks through ``POST /tasks:batch`` (see ``AsyncTaskFlow``)."""
        return self._run(self._aio.submit_many(tasks, chunk_size=chunk_size))

    def get(self, task_id: str) -> Task:
        return self._run(self._aio.get(task_id))

    def list(self, *, status: str | None = None, type: str | None = None,
             q: str | None = None, limit: int = 100, order: str = "desc",
             cursor: str | None = None) -> Iterator[TaskPage]:
        """Pages of tasks, following ``next_cursor``."""
        return self._iterate(self._aio.list(status=status, type=type, q=q, limit=limit,
                                            order=order, cursor=cursor))

    def history(self, task_id: str) -> builtins.list[Event]:
        return self._run(self._aio.history(task_id))

    def cancel(self, task_id: str) -> Action:
        return self._run(self._aio.cancel(task_id))

    def retry(self, task_id: str) -> Action:
        return self._run(self._aio.retry(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task once terminal, from its SSE stream (see ``AsyncTaskFlow.wait``)."""
        return self._run(self._aio.wait(task_id, timeout))

    def stream(self, *, status: str | Iterable[str] | None = None,
               task_id: str | Iterable[str] | None = None,
               type: str | Iterable[str] | None = None,
               after: int | None = None) -> Iterator[Change]:
        """Every change after ``after``, resuming by itself (see ``AsyncTaskFlow``)."""
        return self._iterate(self._aio.stream(status=status, task_id=task_id, type=type,
                                              after=after))


    # Schedules and webhooks: the same calls as ``AsyncTaskFlow``'s.
    def create_schedule(self, name: str, task: TaskSpec | Mapping[str, Any], *,
                        cron: str | None = None, every_s: float | None = None,
                        timezone: str = "UTC", overlap: str = "allow", catchup: str = "none",
                        idempotency_key: str | None = None) -> dict[str, Any]:
        return self._run(self._aio.create_schedule(
            name, task, cron=cron, every_s=every_s, timezone=timezone, overlap=overlap,
            catchup=catchup, idempotency_key=idempotency_key))

    def schedules(self, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self._iterate(self._aio.schedules(limit=limit))

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._run(self._aio.get_schedule(schedule_id))

    def update_schedule(self, schedule_id: str, **changes: Any) -> dict[str, Any]:
        return self._run(self._aio.update_schedule(schedule_id, **changes))

    def delete_schedule(self, schedule_id: str) -> None:
        self._run(self._aio.delete_schedule(schedule_id))

    def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._run(self._aio.pause_schedule(schedule_id))

    def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._run(self._aio.resume_schedule(schedule_id))

    def trigger_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._run(self._aio.trigger_schedule(schedule_id))

    def schedule_runs(self, schedule_id: str, *, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return self._run(self._aio.schedule_runs(schedule_id, limit=limit))

    def create_webhook(self, url: str, events: Iterable[str], *,
                       description: str | None = None) -> dict[str, Any]:
        return self._run(self._aio.create_webhook(url, events, description=description))

    def webhooks(self) -> builtins.list[dict[str, Any]]:
        return self._run(self._aio.webhooks())

    def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        return self._run(self._aio.get_webhook(webhook_id))

    def delete_webhook(self, webhook_id: str) -> None:
        self._run(self._aio.delete_webhook(webhook_id))

    def rotate_webhook_secret(self, webhook_id: str) -> str:
        return self._run(self._aio.rotate_webhook_secret(webhook_id))

    def deliveries(self, webhook_id: str) -> builtins.list[dict[str, Any]]:
        return self._run(self._aio.deliveries(webhook_id))

    def redeliver(self, webhook_id: str, delivery_id: str) -> dict[str, Any]:
        return self._run(self._aio.redeliver(webhook_id, delivery_id))

async def _next(ait: AsyncIterator[T]) -> T:
    return await anext(ait)
