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

from api import metrics, submit
from api.auth import Tenant, TenantDep
from api.deps import DbDep, FeedDep, LogDep, SettingsDep
from api.feed import Change, ChangeFeed, Filter, Reset, SubscriberDropped
from api.logstate import log_ends
from api.problems import (
    PROBLEM,
    Conflict,
    Invalid,
    NotFound,
    Problem,
    Unavailable,
)
from api.schemas import (
    TYPE_PATTERN,
    BatchAccepted,
    BatchIn,
    EventPage,
    QueryTime,
    TaskAccepted,
    TaskIn,
    TaskOut,
    TaskPage,
)
from events import constants, queries
from events.codec import decode
from events.db import current_revision, migration_head
from events.errors import LogUnavailable
from events.fold import fold
from events.log import ping as kafka_ping
from events.models import (
    TERMINAL,
    EventType,
    TaskCancelRequested,
    TaskStatus,
    new_event,
)
from events.redrive import redrive
from events.retry import describe
from events.settings import Settings

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": desc, "content": {PROBLEM: {}}}
    for code, desc in [(400, "Bad request"), (401, "Missing or invalid API key"),
                       (404, "No such task"), (409, "Not allowed in the task's state"),
                       (413, "Body too large"), (415, "Body is not JSON"),
                       (422, "Invalid input"), (429, "Rate limit exceeded"),
                       (503, "The event log did not acknowledge")]
}


class BadRequest(Problem):
    pass


_ANY = object()  # list_tasks: no tenant filter
MinPosition = Annotated[str | None, Query(
    # At most 18 offset digits: every such offset fits Postgres int8, and a log holds fewer.
    pattern=r"^\d{1,9}:\d{1,18}$", description="PARTITION:OFFSET from a write's response: wait "
    "(bounded) until the projection has applied it", examples=["3:41"])]


def _visible(owner: str | None, tenant: Tenant) -> bool:
    """Another tenant's task is not found, not forbidden: its existence is not leaked."""
    return not tenant.scoped or owner == tenant.name


async def _reach(db: DbDep, feed: ChangeFeed, settings: Settings,
                 min_position: str | None) -> None:
    """Read-your-writes across API instances: wait until the projection has applied it.

    The checkpoints are read again only when the feed wakes up (the projector notified a
    commit, or the feed's poll came round), and once per wake-up for every waiting
    request of this process, never on a timer per request.
    """
    if min_position is None:
        return
    p, o = (int(x) for x in min_position.split(":"))
    deadline = time.monotonic() + settings.read_wait_s

    async def read() -> dict[int, int]:
        return await queries.checkpoints(db, projection=settings.projection,
                                         topic=settings.topic)

    while True:
        tick, cps = await feed.applied(read)
        if cps.get(p, 0) > o:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unavailable(f"the projection has not reached {min_position} yet",
                              retry_after=1)
        await feed.next_tick(tick, remaining)


async def _wait_for_task(db: DbDep, feed: ChangeFeed, task_id: uuid.UUID,
                         wait_s: float) -> dict[str, Any] | None:
    """Read-your-writes: a task accepted a moment ago may not be projected yet.

    Waits for the feed to see a change of this task (its row commits with it), then
    reads once; no query on a timer.
    """
    row = await queries.get_task(db, task_id=task_id)
    if row is not None or wait_s <= 0:
        return row
    deadline = time.monotonic() + wait_s
    # Watching starts before the second read: a change committed after the read reaches
    # the watcher, one committed before it is in what the read sees.
    with feed.watch(Filter(task_ids=frozenset({task_id}))) as sub:
        row = await queries.get_task(db, task_id=task_id)
        while row is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), remaining)
            sub.wake.clear()
            sub.pending.clear()
            row = await queries.get_task(db, task_id=task_id)
    return row


