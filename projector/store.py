"""Read-model writes: one Postgres transaction per batch, checkpoint included.

Every statement a projector batch runs is here; the connections come from
``projector.connections``. A batch is written with a handful of statements whatever its
size: ``unnest`` arrays for the task upsert and COPY for the journal and the change feed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from events.constants import CHANGES_CHANNEL
from events.fold import TaskState

# Serialises the allocation of task_changes positions across projector processes; see
# ``write_batch`` for why that makes the change feed gap-free. (An arbitrary constant.)
CHANGES_LOCK_KEY = 0x7A5CF10

_TASK_COLUMNS = (
    "task_id", "tenant", "title", "type", "status", "payload", "result", "error", "attempt",
    "progress", "progress_message", "priority", "max_attempts", "timeout_s", "not_before",
    "schedule_id", "due_at", "cancel_requested", "dead_lettered", "created_at", "updated_at",
    "finished_at", "created_by",
    "partition", "last_offset",
)
_TASK_TYPES = (
    "uuid", "text", "text", "text", "text", "jsonb", "jsonb", "text", "int4",
    "int4", "text", "int4", "int4", "float8", "timestamptz",
    "uuid", "timestamptz", "bool", "bool", "timestamptz", "timestamptz", "timestamptz",
    "text",
    "int4", "int8",
)


def _insert_arrays(table: str, columns: tuple[str, ...], types: tuple[str, ...],
                   first: int) -> str:
    """``INSERT … SELECT * FROM unnest(…)`` of one typed array per column, from ``$first``."""
    cols = ", ".join(f'"{c}"' for c in columns)
    arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(types))
    return f"INSERT INTO {{schema}}.{table} ({cols}) SELECT * FROM unnest({arrays})"


_UPSERT_TASKS = (
    _insert_arrays("tasks", _TASK_COLUMNS, _TASK_TYPES, 1)
    + " ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _TASK_COLUMNS[1:])
)


# Set when a task is created and never changed by a later event of its own. A task
# already in the read model whose batch left these alone is written with an UPDATE of
# the other columns: no payload sent and parsed again, a third of the values to encode.
_DEFINITION = ("tenant", "title", "type", "payload", "priority", "max_attempts", "timeout_s",
               "schedule_id", "due_at", "created_at", "created_by")
_CHANGING = tuple(c for c in _TASK_COLUMNS if c not in _DEFINITION)  # task_id first
_CHANGING_TYPES = tuple(t for c, t in zip(_TASK_COLUMNS, _TASK_TYPES, strict=True)
                        if c not in _DEFINITION)
_UPDATE_TASKS = (
    "UPDATE {schema}.tasks AS t SET "
    + ", ".join(f"{c} = v.{c}" for c in _CHANGING[1:])
    + " FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_CHANGING_TYPES))
    + f") AS v({', '.join(_CHANGING)}) WHERE t.task_id = v.task_id"
)


def _unchanged_definition(old: TaskState | None, new: TaskState) -> bool:
    if old is None:
        return False  # not in the read model yet: insert it whole
    o, n = old.__dict__, new.__dict__
    return all(o[c] is n[c] or o[c] == n[c] for c in _DEFINITION)


def _columns(rows: list[tuple[TaskState, int, int]], names: tuple[str, ...]) -> list[list[Any]]:
    """Column arrays for ``unnest``: the named state fields, then partition, last_offset."""
    fields = names[:-2]
    cols: list[list[Any]] = [[] for _ in names]
    for st, partition, offset in rows:
        row = st.__dict__  # the fields, as model_dump() gives them, without copying
        for i, c in enumerate(fields):
            cols[i].append(row[c])
        cols[-2].append(partition)
        cols[-1].append(offset)
    status = names.index("status")
    cols[status] = [v.value for v in cols[status]]
    return cols


async def _write_tasks(conn: asyncpg.Connection, schema: str,
                       states: dict[uuid.UUID, tuple[TaskState, int, int]],
                       before: dict[uuid.UUID, TaskState | None]) -> None:
    """Upsert new tasks (and any whose definition changed); update the rest narrowly."""
    whole: list[tuple[TaskState, int, int]] = []
    narrow: list[tuple[TaskState, int, int]] = []
    for tid, item in states.items():
        (narrow if _unchanged_definition(before.get(tid), item[0]) else whole).append(item)
    if narrow:
        status = await conn.execute(_UPDATE_TASKS.format(schema=schema),
                                    *_columns(narrow, _CHANGING))
        if int(status.rsplit(" ", 1)[1]) != len(narrow):
            whole += narrow  # a row was not where its state came from: write them whole
    if whole:
        await conn.execute(_UPSERT_TASKS.format(schema=schema), *_columns(whole, _TASK_COLUMNS))


# A batch this small goes in as one INSERT of arrays, a round trip; a bigger one by COPY,
# which costs two (the COPY, then its data) but less of Postgres's time per row. Under a
# trickle every batch is small, and round trips are most of its time.
SMALL_BATCH_ROWS = 200
_JOURNAL_COLUMNS = ("partition", "offset", "task_id", "event_id", "type", "time", "attempt",
                    "event")
_JOURNAL_TYPES = ("int4", "int8", "uuid", "uuid", "text", "timestamptz", "int4", "jsonb")
_CHANGE_COLUMNS = ("task_id", "tenant", "type", "status", "attempt", "progress", "summary",
                   "time", "partition", "offset")
_CHANGE_TYPES = ("uuid", "text", "text", "text", "int4", "int4", "text", "timestamptz",
                 "int4", "int8")
_INSERT_JOURNAL = _insert_arrays("task_events", _JOURNAL_COLUMNS, _JOURNAL_TYPES, 1)
# After the checkpoint update's four parameters and the channel.
_INSERT_CHANGES = _insert_arrays("task_changes", _CHANGE_COLUMNS, _CHANGE_TYPES, 6)


def _arrays(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows (at least one) as one list per column, for ``unnest``."""
    return [list(col) for col in zip(*rows, strict=True)]


