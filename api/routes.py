"""HTTP routes. Thin: validate, call one function, map the result."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from api import metrics, queries
from api.deps import DbDep, FeedDep, LogDep, SettingsDep
from api.feed import Change, Filter, Reset, SubscriberDropped
from api.problems import PROBLEM, Conflict, Invalid, NotFound, Problem, Unavailable
from api.schemas import EventPage, PositionOut, TaskAccepted, TaskIn, TaskOut, TaskPage
from events import constants
from events.codec import decode
from events.db import current_revision, migration_head
from events.errors import LogUnavailable
from events.fold import fold
from events.log import log_ends
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
from events.settings import Settings

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
async def submit_task(body: TaskIn, producer: LogDep, settings: SettingsDep,
                      response: Response) -> TaskAccepted:
    """Accept a task: append ``task.created`` to the log and answer once Kafka acknowledged."""
    if body.type not in settings.task_type_list:
        raise Invalid(f"unknown task type {body.type!r}",
                      errors=[{"loc": ["body", "type"], "msg": "unknown task type",
                               "type": "enum", "allowed": settings.task_type_list}])
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


def _parse_as_of(value: str) -> datetime | tuple[int, int]:
    if ":" in value and "T" not in value and "-" not in value:
        p, _, o = value.partition(":")
        try:
            return int(p), int(o)
        except ValueError:
            pass
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("as_of must be an RFC 3339 time or a PARTITION:OFFSET position",
                      errors=[{"loc": ["query", "as_of"], "msg": "invalid", "type": "value"}]
                      ) from None
    if t.tzinfo is None:
        raise Invalid("as_of needs a time zone offset (e.g. Z)",
                      errors=[{"loc": ["query", "as_of"], "msg": "no offset", "type": "value"}])
    return t


@router.get("/tasks/{task_id}", response_model=TaskOut, tags=["tasks"],
            responses={404: _ERRORS[404], 422: _ERRORS[422]})
async def get_task(
    task_id: uuid.UUID, db: DbDep, settings: SettingsDep,
    as_of: Annotated[str | None, Query(
        max_length=64, description="RFC 3339 time, or PARTITION:OFFSET: the state then",
        examples=["2026-11-22T10:00:00Z", "3:41"])] = None,
) -> dict[str, Any]:
    """The task's current state, from the projection; or, with ``as_of``, as it was then."""
    if as_of is not None:
        point = _parse_as_of(as_of)
        history = await queries.task_history(db, task_id=task_id)
        upto = []
        for item in history:
            pos = item["position"]
            if isinstance(point, tuple):
                if (pos["partition"], pos["offset"]) > point:
                    break
            elif datetime.fromisoformat(item["time"]) > point:
                break
            upto.append(decode(orjson.dumps({k: v for k, v in item.items() if k != "position"})))
        state = fold(upto)
        if state is None:
            raise NotFound(f"task {task_id} did not exist at {as_of}")
        return state.model_dump()
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
        data = TaskRedriven(reason="api", spec=TaskCreated(
            title=row["title"], type=row["type"], payload=row["payload"] or {},
            priority=row["priority"] or 0, max_attempts=row["max_attempts"],
            timeout_s=row["timeout_s"]))
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
                yield _sse(c)
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
            responses={404: _ERRORS[404]})
async def task_stream(task_id: uuid.UUID, db: DbDep, feed: FeedDep,
                      settings: SettingsDep) -> EventSourceResponse:
    """One task: a ``snapshot`` event with its state, then its changes; ends after terminal."""
    snap = await queries.task_snapshot(db, task_id=task_id)
    if snap is None and await _wait_for_task(db, task_id, settings.read_wait_s) is not None:
        snap = await queries.task_snapshot(db, task_id=task_id)
    if snap is None:
        raise NotFound(f"no task {task_id}")
    row, position = snap

    async def events() -> AsyncIterator[ServerSentEvent]:
        metrics.SSE_SUBSCRIBERS.inc()
        try:
            yield ServerSentEvent(id=str(position), event="snapshot", retry=constants.SSE_RETRY_MS,
                                  data=TaskOut.model_validate(row).model_dump_json())
            if TaskStatus(row["status"]) in TERMINAL:
                return
            async for c in feed.subscribe(Filter(task_ids=frozenset({task_id})), position):
                yield _sse(c)
                if isinstance(c, Change) and c.status in _TERMINAL_NAMES:
                    return
        except SubscriberDropped:
            metrics.SSE_DROPPED.inc()
        finally:
            metrics.SSE_SUBSCRIBERS.dec()

    return _Stream(events(), ping=settings.sse_heartbeat_s,
                               send_timeout=settings.sse_send_timeout_s)


_TERMINAL_NAMES = frozenset(s.value for s in TERMINAL)


@router.get("/handlers", tags=["tasks"])
async def handlers(settings: SettingsDep) -> dict[str, list[str]]:
    """Task types this deployment accepts (``TASKFLOW_TASK_TYPES``)."""
    return {"types": settings.task_type_list}


async def projector_lag(request: Request, settings: Settings, db: DbDep) -> dict[int, int]:
    """Events in the log not yet applied by the live projection, per partition."""
    ends = await log_ends(request.app, settings)
    cps = await queries.checkpoints(db, projection=settings.projection, topic=settings.topic)
    lag = {p: max(0, end - (cps.get(p, -1) + 1)) for p, end in ends.items()}
    for p, n in lag.items():
        metrics.PROJECTOR_LAG.labels(str(p)).set(n)
    return lag


@router.get("/stats", tags=["ops"])
async def stats(request: Request, db: DbDep, settings: SettingsDep,
                minutes: Annotated[int, Query(ge=1, le=1440)] = 15) -> dict[str, Any]:
    """Counts by status, tasks finished per minute, and projector lag per partition."""
    try:
        lag: dict[int, int] | None = await projector_lag(request, settings, db)
    except LogUnavailable:
        lag = None
    return {"counts": await queries.status_counts(db),
            "throughput": await queries.throughput(db, minutes=minutes),
            "lag": {str(p): n for p, n in lag.items()} if lag is not None else None}


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
async def prometheus(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    """Prometheus text format."""
    with contextlib.suppress(LogUnavailable):
        await projector_lag(request, settings, db)
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


