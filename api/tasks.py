"""Task routes: submit, read, list, history, cancel, retry, and the task types.

Thin: validate, call one function, map the result. Submitting is ``api/submit.py``;
the reads go through ``events/queries.py``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from api import erasure, submit
from api.auth import Tenant, TenantDep
from api.deps import DbDep, FeedDep, LogDep, SettingsDep
from api.feed import ChangeFeed
from api.pools import HandlersOut, with_waiting_reasons
from api.priorities import query_priority
from api.problems import BadRequest, Conflict, Invalid, NotFound, documented
from api.reads import reach, visible, wait_for_task
from api.schemas import (
    TYPE_PATTERN,
    BatchAccepted,
    BatchIn,
    BatchOutcome,
    EventPage,
    QueryTime,
    TaskAccepted,
    TaskIn,
    TaskOut,
    TaskPage,
)
from events import chain, chain_db, constants, pool_registry, queries
from events.codec import decode
from events.fold import fold
from events.models import TERMINAL, TaskCancelRequested, TaskStatus, new_event
from events.redrive import redrive

router = APIRouter()


_ANY = object()  # list_tasks: no tenant filter
MinPosition = Annotated[str | None, Query(
    # At most 18 offset digits: every such offset fits Postgres int8, and a log holds fewer.
    pattern=r"^\d{1,9}:\d{1,18}$", description="PARTITION:OFFSET from a write's response: wait "
    "(bounded) until the projection has applied it", examples=["3:41"])]


@router.post("/tasks", status_code=202, response_model=TaskAccepted, tags=["tasks"],
             responses=documented(401, 413, 415, 422, 429, 503))
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
             responses={**documented(401, 413, 415, 422, 429, 503),
                        207: {"model": BatchOutcome,
                              "description": "With ?partial=true: each task's own outcome"}})
async def submit_batch(
    body: BatchIn, request: Request, tenant: TenantDep,
    partial: Annotated[bool, Query(
        description="Accept the valid tasks and refuse the others, each on its own (207 "
        "with an outcome per task); a task may carry an idempotency_key. Without it the "
        "batch is all or nothing.")] = False,
) -> Response:
    """Up to 1,000 tasks in one round trip and one Kafka flush: all valid or none accepted,
    or with ``?partial=true`` each task accepted or refused on its own."""
    if partial:
        return await submit.accept_batch_partial(request, body.tasks, tenant)
    return await submit.accept_batch(request, body.tasks, tenant)


def parse_as_of(value: str) -> datetime | tuple[int, int]:
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
            responses=documented(404, 422))
async def get_task(
    task_id: uuid.UUID, request: Request, db: DbDep, feed: FeedDep, settings: SettingsDep,
    tenant: TenantDep,
    min_position: MinPosition = None,
    as_of: Annotated[str | None, Query(
        max_length=64, description="RFC 3339 time, or PARTITION:OFFSET: the state then",
        examples=["2026-11-22T10:00:00Z", "3:41"])] = None,
) -> dict[str, Any]:
    """The task's current state, from the projection; or, with ``as_of``, as it was then."""
    await reach(db, feed, settings, min_position)
    if as_of is not None:
        point = parse_as_of(as_of)
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
        if state is None or not visible(state.tenant, tenant):
            raise NotFound(f"task {task_id} did not exist at {as_of}")
        return (await erasure.reveal_rows(request, [state.model_dump()]))[0]
    row = await wait_for_task(db, feed, task_id, settings.read_wait_s, tenant=tenant)
    if row is None:
        raise NotFound(f"no task {task_id}")
    return (await with_waiting_reasons(db, await erasure.reveal_rows(request, [row])))[0]


@router.get("/tasks", response_model=TaskPage, tags=["tasks"],
            responses=documented(400, 401, 422, 429))