@dataclass(slots=True)
class JournalRow:
    partition: int
    offset: int
    task_id: uuid.UUID
    event_id: uuid.UUID
    type: str
    time: datetime
    attempt: int
    event: dict[str, Any] | bytes  # the CloudEvent, or its JSON exactly as in the log


@dataclass(slots=True)
class ChangeRow:
    task_id: uuid.UUID
    tenant: str | None
    type: str
    status: str
    attempt: int
    progress: int
    summary: str | None
    time: datetime
    partition: int
    offset: int


@dataclass(slots=True)
class ParkedRow:
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    error: str
    reason: str = "decode"  # "decode" | "fold" | "write": where the record was refused


# SQLSTATE classes that blame the values of a row, never the connection or the schema:
# data exception (22: out of range, bad encoding, NUL, ...), integrity constraint
# violation (23) and program limit exceeded (54: a value too big to index or store).
_REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


def refused(exc: BaseException) -> bool:
    """True if ``exc`` says that Postgres (or asyncpg, encoding a value for it) refused
    what a batch holds: some record in it can never be written, and is parked.

    False for everything else: a connection lost or refused, Postgres shutting down or out
    of resources, a serialization failure, a missing table. None of those is a record's
    fault; parking on them would drop good records, so they are raised and retried.
    """
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in _REFUSED_SQLSTATE_CLASSES
    if isinstance(exc, asyncpg.InterfaceError | OSError):
        return False
    # Raised in this process while encoding a row (asyncpg wraps most as DataError).
    return isinstance(exc, ValueError | TypeError | ArithmeticError | RecursionError)


