"""``AsyncTaskFlow``: every call of the API, for asyncio.

Submits are safe to retry: each carries an idempotency key (generated when the caller
gives none), so a retry after a timeout, a 503 or a dropped connection names the same
task. Concurrent ``submit()`` calls are gathered into one ``POST /tasks:batch`` (see
``_batch.py``); ``wait`` and ``stream`` ride Server-Sent Events and reconnect by
themselves.
"""

from __future__ import annotations

import asyncio
import builtins
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from taskflow_client import _json
from taskflow_client._batch import Batcher
from taskflow_client._http import Response, Transport
from taskflow_client._sse import SSEParser
from taskflow_client.errors import (
    ProblemError,
    TaskFlowError,
    TransportError,
    from_problem,
    problem_error,
)
from taskflow_client.models import (
    TERMINAL,
    Action,
    Change,
    Event,
    Priority,
    Task,
    TaskHandle,
    TaskPage,
    TaskSpec,
)

BATCH_MAX = 1000  # tasks per POST /tasks:batch: the API's limit
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class WaitTimeout(TaskFlowError, TimeoutError):
    """``wait`` ran out of time before the task was terminal; ``task`` is its last state."""

    def __init__(self, task_id: str, timeout: float, task: Task | None) -> None:
        super().__init__(f"task {task_id} not finished after {timeout:g} s"
                         + (f" (status {task.status})" if task else ""))
        self.task_id = task_id
        self.task = task


class BatchError(TaskFlowError):
    """``submit_many``: some tasks were refused; ``results`` has, in order, a
    ``TaskHandle`` for each accepted task and the error of each refused one."""

    def __init__(self, results: list[TaskHandle | ProblemError]) -> None:
        self.results = results
        self.errors = [r for r in results if isinstance(r, ProblemError)]
        super().__init__(f"{len(self.errors)} of {len(results)} tasks were refused; "
                         f"first: {self.errors[0] if self.errors else None}")


@dataclass(frozen=True, slots=True)
class Retry:
    """How failed requests are retried: ``attempts`` tries in all, with exponential
    backoff from ``backoff_s`` up to ``max_backoff_s`` and jitter; a ``Retry-After`` from
    the API is waited out instead. ``Retry(attempts=1)`` turns retrying off."""

    attempts: int = 6
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0

    def delay(self, attempt: int) -> float:
        cap = min(self.max_backoff_s, self.backoff_s * 2.0 ** attempt)
        return cap / 2 + random.uniform(0, cap / 2)  # "equal jitter": never zero


def new_key() -> str:
    """An idempotency key for a submit whose caller gave none."""
    return uuid.uuid4().hex


