"""Reads of the read model (SQLAlchemy Core), for the API and the CLI. Plain functions,
keyword-only arguments."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import any_, bindparam, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import constants
from events.db import make_engine
from events.models import TERMINAL, TaskStatus
from events.tables import (
    api_keys,
    dead_letters,
    projector_offsets,
    task_changes,
    task_counts,
    task_events,
    tasks,
)

_TASK_COLS = [c for c in tasks.c if c.name not in ("partition", "last_offset")]
QUERY_CANCELED = "57014"  # SQLSTATE of a statement stopped by statement_timeout
# SET LOCAL of three settings in one round trip (set_config's third argument: local).
_BITMAP_ONLY = text("SELECT set_config('enable_indexscan', 'off', true), "
                    "set_config('enable_seqscan', 'off', true), "
                    "set_config('statement_timeout', :ms, true)")


@contextlib.asynccontextmanager
async def short_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of one connection for a short command (the CLI's), disposed on exit."""
    engine = make_engine(url, pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()


class BadCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(task_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, tid = orjson.loads(raw)
        at = datetime.fromisoformat(ts)
        at.astimezone(UTC)  # Postgres gets it in UTC: a far date must not overflow there
        return at, uuid.UUID(tid)
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
        raise BadCursor(str(exc)) from None


async def get_task(engine: AsyncEngine, *, task_id: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(*_TASK_COLS).where(tasks.c.task_id == task_id))).first()
    return dict(row._mapping) if row else None


async def get_tasks(engine: AsyncEngine, *,
                    task_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """The rows of those of ``task_ids`` that exist, by id, in one query."""
    # One array parameter, not IN with a placeholder per id: the statement's text is the
    # same for every batch size, so the driver prepares it once.
    ids = bindparam("ids", task_ids, type_=ARRAY(PG_UUID(as_uuid=True)))
    async with engine.connect() as conn:
        rows = (await conn.execute(select(*_TASK_COLS).where(
            tasks.c.task_id == any_(ids)))).all()
    return {r.task_id: dict(r._mapping) for r in rows}
async def task_partitions(engine: AsyncEngine, *,
                          task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The partition of each task that has one: where its ``task.created`` landed, and where
    its later events go (``EventProducer.append``), however the topic has grown since."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(tasks.c.task_id, tasks.c.partition)
                                  .where(tasks.c.task_id.in_(list(task_ids))))
    return {r.task_id: r.partition for r in rows}


async def list_tasks(
    engine: AsyncEngine,
    *,
    status: str | None,
    type_: str | None,
    limit: int,
    cursor: str | None,
    descending: bool = True,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    search: str | None = None,
    tenant: object = None,
    priority: int | None = None,
    min_priority: int | None = None,
    by_priority: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """Keyset pagination on (created_at, task_id): stable while tasks are being added.
    With ``by_priority``, on (priority, created_at, task_id), and the cursor holds all three.

    ``tenant`` is a tenant name, or any other object (not a str/None) for no filter.
    """
    conds: list[Any] = []
    if priority is not None:
        conds.append(tasks.c.priority == priority)
    if min_priority is not None:
        conds.append(tasks.c.priority >= min_priority)
    if tenant is None or isinstance(tenant, str):
        conds.append(tasks.c.tenant.is_(None) if tenant is None else tasks.c.tenant == tenant)
    if created_after is not None:
        conds.append(tasks.c.created_at >= created_after)
    if created_before is not None:
        conds.append(tasks.c.created_at < created_before)
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(tasks.c.title.ilike(f"%{escaped}%", escape="\\"))
    if status:
        conds.append(tasks.c.status == status)
    if type_:
        conds.append(tasks.c.type == type_)
    if cursor and by_priority:
        prio, ts, tid = decode_priority_cursor(cursor)
        key = tuple_(tasks.c.priority, tasks.c.created_at, tasks.c.task_id)
        conds.append(key < tuple_(prio, ts, tid) if descending else key > tuple_(prio, ts, tid))
    elif cursor:
        ts, tid = decode_cursor(cursor)
        # A row comparison, not (a < x OR a = x AND b < y): Postgres uses it as the index
        # condition, so page N starts where page N-1 ended instead of scanning up to it.
        key = tuple_(tasks.c.created_at, tasks.c.task_id)
        conds.append(key < tuple_(ts, tid) if descending else key > tuple_(ts, tid))
    cols = ((tasks.c.priority,) if by_priority else ()) + (tasks.c.created_at, tasks.c.task_id)
    order = tuple(c.desc() if descending else c.asc() for c in cols)
    async with engine.connect() as conn:
        if search:
            few = await _few_matches(conn, conds)
            if few is not None:  # every match is known: the page is the first of them
                few.sort(reverse=descending)
                conds = [tasks.c.task_id.in_([t for _, t in few[:limit + 1]])]
        q = select(*_TASK_COLS).where(*conds).order_by(*order).limit(limit + 1)
        rows = [dict(r._mapping) for r in await conn.execute(q)]
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        nxt = (encode_priority_cursor(last["priority"], last["created_at"], last["task_id"])
               if by_priority else encode_cursor(last["created_at"], last["task_id"]))
    return rows, nxt


def encode_priority_cursor(priority: int, created_at: datetime, task_id: uuid.UUID) -> str:
    raw = orjson.dumps([priority, created_at.isoformat(), str(task_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_priority_cursor(cursor: str) -> tuple[int, datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        prio, ts, tid = orjson.loads(raw)
        if not isinstance(prio, int) or not -100 <= prio <= 100:
            raise ValueError("priority out of range")
        at = datetime.fromisoformat(ts)
        at.astimezone(UTC)
        return prio, at, uuid.UUID(tid)
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
        raise BadCursor(str(exc)) from None


async def open_counts(engine: AsyncEngine, *, tenant: object = None) -> dict[str, Any]:
    """Unfinished tasks by priority and by tenant, each split by status.

    Finished tasks are left out: they are most of the table, and what waits or runs is
    what the split is for. ``tenant`` as in ``list_tasks``.
    """
    conds: list[Any] = [tasks.c.status.in_(
        [s.value for s in TaskStatus if s not in TERMINAL])]
    if tenant is None or isinstance(tenant, str):
        conds.append(tasks.c.tenant.is_(None) if tenant is None else tasks.c.tenant == tenant)
    q = (select(tasks.c.priority, tasks.c.tenant, tasks.c.status, func.count())
         .where(*conds).group_by(tasks.c.priority, tasks.c.tenant, tasks.c.status))
    by_priority: dict[str, dict[str, int]] = {}
    by_tenant: dict[str, dict[str, int]] = {}
    async with engine.connect() as conn:
        for prio, ten, status, n in await conn.execute(q):
            for into, key in ((by_priority, str(prio)), (by_tenant, ten or "")):
                into.setdefault(key, {})
                into[key][status] = into[key].get(status, 0) + n
    return {"by_priority": by_priority, "by_tenant": by_tenant}


async def _few_matches(conn: AsyncConnection,
                       conds: list[Any]) -> list[tuple[datetime, uuid.UUID]] | None:
    """Every task matching ``conds`` as (created_at, task_id), if there are at most
    ``SEARCH_FEW_ROWS`` and the title index finds them within ``SEARCH_FEW_TIMEOUT_MS``;
    None otherwise.

    A title search has two good plans, and Postgres cannot tell which one a term needs:
    its estimate of how many titles hold a substring is a guess. Walking the tasks
    newest first and filtering stops early for a common term, but reads the whole table
    for a rare one; the trigram index finds a rare term's few rows at once, but builds
    a bitmap of most of the table for a common one. So the index is tried first, with
    a bound on rows and time, and the walk is left for the terms that bound proves
    common. Both give the same page.
    """
    probe = select(tasks.c.created_at, tasks.c.task_id).where(*conds).limit(
        constants.SEARCH_FEW_ROWS + 1)
    # The settings are local to the savepoint only if it is rolled back: released, they
    # would hold for the rest of the transaction, and the page's own query with them.
    savepoint = await conn.begin_nested()
    try:
        # Only bitmap scans are left: the title's trigram index (and any index of
        # another filter it can be combined with).
        await conn.execute(_BITMAP_ONLY, {"ms": str(int(constants.SEARCH_FEW_TIMEOUT_MS))})
        found = [(r[0], r[1]) for r in await conn.execute(probe)]
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != QUERY_CANCELED:
            raise
        return None
    finally:
        await savepoint.rollback()
    return found if len(found) <= constants.SEARCH_FEW_ROWS else None


async def task_history(engine: AsyncEngine, *, task_id: uuid.UUID) -> list[dict[str, Any]]:
    q = (select(task_events.c.partition, task_events.c.offset, task_events.c.event)
         .where(task_events.c.task_id == task_id)
         .order_by(task_events.c.partition, task_events.c.offset))
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return [{**r.event, "position": {"partition": r.partition, "offset": r.offset}} for r in rows]


async def checkpoints(engine: AsyncEngine, *, projection: str, topic: str) -> dict[int, int]:
    """Next offset the projection needs per partition (past idle transaction markers)."""
    q = select(projector_offsets.c.partition, projector_offsets.c.offset,
               projector_offsets.c.consumed_upto).where(
        projector_offsets.c.projection == projection, projector_offsets.c.topic == topic)
    async with engine.connect() as conn:
        return {int(p): max(int(o) + 1, int(c or 0)) for p, o, c in (await conn.execute(q)).all()}


async def parked_counts(engine: AsyncEngine) -> dict[tuple[str, str], int]:
    """Parked records (``dead_letters`` rows) per (projection, reason)."""
    q = (select(dead_letters.c.projection, dead_letters.c.reason, func.count())
         .group_by(dead_letters.c.projection, dead_letters.c.reason))
    async with engine.connect() as conn:
        return {(str(p), str(r)): int(n) for p, r, n in (await conn.execute(q)).all()}


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def status_counts(engine: AsyncEngine, *, tenant: str | None = None) -> dict[str, int]:
    """Tasks per status, from ``task_counts`` (a few rows per partition, kept by triggers
    on ``tasks``) instead of a scan of every task; a tenant's own from its tasks."""
    q: Any
    if tenant is None:
        n = func.sum(task_counts.c.n)
        q = select(task_counts.c.status, n).group_by(task_counts.c.status).having(n > 0)
    else:
        q = (select(tasks.c.status, func.count()).where(tasks.c.tenant == tenant)
             .group_by(tasks.c.status))
    async with engine.connect() as conn:
        return {str(s): int(c) for s, c in (await conn.execute(q)).all()}


async def throughput(engine: AsyncEngine, *, minutes: int,
                     tenant: str | None = None) -> list[dict[str, Any]]:
    """Tasks finished per minute over the last ``minutes`` (from the change feed); only
    ``tenant``'s, if given."""
    # The predicate is the partial index task_changes_finished's, word for word.
    q = text(
        "SELECT date_trunc('minute', time) AS minute, count(*) AS finished "
        "FROM task_changes WHERE type IN ('task.done', 'task.failed', 'task.cancelled') "
        "AND time > now() - make_interval(mins => :m) "
        + ("AND tenant = :t " if tenant is not None else "") + "GROUP BY 1 ORDER BY 1"
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(q, {"m": minutes, "t": tenant})).all()
    return [{"minute": r.minute.isoformat(), "finished": int(r.finished)} for r in rows]


async def task_snapshot(engine: AsyncEngine, *,
                        task_id: uuid.UUID) -> tuple[dict[str, Any], int] | None:
    """The task's row and the change position it reflects, read in one snapshot."""
    async with engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="REPEATABLE READ")
        row = (await conn.execute(select(*_TASK_COLS).where(tasks.c.task_id == task_id))).first()
        if row is None:
            return None
        pos = (await conn.execute(select(func.coalesce(func.max(task_changes.c.position), 0))
                                  .where(task_changes.c.task_id == task_id))).scalar()
    return dict(row._mapping), int(pos or 0)


async def dead_tasks(engine: AsyncEngine, *, type_: str | None = None,
                     since: datetime | None = None, limit: int = 10_000,
                     tenant: object = None) -> list[dict[str, Any]]:
    """Dead-lettered tasks (FAILED, retries spent), oldest first, with what a redrive
    needs; ``tenant``: only its tasks (None: every tenant's)."""
    q = select(tasks.c.task_id, tasks.c.tenant, tasks.c.type, tasks.c.title, tasks.c.error,
               tasks.c.attempt, tasks.c.finished_at, tasks.c.payload, tasks.c.priority,
               tasks.c.max_attempts, tasks.c.timeout_s).where(
        tasks.c.status == TaskStatus.FAILED.value, tasks.c.dead_lettered.is_(True))
    if type_:
        q = q.where(tasks.c.type == type_)
    if since:
        q = q.where(tasks.c.finished_at >= since)
    if tenant is not None:
        q = q.where(tasks.c.tenant == tenant)
    q = q.order_by(tasks.c.finished_at, tasks.c.task_id).limit(limit)
    async with engine.connect() as conn:
        return [{str(k): v for k, v in r._mapping.items()} for r in await conn.execute(q)]


async def parked_records(engine: AsyncEngine, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Parked records, oldest first: coordinates, key, reason, error, when, and the bytes
    (key and bytes as text, any byte that is not UTF-8 escaped)."""
    d = dead_letters.c
    q = (select(d.id, d.projection, d.topic, d.partition, d.offset, d.key, d.reason, d.error,
                d.parked_at, d.raw).order_by(d.id).limit(limit))
    async with engine.connect() as conn:
        rows = [{str(k): v for k, v in r._mapping.items()} for r in await conn.execute(q)]
    for row in rows:
        for k in ("key", "raw"):
            v = row[k]
            row[k] = bytes(v).decode("utf-8", "backslashreplace") if v is not None else None
        row["parked_at"] = row["parked_at"].isoformat()
    return rows


async def api_key(engine: AsyncEngine, *, key_id: str) -> tuple[str, str, str] | None:
    """``(tenant, secret_hash, role)`` of an API key that is not revoked."""
    q = select(api_keys.c.tenant, api_keys.c.secret_hash, api_keys.c.role).where(
        api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
    async with engine.connect() as conn:
        row = (await conn.execute(q)).first()
    return (str(row.tenant), str(row.secret_hash), str(row.role)) if row else None


async def api_key_list(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every API key's id, tenant, role and dates, oldest first (secrets are never
    stored)."""
    q = select(api_keys.c.key_id, api_keys.c.tenant, api_keys.c.role, api_keys.c.created_at,
               api_keys.c.revoked_at).order_by(api_keys.c.created_at)
    async with engine.connect() as conn:
        return [{str(k): v for k, v in r._mapping.items()} for r in await conn.execute(q)]