async def list_tasks(
    request: Request, db: DbDep, feed: FeedDep, settings: SettingsDep, tenant: TenantDep,
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
    priority: Annotated[str | None, Query(
        max_length=10, description="exactly this priority: -100..100 or a level name")] = None,
    min_priority: Annotated[str | None, Query(
        max_length=10, description="this priority or higher: -100..100 or a level name")]
    = None,
    sort: Annotated[str, Query(pattern="^(created|priority)$", description=(
        "created: by creation time; priority: by priority, then creation time "
        "(order=desc: highest first)"))] = "created",
) -> TaskPage:
    """Tasks by creation time (newest first by default), with an opaque keyset cursor.

    Keyset pagination on (created_at, task_id) is stable while tasks are being added: a
    page never repeats or skips a task. ``limit`` is capped at ``TASKFLOW_LIST_LIMIT_MAX``.
    """
    await reach(db, feed, settings, min_position)
    for name, value in (("created_after", created_after), ("created_before", created_before)):
        if value is not None and value.tzinfo is None:
            raise Invalid(f"{name} needs a time zone offset",
                          errors=[{"loc": ["query", name], "msg": "no offset", "type": "value"}])
    if q is not None and "\x00" in q:
        raise Invalid("q must not contain NUL",
                      errors=[{"loc": ["query", "q"], "msg": "NUL", "type": "value"}])
    prio, min_prio = query_priority("priority", priority), query_priority(
        "min_priority", min_priority)
    try:
        rows, nxt = await queries.list_tasks(
            db, status=status.value if status else None, type_=type,
            limit=min(limit, settings.list_limit_max), cursor=cursor,
            descending=order == "desc", created_after=created_after,
            created_before=created_before, search=q,
            tenant=tenant.name if tenant.scoped else _ANY,
            priority=prio, min_priority=min_prio, by_priority=sort == "priority")
    except queries.BadCursor:
        raise BadRequest("cursor is not valid") from None
    rows = await with_waiting_reasons(db, await erasure.reveal_rows(request, rows))
    return TaskPage(items=[TaskOut.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/tasks/{task_id}/events", response_model=EventPage, tags=["tasks"],
            responses=documented(404))
async def task_events(task_id: uuid.UUID, request: Request, db: DbDep, feed: FeedDep,
                      settings: SettingsDep, tenant: TenantDep) -> EventPage:
    """The task's full history in log order, each CloudEvent with its position."""
    items = await queries.task_history(db, task_id=task_id)
    # Another tenant's task waits as long as a missing one (``wait_for_task``).
    if ((not items or not visible(items[0].get("tenant"), tenant))
            and await wait_for_task(db, feed, task_id, settings.read_wait_s,
                                    tenant=tenant) is None):
        raise NotFound(f"no task {task_id}")
    if not items:
        items = await queries.task_history(db, task_id=task_id)
    return EventPage(items=await erasure.reveal_events(request, items))


async def _emit(producer: LogDep, db: DbDep, feed: ChangeFeed, settings: SettingsDep,
                task_id: uuid.UUID, kind: str, tenant: Tenant) -> dict[str, Any]:
    row = await wait_for_task(db, feed, task_id, settings.read_wait_s, tenant=tenant)
    if row is None:
        raise NotFound(f"no task {task_id}")
    status = TaskStatus(row["status"])
    # Later events go where the task lives, even if the topic has grown since.
    partition = (await queries.task_partitions(db, task_ids=[task_id])).get(task_id)
    if kind == "cancel":
        if status in TERMINAL:
            raise Conflict(f"task {task_id} is already {status.value}", task_status=status.value)
        ev = new_event(TaskCancelRequested(reason="api"), task_id=task_id,
                       source=constants.API_SOURCE, attempt=row["attempt"],
                       tenant=row.get("tenant"), actor=tenant.actor)
        if chain.enabled():
            ev = chain.seal(ev, (await chain_db.heads(db, [task_id])).get(task_id, ""))
        [pos] = await producer.append([ev], partitions=[partition])
    else:
        if status is not TaskStatus.FAILED:
            raise Conflict(f"only FAILED tasks can be retried; task {task_id} is "
                           f"{status.value}", task_status=status.value)
        [pos] = await redrive(producer, [{**row, "partition": partition}], reason="api",
                              source=constants.API_SOURCE, actor=tenant.actor, engine=db)
    return {"task_id": str(task_id), "status": status.value,
            "position": {"partition": pos.partition, "offset": pos.offset}}


@router.post("/tasks/{task_id}/cancel", status_code=202, tags=["tasks"],
             responses=documented(404, 409, 503))
async def cancel_task(task_id: uuid.UUID, producer: LogDep, db: DbDep, feed: FeedDep,
                      settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Request cancellation: a pending task never starts, a running one is stopped."""
    return await _emit(producer, db, feed, settings, task_id, "cancel", tenant)


@router.post("/tasks/{task_id}/retry", status_code=202, tags=["tasks"],
             responses=documented(404, 409, 503))
async def retry_task(task_id: uuid.UUID, producer: LogDep, db: DbDep, feed: FeedDep,
                     settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Redrive a FAILED (dead-lettered) task: it runs again as a new attempt."""
    return await _emit(producer, db, feed, settings, task_id, "retry", tenant)

@router.get("/handlers", response_model=HandlersOut, tags=["tasks"],
            responses=documented(401, 403))
async def handlers(settings: SettingsDep, db: DbDep, tenant: TenantDep) -> dict[str, Any]:
    """Task types this deployment accepts (``TASKFLOW_TASK_TYPES``), and the worker pools
    running now: each with the types it serves, its live workers, and when one last wrote
    (``unserved``: accepted types no running pool serves; their tasks wait as PENDING)."""
    running = await pool_registry.live_pools(db)
    served = {t for p in running for t in p["types"]}
    return {"types": list(settings.task_type_list), "pools": running,
            "unserved": [t for t in settings.task_type_list if t not in served]}