def _retry_after(resp: Response) -> float | None:
    v = resp.headers.get("retry-after")
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class AsyncTaskFlow:
    """A TaskFlow API, for asyncio code.

    :param base_url: the API, e.g. ``http://127.0.0.1:8000``.
    :param api_key: sent as ``Authorization: Bearer <key>`` when the API requires keys.
    :param timeout_s: for connecting and for each answer.
    :param max_connections: keep-alive connections at most.
    :param retries: the retry policy (``Retry``).
    :param batch: gather concurrent ``submit()`` calls into one ``POST /tasks:batch``.
    :param batch_window_s: how long the first submit of a batch waits for others.
    :param batch_max: a batch goes out as soon as it has this many tasks.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout_s: float = 30.0, max_connections: int = 64,
                 retries: Retry | None = None, batch: bool = True,
                 batch_window_s: float = 0.002, batch_max: int = 500) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self._http = Transport(base_url, headers=headers, max_connections=max_connections,
                               timeout_s=timeout_s)
        self.retries = retries or Retry()
        self._batcher = (Batcher(self._send_batch, window_s=batch_window_s,
                                 max_size=min(batch_max, BATCH_MAX)) if batch else None)

    async def __aenter__(self) -> AsyncTaskFlow:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Send what the batcher holds, then close the connections."""
        if self._batcher is not None:
            await self._batcher.drain()
        await self._http.close()

    # ------------------------------------------------------------------ plumbing
    async def _call(self, method: str, path: str, body: Any = None, *,
                    headers: dict[str, str] | None = None, safe: bool = True,
                    ok: tuple[int, ...] = (200, 201, 202, 207)) -> Response:
        """One request, retried per ``self.retry`` when ``safe`` (repeating it cannot do
        a second thing); otherwise retried only when the connection was never made."""
        raw = _json.dumps(body) if body is not None else None
        attempt = 0
        while True:
            try:
                resp = await self._http.request(method, path, raw, headers)
            except TransportError as exc:
                if attempt + 1 >= self.retries.attempts or not (safe or exc.connect_failed):
                    raise
                wait = self.retries.delay(attempt)
            else:
                if resp.status in ok:
                    return resp
                err = problem_error(resp.status, resp.body, _retry_after(resp))
                if (resp.status not in RETRY_STATUSES or attempt + 1 >= self.retries.attempts
                        or not (safe or resp.status == 429)):
                    raise err
                wait = (err.retry_after if err.retry_after is not None
                        else self.retries.delay(attempt))
            attempt += 1
            await asyncio.sleep(wait)

    async def _json_call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return _json.loads((await self._call(method, path, body, **kw)).body)

    # ------------------------------------------------------------------ submit
    async def submit(self, title: str, *, type: str = "echo",
                     payload: Mapping[str, Any] | None = None, priority: Priority | None = None,
                     max_attempts: int | None = None, timeout_s: float | None = None,
                     idempotency_key: str | None = None, delay_s: float | None = None,
                     run_at: datetime | str | None = None,
                     callback_url: str | None = None, concurrency_key: str | None = None,
                     max_concurrency: int | None = None) -> TaskHandle:
        """Submit one task; the handle has its id and the position of its creation.

        The same ``idempotency_key`` always names the same task (one is generated when
        none is given, so that retries are safe). ``delay_s`` or ``run_at`` ask the API
        for a later start; ``callback_url`` subscribes a webhook to the task's terminal
        events (its secret is in the handle's ``callback``).
        """
        spec = TaskSpec(title, type, dict(payload) if payload is not None else None,
                        priority, max_attempts, timeout_s, idempotency_key, delay_s, run_at,
                        callback_url, concurrency_key, max_concurrency)
        return await self.submit_spec(spec)

    async def submit_spec(self, spec: TaskSpec) -> TaskHandle:
        """``submit`` of a ``TaskSpec``."""
        key = spec.idempotency_key or new_key()
        body = spec.body()
        if self._batcher is not None and spec.callback_url is None:
            return await self._batcher.add({**body, "idempotency_key": key})
        resp = await self._call("POST", "/tasks", body, headers={"Idempotency-Key": key})
        return TaskHandle.from_json(_json.loads(resp.body),
                                    resp.headers.get("idempotent-replayed") == "true")

    async def _send_batch(self, items: list[dict[str, Any]]
                          ) -> builtins.list[TaskHandle | ProblemError]:
        """One ``POST /tasks:batch?partial=true``: each item's own handle or error."""
        doc = await self._json_call("POST", "/tasks:batch?partial=true", {"tasks": items})
        out: builtins.list[TaskHandle | ProblemError] = []
        for item in doc["items"]:
            problem = item.get("problem")
            if problem is not None:
                out.append(from_problem(int(problem.get("status", 422)), problem))
            else:
                out.append(TaskHandle.from_json(item))
        return out

    async def submit_many(self, tasks: Iterable[TaskSpec | Mapping[str, Any]], *,
                          chunk_size: int = BATCH_MAX) -> builtins.list[TaskHandle]:
        """Submit many tasks through ``POST /tasks:batch``, ``chunk_size`` per request.

        Each task is a ``TaskSpec`` or a mapping of ``submit``'s arguments. Returns the
        handles in order; raises ``BatchError`` (after sending every chunk) when some were
        refused. Each task carries an idempotency key, so calling it again with the same
        keys is safe.
        """
        if not 1 <= chunk_size <= BATCH_MAX:
            raise ValueError(f"chunk_size must be 1 to {BATCH_MAX}")
        results: builtins.list[TaskHandle | ProblemError] = []
        chunk: builtins.list[dict[str, Any]] = []
        for t in tasks:
            spec = t if isinstance(t, TaskSpec) else TaskSpec(**t)
            chunk.append({**spec.body(), "idempotency_key": spec.idempotency_key or new_key()})
            if len(chunk) == chunk_size:
                results += await self._send_batch(chunk)
                chunk = []
        if chunk:
            results += await self._send_batch(chunk)
        if any(isinstance(r, ProblemError) for r in results):
            raise BatchError(results)
        return [r for r in results if isinstance(r, TaskHandle)]

    # ------------------------------------------------------------------ reads
    async def get(self, task_id: str) -> Task:
        """The task's current state."""
        return Task.from_json(await self._json_call("GET", f"/tasks/{_seg(task_id)}"))

    async def list(self, *, status: str | None = None, type: str | None = None,
                   q: str | None = None, limit: int = 100, order: str = "desc",
                   cursor: str | None = None) -> AsyncIterator[TaskPage]:
        """Pages of tasks (newest first by default), following ``next_cursor``."""
        while True:
            query = {k: v for k, v in (("status", status), ("type", type), ("q", q),
                                       ("limit", limit), ("order", order),
                                       ("cursor", cursor)) if v is not None}
            page = TaskPage.from_json(await self._json_call("GET",
                                                            f"/tasks?{urlencode(query)}"))
            yield page
            if page.next_cursor is None or not page.items:
                return
            cursor = page.next_cursor

    async def history(self, task_id: str) -> builtins.list[Event]:
        """The task's events in log order."""
        doc = await self._json_call("GET", f"/tasks/{_seg(task_id)}/events")
        return [Event.from_json(e) for e in doc["items"]]

    async def cancel(self, task_id: str) -> Action:
        """Ask for the task to be cancelled (``Conflict`` if it is already finished)."""
        return Action.from_json(await self._json_call(
            "POST", f"/tasks/{_seg(task_id)}/cancel", safe=False))

    async def retry(self, task_id: str) -> Action:
        """Run a FAILED task again as a new attempt (``Conflict`` if it is not FAILED)."""
        return Action.from_json(await self._json_call(
            "POST", f"/tasks/{_seg(task_id)}/retry", safe=False))

    # ------------------------------------------------------------------ schedules
    async def create_schedule(self, name: str, task: TaskSpec | Mapping[str, Any], *,
                              cron: str | None = None, every_s: float | None = None,
                              timezone: str = "UTC", overlap: str = "allow",
                              catchup: str = "none",
                              idempotency_key: str | None = None) -> dict[str, Any]:
        """Create a schedule firing ``task`` on ``cron`` (in ``timezone``) or every
        ``every_s`` seconds; ``{schedule_id, next_run_at}``."""
        body = {"name": name, "task": _task_body(task), "timezone": timezone,
                "overlap": overlap, "catchup": catchup,
                **{k: v for k, v in (("cron", cron), ("every_s", every_s)) if v is not None}}
        doc: dict[str, Any] = await self._json_call(  # keyed, so a retry makes no twin
            "POST", "/schedules", body,
            headers={"Idempotency-Key": idempotency_key or new_key()}, safe=True)
        return doc

    async def schedules(self, *, limit: int = 100) -> AsyncIterator[dict[str, Any]]:
        """The caller's schedules, following ``next_cursor`` when the API pages them."""
        cursor: str | None = None
        while True:
            query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
            doc = await self._json_call("GET", f"/schedules?{urlencode(query)}")
            for item in doc["items"]:
                yield item
            cursor = doc.get("next_cursor")
            if not cursor or not doc["items"]:
                return

    async def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json_call("GET", f"/schedules/{_seg(schedule_id)}")
        return doc

    async def update_schedule(self, schedule_id: str, **changes: Any) -> dict[str, Any]:
        """Change any of ``create_schedule``'s fields; it restarts from now."""
        if isinstance(changes.get("task"), TaskSpec | Mapping):
            changes["task"] = _task_body(changes["task"])
        doc: dict[str, Any] = await self._json_call(
            "PATCH", f"/schedules/{_seg(schedule_id)}", changes, safe=False)
        return doc

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._call("DELETE", f"/schedules/{_seg(schedule_id)}", ok=(204,))

    async def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        """Pause (``Conflict`` if it is paused already)."""
        doc: dict[str, Any] = await self._json_call(
            "POST", f"/schedules/{_seg(schedule_id)}:pause", safe=False)
        return doc

    async def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        """Resume from now (``Conflict`` if it is not paused)."""
        doc: dict[str, Any] = await self._json_call(
            "POST", f"/schedules/{_seg(schedule_id)}:resume", safe=False)
        return doc

    async def trigger_schedule(self, schedule_id: str) -> dict[str, Any]:
        """Run the schedule's task now, once; ``{task_id, due_at, status, position}``."""
        doc: dict[str, Any] = await self._json_call(
            "POST", f"/schedules/{_seg(schedule_id)}:trigger", safe=False)
        return doc

    async def schedule_runs(self, schedule_id: str, *,
                            limit: int = 100) -> builtins.list[dict[str, Any]]:
        """The tasks the schedule created, latest due time first."""
        doc = await self._json_call(
            "GET", f"/schedules/{_seg(schedule_id)}/runs?{urlencode({'limit': limit})}")
        return builtins.list(doc["items"])

    # ------------------------------------------------------------------ webhooks
    async def create_webhook(self, url: str, events: Iterable[str], *,
                             description: str | None = None) -> dict[str, Any]:
        """Subscribe ``url`` to ``events`` (e.g. ``task.done``); the answer holds the
        ``secret``, said once: keep it to ``webhooks.verify`` deliveries."""
        body = {"url": url, "events": builtins.list(events),
                **({"description": description} if description is not None else {})}
        doc: dict[str, Any] = await self._json_call("POST", "/webhooks", body, safe=False)
        return doc

    async def webhooks(self) -> builtins.list[dict[str, Any]]:
        return builtins.list((await self._json_call("GET", "/webhooks"))["items"])

    async def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json_call("GET", f"/webhooks/{_seg(webhook_id)}")
        return doc

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._call("DELETE", f"/webhooks/{_seg(webhook_id)}", ok=(204,))

    async def rotate_webhook_secret(self, webhook_id: str) -> str:
        """A new secret, shown once; deliveries are signed with it from then on."""
        doc = await self._json_call("POST", f"/webhooks/{_seg(webhook_id)}:rotate-secret",
                                    safe=False)
        return str(doc["secret"])

    async def deliveries(self, webhook_id: str) -> builtins.list[dict[str, Any]]:
        """The webhook's deliveries with their status and attempts."""
        doc = await self._json_call("GET", f"/webhooks/{_seg(webhook_id)}/deliveries")
        return builtins.list(doc["items"])

    async def redeliver(self, webhook_id: str, delivery_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._json_call(
            "POST", f"/webhooks/{_seg(webhook_id)}/deliveries/{_seg(delivery_id)}:redeliver",
            safe=False)
        return doc

    # ------------------------------------------------------------------ streams
    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task once it is terminal (DONE, FAILED or CANCELLED), from its SSE stream
        (``GET /tasks/{id}/stream``), reconnecting if the stream breaks. Raises
        ``WaitTimeout`` after ``timeout`` seconds."""
        last: Task | None = None
        try:
            async with asyncio.timeout(timeout):
                attempt = 0
                while True:
                    try:
                        async for event, data in self._sse(f"/tasks/{_seg(task_id)}/stream"):
                            attempt = 0
                            if event == "snapshot":
                                last = Task.from_json(data)
                                if last.done:
                                    return last
                            elif data.get("status") in TERMINAL:
                                # The change names the status; the result is in the task.
                                return await self.get(task_id)
                    except (TransportError, ProblemError) as exc:
                        if isinstance(exc, ProblemError) and not _transient(exc):
                            raise
                    await asyncio.sleep(self.retries.delay(min(attempt, 6)))
                    attempt += 1
        except TimeoutError:
            raise WaitTimeout(task_id, timeout or 0, last) from None

    async def stream(self, *, status: str | Iterable[str] | None = None,
                     task_id: str | Iterable[str] | None = None,
                     type: str | Iterable[str] | None = None,
                     after: int | None = None) -> AsyncIterator[Change]:
        """Every change after ``after`` (a change position; None: from now), as it
        happens, with the filters; reconnects with ``Last-Event-ID`` by itself, so no
        change is skipped or repeated. Runs until the caller stops iterating."""
        query: builtins.list[tuple[str, str]] = []
        for name, value in (("status", status), ("task_id", task_id), ("type", type)):
            if isinstance(value, str):
                query.append((name, value))
            elif value is not None:
                query += [(name, v) for v in value]
        if after is not None:
            query.append(("after", str(after)))
        path = "/events" + (f"?{urlencode(query)}" if query else "")
        last = after
        attempt = 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last is not None else None
            try:
                async for event, data, eid in self._sse_ids(path, headers):
                    attempt = 0
                    if eid is None:
                        continue
                    position = int(eid)
                    if last is not None and position <= last and event != "reset":
                        continue  # already delivered
                    last = position
                    yield Change(position, event, data)
            except (TransportError, ProblemError) as exc:
                if isinstance(exc, ProblemError) and not _transient(exc):
                    raise
            await asyncio.sleep(self.retries.delay(min(attempt, 6)))
            attempt += 1

    async def _sse(self, path: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        async for event, data, _ in self._sse_ids(path, None):
            yield event, data

    async def _sse_ids(self, path: str, headers: dict[str, str] | None
                       ) -> AsyncIterator[tuple[str, dict[str, Any], str | None]]:
        async with self._http.stream(path, headers) as (resp, chunks):
            if resp.status != 200:
                raise problem_error(resp.status, resp.body, _retry_after(resp))
            parser = SSEParser()
            async for chunk in chunks:
                for ev in parser.feed(chunk):
                    if ev.data:
                        yield ev.event, _json.loads(ev.data), ev.id


def _transient(exc: ProblemError) -> bool:
    return exc.status in RETRY_STATUSES


def _seg(task_id: str) -> str:
    return quote(str(task_id), safe="")


__all__ = ["AsyncTaskFlow", "BatchError", "Retry", "WaitTimeout"]


def _task_body(task: TaskSpec | Mapping[str, Any]) -> dict[str, Any]:
    return (task if isinstance(task, TaskSpec) else TaskSpec(**task)).body()
