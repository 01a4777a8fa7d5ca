"""HTTP routes. Thin: validate, call one function, map the result."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import metrics, queries
from api.deps import DbDep, FeedDep, LogDep, SettingsDep
from api.feed import Filter, SubscriberDropped
from api.problems import PROBLEM, Conflict, NotFound, Problem, Unavailable
from api.schemas import EventPage, PositionOut, TaskAccepted, TaskIn, TaskOut, TaskPage
from events import constants
from events.db import current_revision, migration_head
from events.errors import LogUnavailable
from events.log import ping as kafka_ping
from events.models import (
    TERMINAL,
    EventType,
    TaskCancelRequested,
    TaskCreated,
    TaskRedriven,
    TaskStatus,
    new_event,
)

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": desc, "content": {PROBLEM: {}}}
    for code, desc in [(404, "No such task"), (409, "Not allowed in the task's state"),
                       (422, "Invalid input"), (503, "The event log did not acknowledge")]
}


class BadRequest(Problem):
    pass


async def _wait_for_task(db: DbDep, task_id: uuid.UUID, wait_s: float) -> dict[str, Any] | None:
    """Read-your-writes: a task accepted a moment ago may not be projected yet."""
    deadline = time.monotonic() + wait_s
    while True:
        row = await queries.get_task(db, task_id=task_id)
        if row is not None or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(0.02)


@router.post("/tasks", status_code=202, response_model=TaskAccepted, tags=["tasks"],
             responses={k: v for k, v in _ERRORS.items() if k in (422, 503)})
async def submit_task(body: TaskIn, producer: LogDep, response: Response) -> TaskAccepted:
    """Accept a task: append ``task.created`` to the log and answer once Kafka acknowledged."""
    task_id = uuid.uuid4()
    ev = new_event(
        TaskCreated(title=body.title, type=body.type, payload=body.payload,
                    priority=body.priority, max_attempts=body.max_attempts,
                    timeout_s=body.timeout_s),
        task_id=task_id, source=constants.API_SOURCE,
    )
    [pos] = await producer.append([ev])
    metrics.SUBMITTED.labels(body.type).inc()
    response.headers["Location"] = f"/tasks/{task_id}"
    return TaskAccepted(task_id=task_id, status=TaskStatus.PENDING,
                        position=PositionOut(partition=pos.partition, offset=pos.offset))


@router.get("/tasks/{task_id}", response_model=TaskOut, tags=["tasks"],
            responses={404: _ERRORS[404]})
async def get_task(task_id: uuid.UUID, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """The task's current state, from the projection."""
    row = await _wait_for_task(db, task_id, settings.read_wait_s)
    if row is None:
        raise NotFound(f"no task {task_id}")
    return row