@router.post("/tasks", status_code=202, response_model=TaskAccepted, tags=["tasks"],
             responses={k: v for k, v in _ERRORS.items() if k in (401, 413, 415, 422, 429, 503)})
async def submit_task(
    body: TaskIn, request: Request, tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="Same key + same body returns the same task; a different body is 422.")]
    = None,
) -> Response:
    """Accept a task: append ``task.created`` to the log and answer once Kafka acknowledged."""
    return await submit.accept_task(request, body, tenant, idempotency_key=idempotency_key)


@router.post("/tasks:batch", status_code=202, response_model=BatchAccepted, tags=["tasks"],
             responses={k: v for k, v in _ERRORS.items() if k in (401, 413, 415, 422, 429, 503)})
async def submit_batch(body: BatchIn, request: Request,
                       tenant: TenantDep) -> Response:
    """Up to 1,000 tasks in one round trip: all valid or none accepted, one Kafka flush."""
    return await submit.accept_batch(request, body.tasks, tenant)


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
    task_id: uuid.UUID, db: DbDep, feed: FeedDep, settings: SettingsDep, tenant: TenantDep,
    min_position: MinPosition = None,
    as_of: Annotated[str | None, Query(
        max_length=64, description="RFC 3339 time, or PARTITION:OFFSET: the state then",
        examples=["2026-11-22T10:00:00Z", "3:41"])] = None,
) -> dict[str, Any]:
    """The task's current state, from the projection; or, with ``as_of``, as it was then."""
    await _reach(db, feed, settings, min_position)
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
        if state is None or not _visible(state.tenant, tenant):
            raise NotFound(f"task {task_id} did not exist at {as_of}")
        return state.model_dump()
    row = await _wait_for_task(db, feed, task_id, settings.read_wait_s)
    if row is None or not _visible(row["tenant"], tenant):
        raise NotFound(f"no task {task_id}")
    return row


@router.get("/tasks", response_model=TaskPage, tags=["tasks"],
            responses={k: v for k, v in _ERRORS.items() if k in (400, 401, 422, 429)})
