"""Schedule routes: create, read, list, change, pause, resume, trigger, delete, runs.

Every change is an event on the schedule topic (``events.schedules``); the scheduler
folds them into the ``schedules`` table, which the reads serve. Thin like the task
routes: validate, append, answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import Tenant, TenantDep
from api.deps import DbDep, LogDep, SettingsDep
from api.problems import BadRequest, Conflict, Invalid, NotFound, documented, for_log_down
from api.reads import visible
from api.schemas import EventPage, TaskIn
from api.submit import check_type, key_lock
from api.tasks import parse_as_of
from events import chain, constants, schedule_db
from events.codec import decode, encode
from events.errors import LogUnavailable
from events.hook_queries import applied
from events.log import EventProducer, ensure_topic, task_key
from events.models import (
    EventData,
    ScheduleCreated,
    ScheduleDeleted,
    SchedulePaused,
    ScheduleResumed,
    ScheduleTask,
    ScheduleUpdated,
    TaskCreated,
    new_event,
)
from events.queries import BadCursor
from events.schedules import (
    SCHEDULE_PROJECTION,
    BadSchedule,
    ScheduleState,
    apply_schedule,
    check,
    next_due,
    schedule_topic,
    trigger_task_id,
)
from events.settings import Settings

router = APIRouter()

MAX_EVERY_S = 366 * 86_400  # seconds: the longest interval
_ANY = object()
SCHEDULE_KEY_NS = uuid.UUID("3b0f6c1e-8d2a-4f57-9c1b-5e7a2d4c6f80")  # uuid5 namespace


class ScheduleTaskIn(TaskIn):
    """The task each fire submits: a task body without a start time of its own."""

    @model_validator(mode="after")
    def _no_start(self) -> ScheduleTaskIn:
        if self.run_at is not None or self.delay_s is not None:
            raise ValueError("a schedule's task takes no run_at or delay_s")
        return self


class SchedulePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    every_s: float | None = Field(default=None, ge=1, le=MAX_EVERY_S)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    task: ScheduleTaskIn | None = None
    overlap: Literal["allow", "skip"] | None = None
    catchup: Literal["none", "latest", "all"] | None = None


class ScheduleIn(SchedulePatch):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "nightly report", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "task": {"title": "report", "type": "echo", "payload": {"message": "go"}},
        "overlap": "skip", "catchup": "latest"}]})

    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    task: ScheduleTaskIn
    overlap: Literal["allow", "skip"] = "allow"
    catchup: Literal["none", "latest", "all"] = "none"


def _spec(body: ScheduleIn | SchedulePatch, settings: Settings,
          base: dict[str, Any] | None = None) -> ScheduleCreated:
    """The whole definition: ``body`` over ``base`` (a PATCH), checked like a create."""
    fields = dict(base or {})
    given = body.model_dump(exclude_unset=True)
    if "cron" in given or "every_s" in given:
        fields.pop("cron", None)
        fields.pop("every_s", None)
    fields.update({k: v for k, v in given.items() if k != "task"})
    if body.task is not None:
        check_type(body.task, settings, ["body", "task"])
        fields["task"] = ScheduleTask(**body.task.model_dump(
            include={"title", "type", "payload", "priority", "max_attempts", "timeout_s"}))
    try:
        spec = ScheduleCreated(**fields)
        check(spec)
    except BadSchedule as exc:
        raise Invalid(exc.message, errors=[{"loc": ["body", exc.field], "msg": exc.message,
                                            "type": "value"}]) from None
    return spec


async def _append(request: Request, data: EventData, sid: uuid.UUID,
                  tenant: str | None, *, actor: str) -> datetime:
    """Append a schedule event and wait (bounded) until the scheduler has projected it, so
    a read right after the answer sees the write; answers with the event's time (503 if
    Kafka did not ack)."""
    state = request.app.state
    settings: Settings = state.settings
    producer: EventProducer = state.producer
    topic = schedule_topic(settings.topic)
    if not getattr(state, "schedule_topic_ready", False):
        await ensure_topic(settings.kafka_bootstrap, topic, settings.partitions,
                           replication_factor=settings.replication_factor,
                           min_insync_replicas=settings.min_insync_replicas)
        state.schedule_topic_ready = True
    ev = new_event(data, task_id=sid, source=constants.API_SOURCE, tenant=tenant,
                   actor=actor)
    try:
        pos = await producer.append_raw(topic, task_key(sid), encode(ev))
    except LogUnavailable:
        raise
    except Exception as exc:  # a timeout or a Kafka error: the write may still land
        raise LogUnavailable(repr(exc)) from None
    deadline = time.monotonic() + settings.read_wait_s
    while time.monotonic() < deadline:
        if await applied(state.engine, projection=SCHEDULE_PROJECTION, topic=topic,
                         partition=pos.partition, offset=pos.offset):
            break
        await asyncio.sleep(0.02)
    return ev.time


async def _row(db: DbDep, sid: uuid.UUID, tenant: Tenant, wait_s: float, *,
               deleted: bool = False) -> dict[str, Any]:
    """The schedule, waiting (bounded) for one created a moment ago to be projected.
    Another tenant's schedule is waited for as long as a missing one: answering it at
    once would tell a caller which ids exist. A deleted one is missing, unless
    ``deleted``."""
    deadline = time.monotonic() + wait_s
    while True:
        row = await schedule_db.get(db, schedule_id=sid)
        seen = row is not None and visible(row["tenant"], tenant)
        if seen or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    if row is None or not seen or (row.pop("deleted") and not deleted):
        raise NotFound(f"no schedule {sid}")
    return row


def _base(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("name", "cron", "every_s", "timezone", "task", "overlap",
                                "catchup")}


def _out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "anchor"}


async def _write(request: Request, data: EventData, sid: uuid.UUID, tenant: str | None,
                 body: dict[str, Any], *, actor: str, status: int = 200) -> Response:
    try:
        await _append(request, data, sid, tenant, actor=actor)
    except LogUnavailable as exc:
        return for_log_down(request, exc, schedule_id=str(sid))
    return Response(_json(body), status_code=status, media_type="application/json")


def _json(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, default=str)


@router.post("/schedules", status_code=201, tags=["schedules"],
             responses=documented(401, 422, 503))
async def create_schedule(
    body: ScheduleIn, request: Request, settings: SettingsDep, db: DbDep, tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="The same key with the same body answers the same schedule (200); "
        "with another body, 422")] = None,
) -> Response:
    """Create a schedule: ``cron`` (in ``timezone``) or ``every_s``; answers
    ``{schedule_id, next_run_at}``."""
    spec = _spec(body, settings)
    if idempotency_key is None:
        return await _create(request, spec, uuid.uuid4(), tenant)
    sid = keyed_schedule_id(tenant.name, idempotency_key)
    async with key_lock(request.app.state, sid):
        replay = await _keyed_replay(db, sid, spec)
        if replay is not None:
            return Response(_json(replay), status_code=200, media_type="application/json",
                            headers={"Location": f"/schedules/{sid}",
                                     "Idempotent-Replayed": "true"})
        response = await _create(request, spec, sid, tenant)
        if response.status_code == 201:
            _recent_keyed[sid] = (_digest(spec), orjson.loads(bytes(response.body)))
            while len(_recent_keyed) > RECENT_KEYED_MAX:
                _recent_keyed.popitem(last=False)
        return response


async def _create(request: Request, spec: ScheduleCreated, sid: uuid.UUID,
                  tenant: Tenant) -> Response:
    try:
        at = await _append(request, spec, sid, tenant.name, actor=tenant.actor)
    except LogUnavailable as exc:
        return for_log_down(request, exc, schedule_id=str(sid))
    out = {"schedule_id": str(sid), "next_run_at": next_due(spec, at, at)}
    return Response(_json(out), status_code=201, media_type="application/json",
                    headers={"Location": f"/schedules/{sid}"})


# Keyed schedules this process created recently, for a retry that comes before the
# scheduler has projected the first one: (digest of the definition, the 201's body).
_recent_keyed: OrderedDict[uuid.UUID, tuple[bytes, dict[str, Any]]] = OrderedDict()
RECENT_KEYED_MAX = 10_000


def keyed_schedule_id(tenant: str | None, key: str) -> uuid.UUID:
    """The schedule an ``Idempotency-Key`` names: the same (tenant, key), the same id."""
    return uuid.uuid5(SCHEDULE_KEY_NS, f"{tenant or ''}\n{key}")


def _digest(spec: ScheduleCreated) -> bytes:
    return hashlib.sha256(orjson.dumps(spec.model_dump(mode="json"),
                                       option=orjson.OPT_SORT_KEYS)).digest()


async def _keyed_replay(db: DbDep, sid: uuid.UUID, spec: ScheduleCreated) -> dict[str, Any] | None:
    """The answer to repeat for a key already used with this definition; ``Invalid`` if
    it was used with another; ``None`` for a new key."""
    recent = _recent_keyed.get(sid)
    if recent is not None:
        if recent[0] != _digest(spec):
            raise _key_reused()
        return recent[1]
    row = await schedule_db.get(db, schedule_id=sid)
    if row is None:
        return None
    # The definition it has now: after a PATCH, the key names the patched schedule.
    if _digest(ScheduleCreated(**_base(row))) != _digest(spec):
        raise _key_reused()
    return {"schedule_id": str(sid), "next_run_at": None if row["deleted"] else
            row["next_run_at"]}


def _key_reused() -> Invalid:
    return Invalid("Idempotency-Key was already used with a different body",
                   errors=[{"loc": ["header", "Idempotency-Key"],
                            "msg": "reused with a different body", "type": "idempotency"}])


@router.get("/schedules", tags=["schedules"], responses=documented(400, 401, 422))
async def list_schedules(db: DbDep, tenant: TenantDep,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         cursor: Annotated[str | None, Query(max_length=200)] = None,
                         ) -> dict[str, Any]:
    """The caller's schedules, oldest first, with next and last run and its status;
    ``next_cursor`` (opaque, like ``GET /tasks``) fetches the next page."""
    try:
        rows, nxt = await schedule_db.listing(
            db, tenant=tenant.name if tenant.scoped else _ANY, any_tenant=_ANY, limit=limit,
            cursor=cursor)
    except BadCursor:
        raise BadRequest("cursor is not valid") from None
    return {"items": [_out(r) for r in rows], "next_cursor": nxt}


@router.get("/schedules/{schedule_id}", tags=["schedules"], responses=documented(404))
async def get_schedule(
    schedule_id: uuid.UUID, db: DbDep, settings: SettingsDep, tenant: TenantDep,
    as_of: Annotated[str | None, Query(
        max_length=64, description="RFC 3339 time, or PARTITION:OFFSET of the schedule "
        "topic: the schedule then", examples=["2026-11-22T10:00:00Z", "3:41"])] = None,
) -> dict[str, Any]:
    """One schedule: its definition, state, next run, and last run with its status; with
    ``as_of``, as it was then (folded from its journal; ``last_status`` is null)."""
    if as_of is None:
        return _out(await _row(db, schedule_id, tenant, settings.read_wait_s))
    point = parse_as_of(as_of)
    state: ScheduleState | None = None
    where = (0, 0)
    for p, o, raw in await schedule_db.history(db, schedule_id=schedule_id):
        ev = decode(orjson.dumps(raw))
        if (p, o) > point if isinstance(point, tuple) else ev.time > point:
            break
        state, where = apply_schedule(state, ev), (p, o)
    if state is None or state.deleted or not visible(state.tenant, tenant):
        raise NotFound(f"schedule {schedule_id} did not exist at {as_of}")
    row = schedule_db.row(state, *where)
    for k in ("partition", "last_offset", "deleted", "anchor"):
        row.pop(k)
    return {**row, "last_status": None}


@router.patch("/schedules/{schedule_id}", tags=["schedules"],
              responses=documented(404, 422, 503))
async def update_schedule(schedule_id: uuid.UUID, body: SchedulePatch, request: Request,
                          db: DbDep, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Change any of the fields; the schedule restarts from now with the new definition."""
    row = await _row(db, schedule_id, tenant, settings.read_wait_s)
    spec = _spec(body, settings, _base(row))
    now = datetime.now(UTC)
    return await _write(request, ScheduleUpdated(**spec.model_dump()), schedule_id,
                        row["tenant"], {"schedule_id": str(schedule_id),
                                        "next_run_at": next_due(spec, now, now)},
                        actor=tenant.actor)


