"""The ``schedules`` read model: the scheduler's writes, the API's reads, and the rows
``projections verify|rebuild`` compare and replace."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import and_, delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from events import owned_db
from events.models import TERMINAL, CloudEvent, EventType
from events.queries import decode_cursor, encode_cursor
from events.schedules import SCHEDULE_PROJECTION, ScheduleState
from events.tables import projector_offsets, schedule_events, schedules, tasks

_SPEC = ("name", "cron", "every_s", "timezone", "overlap", "catchup")


def row(st: ScheduleState, partition: int, offset: int) -> dict[str, Any]:
    """The ``schedules`` row of a state."""
    spec = st.spec
    return {
        "schedule_id": st.schedule_id, "tenant": st.tenant,
        **{k: getattr(spec, k) for k in _SPEC},
        "task": spec.task.model_dump(mode="json"),
        "paused": st.paused, "deleted": st.deleted, "anchor": st.anchor,
        "next_run_at": st.next_run_at(), "last_due_at": st.last_due_at,
        "last_task_id": st.last_task_id, "fires": st.fires, "skips": st.skips,
        "created_at": st.created_at, "updated_at": st.updated_at,
        "partition": partition, "last_offset": offset,
    }


_UPSERT = owned_db.upsert(schedules, "schedule_id")


def journal_row(partition: int, offset: int, ev: CloudEvent, raw: bytes) -> dict[str, Any]:
    """The ``schedule_events`` row of a record the fold read."""
    return {"partition": partition, "offset": offset, "schedule_id": ev.subject,
            "type": ev.type.value, "time": ev.time, "event": orjson.loads(raw)}


async def write(conn: AsyncConnection, *, topic: str, partition: int, offset: int,
                rows: list[dict[str, Any]],
                journal: list[dict[str, Any]] | None = None) -> None:
    """Upsert ``rows``, add the ``journal`` rows, and move the partition's checkpoint to
    ``offset``, in the caller's transaction. The checkpoint never moves back (a second
    owner reading from the start writes rows it already wrote, and the same rows: they
    are a fold)."""
    if journal:
        await conn.execute(insert(schedule_events).on_conflict_do_nothing(), journal)
    if rows:
        # One statement for every row set (executemany): compiled once, and cached.
        await conn.execute(_UPSERT, rows)
    await owned_db.move_checkpoint(conn, projection=SCHEDULE_PROJECTION, topic=topic,
                                   partition=partition, offset=offset)


async def replace_all(conn: AsyncConnection, *, topic: str, rows: list[dict[str, Any]],
                      checkpoints: dict[int, int], journal: list[dict[str, Any]]) -> None:
    """``projections rebuild``: the whole table, its journal and its checkpoints, in one
    transaction."""
    await conn.execute(delete(schedule_events))
    for i in range(0, len(journal), 1000):
        await conn.execute(insert(schedule_events).values(journal[i:i + 1000]))
    await owned_db.replace_all(conn, table=schedules, projection=SCHEDULE_PROJECTION,
                               topic=topic, rows=rows, checkpoints=checkpoints, chunk=1000)


async def all_rows(engine: AsyncEngine) -> dict[uuid.UUID, dict[str, Any]]:
    async with engine.connect() as conn:
        return {r["schedule_id"]: dict(r) for r in
                (await conn.execute(select(schedules))).mappings()}


_LAST = (select(tasks.c.status).where(tasks.c.task_id == schedules.c.last_task_id)
         .scalar_subquery().label("last_status"))
_COLS = [c for c in schedules.c if c.name not in ("partition", "last_offset", "deleted")]


async def get(engine: AsyncEngine, *, schedule_id: uuid.UUID) -> dict[str, Any] | None:
    """A schedule that is not deleted, with its last run's status."""
    async with engine.connect() as conn:
        r = (await conn.execute(select(*_COLS, _LAST, schedules.c.deleted).where(
            schedules.c.schedule_id == schedule_id))).mappings().first()
    return dict(r) if r is not None else None


async def listing(engine: AsyncEngine, *, tenant: object, any_tenant: object,
                  limit: int, cursor: str | None = None
                  ) -> tuple[list[dict[str, Any]], str | None]:
    """Schedules oldest first, keyset-paginated on (created_at, schedule_id) with the
    cursor of ``GET /tasks``; raises ``queries.BadCursor``."""
    conds: list[ColumnElement[bool]] = [schedules.c.deleted.is_(False)]
    if tenant is not any_tenant:
        conds.append(schedules.c.tenant.is_(None) if tenant is None
                     else schedules.c.tenant == tenant)
    if cursor:
        at, sid = decode_cursor(cursor)
        conds.append(tuple_(schedules.c.created_at, schedules.c.schedule_id)
                     > tuple_(at, sid))
    q = (select(*_COLS, _LAST).where(and_(*conds))
         .order_by(schedules.c.created_at, schedules.c.schedule_id).limit(limit + 1))
    async with engine.connect() as conn:
        rows = [dict(r) for r in (await conn.execute(q)).mappings()]
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["schedule_id"])
    return rows, nxt


async def runs(engine: AsyncEngine, *, schedule_id: uuid.UUID,
               limit: int) -> list[dict[str, Any]]:
    """The tasks a schedule created, latest due time first."""
    q = (select(tasks.c.task_id, tasks.c.due_at, tasks.c.status, tasks.c.created_at,
                tasks.c.finished_at)
         .where(tasks.c.schedule_id == schedule_id)
         .order_by(tasks.c.due_at.desc(), tasks.c.task_id).limit(limit))
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(q)).mappings()]


async def running(engine: AsyncEngine, task_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``task_ids`` not known to be finished (unknown ones count as running: a
    task just fired may not be projected yet)."""
    ids = set(task_ids)
    if not ids:
        return set()
    q = select(tasks.c.task_id).where(tasks.c.task_id.in_(ids),
                                      tasks.c.status.in_([s.value for s in TERMINAL]))
    async with engine.connect() as conn:
        done = {r[0] for r in await conn.execute(q)}
    return ids - done


async def history(engine: AsyncEngine, *, schedule_id: uuid.UUID, changes: bool = False
                  ) -> list[tuple[int, int, dict[str, Any]]]:
    """The schedule's journal in log order: (partition, offset, CloudEvent JSON); with
    ``changes``, only the API's changes to it (no ``schedule.fired``)."""
    q = (select(schedule_events.c.partition, schedule_events.c.offset,
                schedule_events.c.event)
         .where(schedule_events.c.schedule_id == schedule_id)
         .order_by(schedule_events.c.partition, schedule_events.c.offset))
    if changes:
        q = q.where(schedule_events.c.type != EventType.SCHEDULE_FIRED.value)
    async with engine.connect() as conn:
        return [(r[0], r[1], r[2]) for r in await conn.execute(q)]


async def journal(conn: AsyncConnection) -> dict[tuple[int, int], dict[str, Any]]:
    """Every journal row by position (``projections verify``)."""
    return {(r["partition"], r["offset"]): dict(r)
            for r in (await conn.execute(select(schedule_events))).mappings()}


async def checkpoint(engine: AsyncEngine, *, topic: str, partition: int) -> int:
    """The partition's checkpoint (-1 if none): records up to it are journaled."""
    q = select(projector_offsets.c.offset).where(
        projector_offsets.c.projection == SCHEDULE_PROJECTION,
        projector_offsets.c.topic == topic, projector_offsets.c.partition == partition)
    async with engine.connect() as conn:
        got = (await conn.execute(q)).scalar()
    return int(got) if got is not None else -1