def error_text(exc: BaseException) -> str:
    """``exc`` as the line stored with a parked record, cut at 2,000 characters."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def storable_text(text: str) -> str:
    """``text`` as Postgres ``text`` can hold it: NUL and lone surrogates (which an error
    may quote from the record it is about) escaped, so that parking cannot fail too."""
    text = text.replace("\x00", "\\x00")
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode()


async def lock_checkpoints(
    conn: asyncpg.Connection, *, schema: str, projection: str, topic: str, partitions: list[int]
) -> dict[int, int]:
    """Lock and return the checkpoint of each partition (-1 if none yet).

    The row lock makes two projectors that briefly both think they own a partition (a
    zombie during a rebalance) take turns; each then skips what the other applied.
    """
    select = (f"SELECT partition, \"offset\" FROM {schema}.projector_offsets "
              "WHERE projection = $1 AND topic = $2 AND partition = ANY($3::int4[]) "
              "ORDER BY partition FOR UPDATE")
    rows = await conn.fetch(select, projection, topic, partitions)
    if len(rows) < len(partitions):
        # A partition's first batch: create its row (-1, nothing applied), then lock it.
        # Only then, so that every later batch costs one round trip here, not two.
        await conn.execute(
            f"INSERT INTO {schema}.projector_offsets (projection, topic, partition, "
            "\"offset\") SELECT $1, $2, p, -1 FROM unnest($3::int4[]) AS p "
            "ON CONFLICT DO NOTHING",
            projection, topic, partitions,
        )
        rows = await conn.fetch(select, projection, topic, partitions)
    return {r["partition"]: r["offset"] for r in rows}


async def read_checkpoints(
    conn: asyncpg.Connection, *, schema: str, projection: str, topic: str
) -> dict[int, int]:
    rows = await conn.fetch(
        f"SELECT partition, \"offset\" FROM {schema}.projector_offsets "
        "WHERE projection = $1 AND topic = $2",
        projection, topic,
    )
    return {r["partition"]: r["offset"] for r in rows}


async def load_states(
    conn: asyncpg.Connection, *, schema: str, task_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TaskState]:
    rows = await conn.fetch(
        f"SELECT * FROM {schema}.tasks WHERE task_id = ANY($1::uuid[])", list(task_ids)
    )
    return {r["task_id"]: TaskState.model_validate(dict(r)) for r in rows}


async def record_consumed(conn: asyncpg.Connection, *, schema: str, projection: str,
                          topic: str, positions: dict[int, int]) -> None:
    await conn.execute(
        f"UPDATE {schema}.projector_offsets AS o SET consumed_upto = v.pos "
        "FROM unnest($3::int4[], $4::int8[]) AS v(part, pos) "
        "WHERE o.projection = $1 AND o.topic = $2 AND o.partition = v.part "
        "AND o.consumed_upto IS DISTINCT FROM v.pos",
        projection, topic, list(positions), list(positions.values()))


async def trim_changes(conn: asyncpg.Connection, *, schema: str, max_age_s: float,
                       max_rows: int) -> int:
    """Trim the change feed by age and by size; returns the new watermark."""
    async with conn.transaction():
        top = await conn.fetchval(f"SELECT coalesce(max(position), 0) FROM {schema}.task_changes")
        by_size = top - max_rows
        by_age = await conn.fetchval(
            f"SELECT coalesce(max(position), 0) FROM {schema}.task_changes "
            "WHERE recorded_at < now() - make_interval(secs => $1)", max_age_s)
        cutoff = max(by_size, by_age)
        current = await conn.fetchval(
            f"SELECT trimmed_upto FROM {schema}.change_retention WHERE id = 1 FOR UPDATE")
        if current is None or cutoff <= current:
            return int(current or 0)
        # Raise the watermark first (same transaction): a reader that sees the rows gone
        # also sees the watermark that explains it.
        await conn.execute(f"UPDATE {schema}.change_retention SET trimmed_upto = $1, "
                           "trimmed_at = now() WHERE id = 1", cutoff)
        await conn.execute(f"DELETE FROM {schema}.task_changes WHERE position <= $1", cutoff)
        return int(cutoff)


async def write_batch(
    conn: asyncpg.Connection,
    *,
    schema: str,
    projection: str,
    topic: str,
    states: dict[uuid.UUID, tuple[TaskState, int, int]],
    journal: list[JournalRow],
    changes: list[ChangeRow],
    parked: list[ParkedRow],
    checkpoints: dict[int, int],
    before: dict[uuid.UUID, TaskState | None] | None = None,
) -> int | None:
    """Write one batch; the caller owns the transaction. Returns the last change position.

    ``before`` holds each task's state as the batch found it, if the caller knows it: a
    task already in the read model whose definition the batch left alone gets only its
    changing columns updated (see ``_write_tasks``).

    Gap-free change feed: positions come from an identity sequence, but a sequence alone
    is not enough: with two projectors, transaction A may take position 10, B take 11,
    and B commit first; a reader that saw 11 would move past 10 before A commits and
    never see it. So each transaction takes a transaction-scoped advisory lock before it
    allocates positions and keeps it until it ends. Postgres makes a transaction's
    effects visible before it releases its locks, so when the next transaction gets the
    lock and allocates higher positions, every lower position is already committed and
    visible. Hence any snapshot that contains position p contains every position < p.
    The lock is taken last, just before commit, so it is held only for the COPY of the
    changes, the checkpoint update and the commit itself.
    """
    if states:
        await _write_tasks(conn, schema, states, before or {})
    if journal:
        rows = [(j.partition, j.offset, j.task_id, j.event_id, j.type, j.time, j.attempt,
                 j.event) for j in journal]
        if len(rows) <= SMALL_BATCH_ROWS:
            await conn.execute(_INSERT_JOURNAL.format(schema=schema), *_arrays(rows))
        else:
            await conn.copy_records_to_table("task_events", schema_name=schema,
                                             columns=list(_JOURNAL_COLUMNS), records=rows)
    if parked:
        await conn.executemany(
            f"INSERT INTO {schema}.dead_letters (projection, topic, partition, \"offset\", key, "
            "raw, error, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            [(projection, topic, p.partition, p.offset, p.key, p.raw,
              storable_text(p.error), p.reason) for p in parked],
        )
    update = (f"UPDATE {schema}.projector_offsets AS o SET \"offset\" = v.off, "
              "updated_at = now() FROM unnest($3::int4[], $4::int8[]) AS v(part, off) "
              "WHERE o.projection = $1 AND o.topic = $2 AND o.partition = v.part")
    args = (projection, topic, list(checkpoints), list(checkpoints.values()))
    if not changes:
        await conn.execute(update, *args)
        return None
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CHANGES_LOCK_KEY)
    crows: list[tuple[Any, ...]] = [
        (c.task_id, c.tenant, c.type, c.status, c.attempt, c.progress, c.summary, c.time,
         c.partition, c.offset) for c in changes]
    if len(crows) <= SMALL_BATCH_ROWS:
        # The changes, the checkpoint, the last position and the wake-up in one round
        # trip; the positions RETURNING gives are the highest, as the lock is held.
        last = await conn.fetchval(
            f"WITH ins AS ({_INSERT_CHANGES.format(schema=schema)} RETURNING position), "
            f"cp AS ({update}) "
            "SELECT p, pg_notify($5, p::text) FROM (SELECT max(position) AS p FROM ins) AS top",
            *args, CHANGES_CHANNEL, *_arrays(crows))
        return int(last)
    await conn.copy_records_to_table("task_changes", schema_name=schema,
                                     columns=list(_CHANGE_COLUMNS), records=crows)
    # Checkpoint, last position and wake-up in one round trip (the advisory lock is held
    # until commit, so this is a round trip less under it). A data-modifying CTE runs
    # whether or not the query reads it; max(position) sees the COPY above.
    last = await conn.fetchval(
        f"WITH cp AS ({update}), top AS (SELECT max(position) AS p FROM {schema}.task_changes) "
        "SELECT p, pg_notify($5, p::text) FROM top",
        *args, CHANGES_CHANNEL,
    )
    return int(last)