@router.delete("/schedules/{schedule_id}", status_code=204, tags=["schedules"],
               responses=documented(404, 503))
async def delete_schedule(schedule_id: uuid.UUID, request: Request, db: DbDep,
                          settings: SettingsDep, tenant: TenantDep) -> Response:
    """Delete: no further fires. Tasks already fired are left as they are."""
    row = await _row(db, schedule_id, tenant, settings.read_wait_s)
    response = await _write(request, ScheduleDeleted(), schedule_id, row["tenant"], {},
                            actor=tenant.actor)
    return response if response.status_code != 200 else Response(status_code=204)


async def _pause_or_resume(request: Request, db: DbDep, settings: Settings, tenant: Tenant,
                           schedule_id: uuid.UUID, pause: bool) -> Response:
    row = await _row(db, schedule_id, tenant, settings.read_wait_s)
    if row["paused"] == pause:
        raise Conflict(f"schedule {schedule_id} is already "
                       f"{'paused' if pause else 'active'}")
    data: EventData = SchedulePaused() if pause else ScheduleResumed()
    return await _write(request, data, schedule_id, row["tenant"],
                        {"schedule_id": str(schedule_id), "paused": pause},
                        actor=tenant.actor)


@router.post("/schedules/{schedule_id}:pause", tags=["schedules"],
             responses=documented(404, 409, 503))