async def list_tasks(
    db: DbDep, feed: FeedDep, settings: SettingsDep, tenant: TenantDep,
    status: TaskStatus | None = None,
    type: Annotated[str | None, Query(max_length=100, pattern=TYPE_PATTERN)] = None,
    created_after: Annotated[QueryTime | None, Query(description="RFC 3339, inclusive")] = None,
    created_before: Annotated[QueryTime | None, Query(description="RFC 3339, exclusive")]
    = None,
    q: Annotated[str | None, Query(
        min_length=3, max_length=200,
        description="search in titles (case-insensitive substring, 3 to 200 characters: "
        "a trigram index serves it)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    min_position: MinPosition = None,
) -> TaskPage:
    """Tasks by creation time (newest first by default), with an opaque keyset cursor.

    Keyset pagination on (created_at, task_id) is stable while tasks are being added: a
    page never repeats or skips a task. ``limit`` is capped at ``TASKFLOW_LIST_LIMIT_MAX``.
    """
    await _reach(db, feed, settings, min_position)
    for name, value in (("created_after", created_after), ("created_before", created_before)):
        if value is not None and value.tzinfo is None:
            raise Invalid(f"{name} needs a time zone offset",
                          errors=[{"loc": ["query", name], "msg": "no offset", "type": "value"}])
    if q is not None and "\x00" in q:
        raise Invalid("q must not contain NUL",
                      errors=[{"loc": ["query", "q"], "msg": "NUL", "type": "value"}])
    try:
        rows, nxt = await queries.list_tasks(
            db, status=status.value if status else None, type_=type,
            limit=min(limit, settings.list_limit_max), cursor=cursor,
            descending=order == "desc", created_after=created_after,
            created_before=created_before, search=q,
            tenant=tenant.name if tenant.scoped else _ANY)
    except queries.BadCursor:
        raise BadRequest("cursor is not valid") from None
    return TaskPage(items=[TaskOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/tasks/{task_id}/events", response_model=EventPage, tags=["tasks"],
            responses={404: _ERRORS[404]})
async def task_events(task_id: uuid.UUID, db: DbDep, feed: FeedDep, settings: SettingsDep,
                      tenant: TenantDep) -> EventPage:
    """The task's full history in log order, each CloudEvent with its position."""
    items = await queries.task_history(db, task_id=task_id)
    if items and not _visible(items[0].get("tenant"), tenant):
        raise NotFound(f"no task {task_id}")
    if not items and await _wait_for_task(db, feed, task_id, settings.read_wait_s) is None:
        raise NotFound(f"no task {task_id}")
    if not items:
        items = await queries.task_history(db, task_id=task_id)
    return EventPage(items=items)


async def _emit(producer: LogDep, db: DbDep, feed: ChangeFeed, settings: SettingsDep,
                task_id: uuid.UUID, kind: str, tenant: Tenant) -> dict[str, Any]:
    row = await _wait_for_task(db, feed, task_id, settings.read_wait_s)
    if row is None or not _visible(row["tenant"], tenant):
        raise NotFound(f"no task {task_id}")
    status = TaskStatus(row["status"])
    if kind == "cancel":
        if status in TERMINAL:
            raise Conflict(f"task {task_id} is already {status.value}", task_status=status.value)
        ev = new_event(TaskCancelRequested(reason="api"), task_id=task_id,
                       source=constants.API_SOURCE, attempt=row["attempt"],
                       tenant=row.get("tenant"))
        [pos] = await producer.append([ev])
    else:
        if status is not TaskStatus.FAILED:
            raise Conflict(f"only FAILED tasks can be retried; task {task_id} is "
                           f"{status.value}", task_status=status.value)
        [pos] = await redrive(producer, [row], reason="api", source=constants.API_SOURCE)
    return {"task_id": str(task_id), "status": status.value,
            "position": {"partition": pos.partition, "offset": pos.offset}}


@router.post("/tasks/{task_id}/cancel", status_code=202, tags=["tasks"],
             responses={k: v for k, v in _ERRORS.items() if k in (404, 409, 503)})
async def cancel_task(task_id: uuid.UUID, producer: LogDep, db: DbDep, feed: FeedDep,
                      settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Request cancellation: a pending task never starts, a running one is stopped."""
    return await _emit(producer, db, feed, settings, task_id, "cancel", tenant)


@router.post("/tasks/{task_id}/retry", status_code=202, tags=["tasks"],
             responses={k: v for k, v in _ERRORS.items() if k in (404, 409, 503)})
async def retry_task(task_id: uuid.UUID, producer: LogDep, db: DbDep, feed: FeedDep,
                     settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Redrive a FAILED (dead-lettered) task: it runs again as a new attempt."""
    return await _emit(producer, db, feed, settings, task_id, "retry", tenant)


@router.get("/events", tags=["stream"], response_class=EventSourceResponse)
async def stream(
    feed: FeedDep,
    settings: SettingsDep,
    tenant: TenantDep,
    task_id: Annotated[list[uuid.UUID] | None, Query()] = None,
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    type: Annotated[list[EventType] | None, Query()] = None,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
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
            responses={404: _ERRORS[404]})
async def task_stream(task_id: uuid.UUID, db: DbDep, feed: FeedDep,
                      settings: SettingsDep, tenant: TenantDep) -> EventSourceResponse:
    """One task: a ``snapshot`` event with its state, then its changes; ends after terminal."""
    snap = await queries.task_snapshot(db, task_id=task_id)
    if snap is None and await _wait_for_task(db, feed, task_id, settings.read_wait_s) is not None:
        snap = await queries.task_snapshot(db, task_id=task_id)
    if snap is None or not _visible(snap[0]["tenant"], tenant):
        raise NotFound(f"no task {task_id}")
    row, position = snap

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


@router.get("/handlers", tags=["tasks"])
async def handlers(settings: SettingsDep) -> dict[str, list[str]]:
    """Task types this deployment accepts (``TASKFLOW_TASK_TYPES``)."""
    return {"types": list(settings.task_type_list)}


# The log's end offsets, for lag: asking Kafka costs more than the rest of /stats, so the
# answer is kept and refreshed in the background. A request waits for Kafka only when no
# answer is younger than LOG_ENDS_STALE_S.
LOG_ENDS_FRESH_S = 1.0
LOG_ENDS_STALE_S = 15.0


async def _refresh_log_ends(app: Any, settings: Settings) -> dict[int, int]:
    asked = time.monotonic()
    ends = await log_ends(app, settings)
    app.state.log_ends_cached = (asked, ends)
    return ends


async def _log_ends(request: Request, settings: Settings) -> dict[int, int]:
    """End offset per partition, at most ``LOG_ENDS_FRESH_S`` old while Kafka answers;
    one refresh at a time per process, however many requests ask."""
    state = request.app.state
    cached: tuple[float, dict[int, int]] | None = getattr(state, "log_ends_cached", None)
    age = time.monotonic() - cached[0] if cached is not None else None
    if cached is not None and age is not None and age < LOG_ENDS_FRESH_S:
        return cached[1]
    task: asyncio.Task[dict[int, int]] | None = getattr(state, "log_ends_task", None)
    if task is None or task.done():
        task = state.log_ends_task = asyncio.ensure_future(
            _refresh_log_ends(request.app, settings))
        # Retrieved here so that a failed refresh nobody awaited is not reported as lost.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    if cached is not None and age is not None and age < LOG_ENDS_STALE_S:
        return cached[1]
    return await asyncio.shield(task)


async def projector_lag(request: Request, settings: Settings, db: DbDep) -> dict[int, int]:
    """Events in the log not yet applied by the live projection, per partition."""
    ends = await _log_ends(request, settings)
    cps = await queries.checkpoints(db, projection=settings.projection, topic=settings.topic)
    lag = {p: max(0, end - cps.get(p, 0)) for p, end in ends.items()}
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
    """Readiness: Kafka and Postgres reachable, migrations at head.

    Both probes run side by side, each bounded by ``READY_PROBE_TIMEOUT_S``, so a stalled
    dependency gets a 503 naming it within seconds instead of a request that hangs.
    """
    limit = constants.READY_PROBE_TIMEOUT_S

    async def kafka() -> dict[str, str]:
        try:
            async with asyncio.timeout(limit):
                await kafka_ping(settings.kafka_bootstrap, timeout_s=limit / 2)
        except (LogUnavailable, TimeoutError) as exc:
            return {"kafka": f"unavailable: {describe(exc)}"}
        return {"kafka": "ok"}

    async def postgres() -> dict[str, str]:
        try:
            async with asyncio.timeout(limit):
                await queries.ping(db)
                rev, head = await current_revision(db), migration_head()
        except Exception as exc:
            return {"postgres": f"unavailable: {describe(exc)}"}
        return {"postgres": "ok",
                "migrations": "ok" if rev == head else f"at {rev}, head is {head}"}

    checks: dict[str, str] = {}
    for part in await asyncio.gather(kafka(), postgres()):
        checks.update(part)
    down = [f"{k} {v}" for k, v in checks.items() if v != "ok"]
    if down:
        raise Unavailable("not ready: " + "; ".join(down), checks=checks, retry_after=5)
    return {"status": "ready", "checks": checks}


@router.get("/metrics", tags=["ops"], response_class=Response)
async def prometheus(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    """Prometheus text format."""
    with contextlib.suppress(LogUnavailable):
        await projector_lag(request, settings, db)
    for (projection, reason), n in (await queries.parked_counts(db)).items():
        metrics.PARKED.labels(projection, reason).set(n)
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


