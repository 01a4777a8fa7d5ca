"""Server-Sent Events routes: the change stream and one task's stream.

Both are fed by the API process's one change feed (``api/feed.py``); an event's ``id``
is its change position, so a client resumes exactly where it stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from api import metrics
from api.auth import TenantDep
from api.deps import DbDep, FeedDep, SettingsDep
from api.erasure import open_rows
from api.feed import Change, Filter, Reset, SubscriberDropped
from api.problems import BadRequest, NotFound, documented
from api.reads import visible, wait_for_task
from api.schemas import TaskOut
from events import constants, queries
from events.models import TERMINAL, EventType, TaskStatus

router = APIRouter()


@router.get("/events", tags=["stream"], response_class=EventSourceResponse)
async def stream(
    feed: FeedDep,
    settings: SettingsDep,
    tenant: TenantDep,
    db: DbDep,
    task_id: Annotated[list[uuid.UUID] | None, Query()] = None,
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    type: Annotated[list[EventType] | None, Query()] = None,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    workflow_id: Annotated[uuid.UUID | None, Query()] = None,
) -> EventSourceResponse:
    """Server-Sent Events: one event per visible change; ``id`` is the change position.

    Resume with ``Last-Event-ID`` (or ``?after=``) to get every change after it exactly once.
    ``workflow_id`` keeps the changes of that workflow's node tasks.
    """
    if workflow_id is not None:
        from api.workflows import stream_task_ids

        task_id = [*(task_id or ()), *await stream_task_ids(db, workflow_id, tenant,
                                                             settings.read_wait_s)]
    start = after
    if last_event_id:
        try:
            start = int(last_event_id)
        except ValueError:
            raise BadRequest("Last-Event-ID must be a change position (an integer)") from None
        if not 0 <= start < 2**63:  # a change position is a Postgres int8
            raise BadRequest("Last-Event-ID must be a change position (0 to 2**63-1)")
    flt = Filter(
        task_ids=frozenset(task_id or ()),
        statuses=frozenset(s.value for s in status or ()),
        types=frozenset(t.value for t in type or ()),
        tenant=tenant.name, any_tenant=not tenant.scoped,
    )

    async def events() -> AsyncIterator[ServerSentEvent | bytes]:
        metrics.SSE_SUBSCRIBERS.inc()
        try:
            yield ServerSentEvent(comment="taskflow change stream", retry=constants.SSE_RETRY_MS)
            async for batch in feed.subscribe(flt, start):
                yield b"".join(_frame(c) for c in batch)
        except SubscriberDropped:
            metrics.SSE_DROPPED.inc()
            return
        finally:
            metrics.SSE_SUBSCRIBERS.dec()

    return _Stream(events(), ping=settings.sse_heartbeat_s,
                   send_timeout=settings.sse_send_timeout_s)


class _Stream(EventSourceResponse):
    """An SSE response that counts a client dropped for a send timeout (a stalled reader)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            metrics.SSE_DROPPED.inc()


def _frame(c: Change | Reset) -> bytes:
    return c.sse if isinstance(c, Change) else _sse(c).encode()


def _sse(c: Change | Reset) -> ServerSentEvent:
    if isinstance(c, Reset):
        return ServerSentEvent(
            id=str(c.position), event="reset",
            data=orjson.dumps({"reason": "trimmed", "trimmed_upto": c.trimmed_upto,
                               "position": c.position,
                               "detail": "changes after your position were trimmed by "
                                         "retention; refetch state, then continue"}).decode())
    return ServerSentEvent(id=str(c.position), event=c.type, data=orjson.dumps(c.data()).decode())


@router.get("/tasks/{task_id}/stream", tags=["stream"], response_class=EventSourceResponse,
            responses=documented(404))
async def task_stream(task_id: uuid.UUID, request: Request, db: DbDep, feed: FeedDep,
                      settings: SettingsDep, tenant: TenantDep) -> EventSourceResponse:
    """One task: a ``snapshot`` event with its state, then its changes; ends after terminal."""
    snap = await queries.task_snapshot(db, task_id=task_id)
    # Another tenant's task waits as long as a missing one (``wait_for_task``).
    if ((snap is None or not visible(snap[0]["tenant"], tenant))
            and await wait_for_task(db, feed, task_id, settings.read_wait_s,
                                    tenant=tenant) is not None):
        snap = await queries.task_snapshot(db, task_id=task_id)
    if snap is None or not visible(snap[0]["tenant"], tenant):
        raise NotFound(f"no task {task_id}")
    row, position = snap
    row = (await open_rows(getattr(request.app.state, "keyring", None), [row]))[0]

    async def events() -> AsyncIterator[ServerSentEvent | bytes]:
        metrics.SSE_SUBSCRIBERS.inc()
        try:
            yield ServerSentEvent(id=str(position), event="snapshot", retry=constants.SSE_RETRY_MS,
                                  data=TaskOut.model_validate(row).model_dump_json())
            if TaskStatus(row["status"]) in TERMINAL:
                return
            flt = Filter(task_ids=frozenset({task_id}))
            async for batch in feed.subscribe(flt, position):
                out = []
                for c in batch:
                    out.append(_frame(c))
                    if isinstance(c, Change) and c.status in _TERMINAL_NAMES:
                        yield b"".join(out)
                        return
                yield b"".join(out)
        except SubscriberDropped:
            metrics.SSE_DROPPED.inc()
        finally:
            metrics.SSE_SUBSCRIBERS.dec()

    return _Stream(events(), ping=settings.sse_heartbeat_s,
                   send_timeout=settings.sse_send_timeout_s)


_TERMINAL_NAMES = frozenset(s.value for s in TERMINAL)