async def pause_schedule(schedule_id: uuid.UUID, request: Request, db: DbDep,
                         settings: SettingsDep, tenant: TenantDep) -> Response:
    """Pause: due times while paused are dropped (not caught up on resume)."""
    return await _pause_or_resume(request, db, settings, tenant, schedule_id, True)


@router.post("/schedules/{schedule_id}:resume", tags=["schedules"],
             responses=documented(404, 409, 503))
async def resume_schedule(schedule_id: uuid.UUID, request: Request, db: DbDep,
                          settings: SettingsDep, tenant: TenantDep) -> Response:
    """Resume a paused schedule from now."""
    return await _pause_or_resume(request, db, settings, tenant, schedule_id, False)


@router.post("/schedules/{schedule_id}:trigger", status_code=202, tags=["schedules"],
             responses=documented(404, 503))
async def trigger_schedule(schedule_id: uuid.UUID, request: Request, producer: LogDep,
                           db: DbDep, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Run the schedule's task now, once, outside its due times (paused or not)."""
    row = await _row(db, schedule_id, tenant, settings.read_wait_s)
    t = ScheduleTask(**row["task"])
    now = datetime.now(UTC)
    tid = trigger_task_id(schedule_id, now)
    ev = new_event(TaskCreated(title=t.title, type=t.type, payload=t.payload,
                               priority=t.priority, max_attempts=t.max_attempts,
                               timeout_s=t.timeout_s, schedule_id=schedule_id, due_at=now),
                   task_id=tid, source=constants.API_SOURCE, tenant=row["tenant"],
                   actor=tenant.actor)
    ev = chain.seal(ev)
    try:
        [p] = await producer.append([ev])
    except LogUnavailable as exc:
        return for_log_down(request, exc, task_id=str(tid))
    return Response(_json({"schedule_id": str(schedule_id), "task_id": str(tid),
                           "due_at": now, "status": "PENDING",
                           "position": {"partition": p.partition, "offset": p.offset}}),
                    status_code=202, media_type="application/json",
                    headers={"Location": f"/tasks/{tid}"})


@router.get("/schedules/{schedule_id}/events", response_model=EventPage, tags=["schedules"],
            responses=documented(404))
async def schedule_events(schedule_id: uuid.UUID, db: DbDep, settings: SettingsDep,
                          tenant: TenantDep) -> dict[str, Any]:
    """The schedule's changes in log order (created, updated, paused, resumed, deleted;
    not its fires), each CloudEvent with its position and ``actor``: the API key id
    that made it. A deleted schedule keeps its history."""
    await _row(db, schedule_id, tenant, settings.read_wait_s, deleted=True)
    rows = await schedule_db.history(db, schedule_id=schedule_id, changes=True)
    return {"items": [{**ev, "position": {"partition": p, "offset": o}} for p, o, ev in rows]}


@router.get("/schedules/{schedule_id}/runs", tags=["schedules"], responses=documented(404))
async def schedule_runs(schedule_id: uuid.UUID, db: DbDep, settings: SettingsDep,
                        tenant: TenantDep,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100
                        ) -> dict[str, list[dict[str, Any]]]:
    """The tasks the schedule created (fires and triggers), latest due time first."""
    await _row(db, schedule_id, tenant, settings.read_wait_s)
    return {"items": await schedule_db.runs(db, schedule_id=schedule_id, limit=limit)}