@router.get("/tasks", response_model=TaskPage, tags=["tasks"])
async def list_tasks(
    db: DbDep,
    status: TaskStatus | None = None,
    type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> TaskPage:
    """Tasks by creation time, newest first, with an opaque keyset cursor."""
    try:
        rows, nxt = await queries.list_tasks(
            db, status=status.value if status else None, type_=type, limit=limit,
            cursor=cursor, descending=order == "desc")
    except queries.BadCursor:
        raise BadRequest("cursor is not valid") from None
    return TaskPage(items=[TaskOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/tasks/{task_id}/events", response_model=EventPage, tags=["tasks"],
            responses={404: _ERRORS[404]})
async def task_events(task_id: uuid.UUID, db: DbDep, settings: SettingsDep) -> EventPage:
    """The task's full history in log order, each CloudEvent with its position."""
    items = await queries.task_history(db, task_id=task_id)
    if not items and await _wait_for_task(db, task_id, settings.read_wait_s) is None:
        raise NotFound(f"no task {task_id}")
    if not items:
        items = await queries.task_history(db, task_id=task_id)
    return EventPage(items=items)


async def _emit(producer: LogDep, db: DbDep, settings: SettingsDep, task_id: uuid.UUID,
                kind: str) -> dict[str, Any]:
    row = await _wait_for_task(db, task_id, settings.read_wait_s)
    if row is None:
        raise NotFound(f"no task {task_id}")
    status = TaskStatus(row["status"])
    if kind == "cancel":
        if status in TERMINAL:
            raise Conflict(f"task {task_id} is already {status.value}", task_status=status.value)
        data: TaskCancelRequested | TaskRedriven = TaskCancelRequested(reason="api")
    else:
        if status is not TaskStatus.FAILED:
            raise Conflict(f"only FAILED tasks can be retried; task {task_id} is "
                           f"{status.value}", task_status=status.value)
        data = TaskRedriven(reason="api")
    ev = new_event(data, task_id=task_id, source=constants.API_SOURCE, attempt=row["attempt"],
                   tenant=row.get("tenant"))
    [pos] = await producer.append([ev])
    return {"task_id": str(task_id), "status": status.value,
            "position": {"partition": pos.partition, "offset": pos.offset}}


@router.post("/tasks/{task_id}/cancel", status_code=202, tags=["tasks"],
             responses={k: v for k, v in _ERRORS.items() if k in (404, 409, 503)})
async def cancel_task(task_id: uuid.UUID, producer: LogDep, db: DbDep,
                      settings: SettingsDep) -> dict[str, Any]:
    """Request cancellation: a pending task never starts, a running one is stopped."""
    return await _emit(producer, db, settings, task_id, "cancel")


@router.post("/tasks/{task_id}/retry", status_code=202, tags=["tasks"],
             responses={k: v for k, v in _ERRORS.items() if k in (404, 409, 503)})
async def retry_task(task_id: uuid.UUID, producer: LogDep, db: DbDep,
                     settings: SettingsDep) -> dict[str, Any]:
    """Redrive a FAILED (dead-lettered) task: it runs again as a new attempt."""
    return await _emit(producer, db, settings, task_id, "retry")


@router.get("/events", tags=["stream"], response_class=EventSourceResponse)
async def stream(
    feed: FeedDep,
    settings: SettingsDep,
    task_id: Annotated[list[uuid.UUID] | None, Query()] = None,
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    type: Annotated[list[EventType] | None, Query()] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Server-Sent Events: one event per visible change; ``id`` is the change position.

    Resume with ``Last-Event-ID`` (or ``?after=``) to get every change after it exactly once.
    """
    start = after
    if last_event_id:
        try:
            start = int(last_event_id)
        except ValueError:
            raise BadRequest("Last-Event-ID must be a change position (an integer)") from None
        if start < 0:
            raise BadRequest("Last-Event-ID must not be negative")
    flt = Filter(
        task_ids=frozenset(task_id or ()),
        statuses=frozenset(s.value for s in status or ()),
        types=frozenset(t.value for t in type or ()),
    )

    async def events() -> AsyncIterator[ServerSentEvent]:
        metrics.SSE_SUBSCRIBERS.inc()
        try:
            yield ServerSentEvent(comment="taskflow change stream", retry=constants.SSE_RETRY_MS)
            async for c in feed.subscribe(flt, start):
                yield ServerSentEvent(id=str(c.position), event=c.type,
                                      data=orjson.dumps(c.data()).decode())
        except SubscriberDropped:
            return
        finally:
            metrics.SSE_SUBSCRIBERS.dec()

    return EventSourceResponse(events(), ping=int(settings.sse_heartbeat_s),
                               send_timeout=constants.SSE_SEND_TIMEOUT_S)


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses={503: _ERRORS[503]})
async def readyz(db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Readiness: Kafka and Postgres reachable, migrations at head."""
    checks: dict[str, str] = {}
    try:
        await kafka_ping(settings.kafka_bootstrap)
        checks["kafka"] = "ok"
    except LogUnavailable as exc:
        checks["kafka"] = exc.reason
    try:
        await queries.ping(db)
        rev, head = await current_revision(db), migration_head()
        checks["postgres"] = "ok"
        checks["migrations"] = "ok" if rev == head else f"at {rev}, head is {head}"
    except Exception as exc:
        checks["postgres"] = repr(exc)
    if any(v != "ok" for v in checks.values()):
        raise Unavailable("not ready", checks=checks)
    return {"status": "ready", "checks": checks}


@router.get("/metrics", tags=["ops"], response_class=Response)
async def prometheus() -> Response:
    """Prometheus text format."""
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


