"""Operator tools: verify the live read model against the log, and rebuild it with no
downtime.

**verify** takes a consistent snapshot of the read model and its checkpoints (one
REPEATABLE READ transaction), folds the log independently up to exactly those
checkpoints, and compares the two row by row.

**rebuild** replays the log from offset 0 into a shadow schema while the live projector
keeps serving. The shadow never runs ahead of the live checkpoints. When it has caught
up, one transaction locks the live checkpoints (the live projector waits), brings the
shadow to exactly the same offsets, and swaps the shadow tables in. Readers block for
the length of that transaction and never see a half-built table. ``task_changes`` (the
SSE feed) is not rebuilt: it is a history of what subscribers were told, keyed by
positions they hold, so the swap neither replays nor skips anything for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from events.db import asyncpg_dsn
from events.errors import TaskFlowError
from events.fold import TaskState, apply
from events.log import Record
from events.settings import Settings
from projector import connections, retention, store
from projector.apply import apply_or_park
from projector.batch import Decoded, decode_slices
from projector.replay import read_records
from projector.service import tune_gc

COMPARED = ("status", "title", "type", "payload", "result", "error", "attempt", "progress",
            "tenant", "dead_lettered", "cancel_requested", "created_at", "finished_at")
# task_counts is kept by triggers on tasks: the shadow's counts go in with its tasks.
SWAPPED = ("tasks", "task_events", "dead_letters", "task_counts")


@dataclass
class Diff:
    task_id: str
    field: str
    live: Any
    log: Any

    def __str__(self) -> str:
        return f"{self.task_id} {self.field}: read model={self.live!r} log={self.log!r}"


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await connections.connect(asyncpg_dsn(settings.database_url))


async def verify(settings: Settings, *, progress: bool = False) -> tuple[list[Diff], int]:
    """Differences between the live read model and a fresh fold of the log; and #events.

    Records the projection parked (``dead_letters``, read in the same snapshot) are left
    out of the fold, as the projector left them out: the read model is checked against
    the log minus what ``projections dead-letters`` lists, not against records it could
    never hold. A parked record is not a difference; it is listed there instead.
    """
    conn = await _connect(settings)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cps = await store.read_checkpoints(conn, schema="public",
                                               projection=settings.projection,
                                               topic=settings.topic)
            rows = {r["task_id"]: dict(r) for r in await conn.fetch("SELECT * FROM tasks")}
            parked = {(r["partition"], r["offset"]) for r in await conn.fetch(
                'SELECT partition, "offset" FROM dead_letters '
                "WHERE projection = $1 AND topic = $2", settings.projection, settings.topic)}
            cutoff = await retention.cutoff(conn, projection=settings.projection)
    finally:
        await conn.close()
    states: dict[uuid.UUID, TaskState] = {}
    n = 0
    from events.codec import decode
    from events.errors import UndecodableEvent

    async for r in read_records(bootstrap=settings.kafka_bootstrap, topic=settings.topic,
                                upto=cps, progress=progress,
                                archive_dir=settings.archive_dir):
        n += 1
        if (r.partition, r.offset) in parked:
            continue
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue
        states[ev.subject] = apply(states.get(ev.subject), ev)
    states = {t: st for t, st in states.items() if not retention.expired(st, cutoff)}
    diffs: list[Diff] = []
    for tid in sorted(set(states) | set(rows), key=str):
        st, row = states.get(tid), rows.get(tid)
        if st is None:
            diffs.append(Diff(str(tid), "row", "present", "absent"))
            continue
        if row is None:
            diffs.append(Diff(str(tid), "row", "absent", "present"))
            continue
        expected = st.model_dump()
        for f in COMPARED:
            live = row[f]
            want = expected[f].value if f == "status" else expected[f]
            if live != want:
                diffs.append(Diff(str(tid), f, live, want))
    return diffs, n


@dataclass
class RebuildStats:
    events: int = 0
    seconds: float = 0.0
    swapped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# Indexes a rebuild needs while it folds: the upsert's conflict target, the checkpoint
# rows' key, and everything on the small tables. The others (the journal's and the
# read paths' indexes) are built once, in bulk, when the shadow has caught up: much
# cheaper than maintaining them row by row through a million inserts.
_DEFERRED_TABLES = ("tasks", "task_events")

_INDEXES_SQL = """
SELECT c.relname AS tab, i.relname AS idx, pg_get_indexdef(i.oid) AS indexdef,
       con.conname, pg_get_constraintdef(con.oid) AS condef, x.indisprimary AS primary
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_constraint con ON con.conindid = i.oid AND con.conrelid = c.oid
    AND con.contype IN ('p', 'u', 'x')
WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
ORDER BY c.relname, i.relname
"""


# Triggers on the copied tables (task_counts' upkeep), recreated on the shadow's tables.
_TRIGGERS_SQL = """
SELECT c.relname AS tab, pg_get_triggerdef(t.oid) AS triggerdef
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) AND NOT t.tgisinternal
ORDER BY c.relname, t.tgname
"""


async def _create_shadow(conn: asyncpg.Connection, shadow: str,
                         tables: tuple[str, ...] = (*SWAPPED, "task_changes",
                                                    "projector_offsets")) -> list[str]:
    """Create the shadow tables; returns the index statements deferred until catch-up.

    Indexes and constraints are recreated from the live ones under the same names, so
    the swapped-in tables look exactly like the ones they replace.
    """
    await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
    await conn.execute(f"CREATE SCHEMA {shadow}")
    for t in tables:
        await conn.execute(
            f"CREATE TABLE {shadow}.{t} (LIKE public.{t} INCLUDING ALL EXCLUDING INDEXES)")
    deferred: list[str] = []
    for r in await conn.fetch(_INDEXES_SQL, list(tables)):
        if r["conname"] is not None:
            stmt = (f"ALTER TABLE {shadow}.{r['tab']} ADD CONSTRAINT "
                    f"{r['conname']} {r['condef']}")
        else:
            stmt = r["indexdef"].replace(" ON public.", f" ON {shadow}.", 1)
        if r["tab"] in _DEFERRED_TABLES and not (r["tab"] == "tasks" and r["primary"]):
            deferred.append(stmt)
        else:
            await conn.execute(stmt)
    for r in await conn.fetch(_TRIGGERS_SQL, list(tables)):
        await conn.execute(r["triggerdef"].replace(
            f" ON public.{r['tab']} ", f" ON {shadow}.{r['tab']} ", 1))
    return deferred


class RebuildIncomplete(TaskFlowError):
    """The log ends before the live projector's checkpoints: nothing was swapped."""


def _refuse_if_short(mine: dict[int, int], live: dict[int, int]) -> None:
    """Swapping in a shadow that stopped short would drop events from the read model for
    good: the live projector carries on from its own checkpoints, past what was never
    read. That happens when the topic was recreated or truncated under the read model."""
    short = {p: (mine.get(p, -1), o) for p, o in sorted(live.items()) if mine.get(p, -1) < o}
    if short:
        where = ", ".join(f"partition {p}: read to offset {m}, the read model is at {o}"
                          for p, (m, o) in short.items())
        raise RebuildIncomplete(f"the log ends before the read model ({where}); "
                                "nothing was swapped")


async def rebuild(settings: Settings, *, on_progress: Callable[[int, int, float], None]
                  | None = None, batch: int = 10_000) -> RebuildStats:
    """Rebuild ``tasks``, ``task_events`` and ``dead_letters`` from offset 0 and swap them in.
    The records other projections parked are carried over as they are.

    The log is read and decoded one batch ahead of the batch being written, so Postgres
    and this process work side by side. The shadow schema is invisible until the swap,
    so its transactions commit without waiting for the WAL flush (a crash before the
    swap abandons the shadow anyway); the swap itself commits synchronously, and that
    flush covers every earlier commit.
    """
    tune_gc()
    shadow = f"rebuild_{int(time.time())}"
    stats = RebuildStats()
    t0 = time.monotonic()
    conn = await _connect(settings)
    live_conn = await _connect(settings)
    try:
        deferred = await _create_shadow(conn, shadow)
        await conn.execute("SET synchronous_commit = off")

        async def live_checkpoints() -> dict[int, int]:
            return await store.read_checkpoints(live_conn, schema="public",
                                                projection=settings.projection,
                                                topic=settings.topic)

        async def shadow_checkpoints() -> dict[int, int]:
            return await store.read_checkpoints(conn, schema=shadow,
                                                projection=settings.projection,
                                                topic=settings.topic)

        async def flush(decoded: list[Decoded]) -> None:
            if decoded:
                async with conn.transaction():
                    await apply_or_park(conn, decoded, schema=shadow,
                                        projection=settings.projection, topic=settings.topic,
                                        record_changes=False)
                stats.events += len(decoded)

        async def catch_up(mine: dict[int, int], upto: dict[int, int],
                           total: int | None = None) -> None:
            """Apply the log from ``mine`` + 1 to ``upto``, reading one batch ahead."""
            queue: asyncio.Queue[list[Decoded] | None] = asyncio.Queue(maxsize=2)

            async def produce() -> None:
                buffered: list[Record] = []
                try:
                    async for r in read_records(bootstrap=settings.kafka_bootstrap,
                                                topic=settings.topic,
                                                from_position={p: o + 1 for p, o in mine.items()},
                                                upto=upto, archive_dir=settings.archive_dir):
                        buffered.append(r)
                        if len(buffered) >= batch:
                            await queue.put(await decode_slices(buffered))
                            buffered = []
                    if buffered:
                        await queue.put(await decode_slices(buffered))
                finally:
                    await queue.put(None)

            producer = asyncio.ensure_future(produce())
            try:
                while (decoded := await queue.get()) is not None:
                    await flush(decoded)
                    if on_progress and total is not None:
                        on_progress(stats.events, total, time.monotonic() - t0)
                await producer  # its error, if it failed
            finally:
                if not producer.done():
                    producer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await producer

        # Phase 1: catch up with the live projector, never passing its checkpoints. The
        # deferred indexes are built once it is close, then one more round catches up
        # with what the live projector applied meanwhile.
        indexed = False
        for _round in range(100):
            live = await live_checkpoints()
            mine = await shadow_checkpoints()
            behind = sum(max(0, o - mine.get(p, -1)) for p, o in live.items())
            if behind <= batch and _round > 0:
                if indexed:
                    break
                for stmt in deferred:
                    await conn.execute(stmt)
                indexed = True
                continue
            total = sum(o + 1 for o in live.values())
            await catch_up(mine, live, total)
            after = await shadow_checkpoints()
            if after == mine:  # a round that read nothing: the log ends short of ``live``
                _refuse_if_short(after, live)
        if not indexed:
            for stmt in deferred:
                await conn.execute(stmt)
        # Phase 2: stop the live projector at a checkpoint, finish, swap, in one transaction.
        async with live_conn.transaction():
            await live_conn.execute(
                "LOCK TABLE public.projector_offsets IN SHARE ROW EXCLUSIVE MODE")
            live = await live_checkpoints()
            mine = await shadow_checkpoints()
            await catch_up(mine, live)
            mine = await shadow_checkpoints()
            _refuse_if_short(mine, live)
            # The retention rule, at the cutoff the live read model was swept to.
            cutoff = await live_conn.fetchval(
                "SELECT cutoff FROM public.retention WHERE projection = $1 FOR UPDATE",
                settings.projection)
            if cutoff is not None:
                stats.extra["expired"] = await retention.expire(conn, schema=shadow,
                                                                cutoff=cutoff)
            for t in SWAPPED:
                await live_conn.execute(f"LOCK TABLE public.{t} IN ACCESS EXCLUSIVE MODE")
            # The other projections' parked records (schedules, webhooks, workflows) are
            # not this rebuild's to drop: they move into the new table with it.
            cols = 'projection, topic, partition, "offset", key, raw, error, reason, parked_at'
            await live_conn.execute(
                f"INSERT INTO {shadow}.dead_letters ({cols}) SELECT {cols} "
                "FROM public.dead_letters WHERE projection <> $1", settings.projection)
            for t in SWAPPED:
                await live_conn.execute(f"DROP TABLE public.{t}")
                await live_conn.execute(f"ALTER TABLE {shadow}.{t} SET SCHEMA public")
            stats.extra["checkpoints"] = live
        stats.swapped = True
        await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
    except RebuildIncomplete:
        await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
        raise
    finally:
        await conn.close()
        await live_conn.close()
    stats.seconds = time.monotonic() - t0
    return stats


async def dead_letters(settings: Settings, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Parked records, oldest first: coordinates, key, reason, error, when, and the bytes
    (key and bytes as text, any byte that is not UTF-8 escaped)."""
    conn = await _connect(settings)
    try:
        rows = await conn.fetch(
            'SELECT id, projection, topic, partition, "offset", key, reason, error, parked_at, '
            "raw FROM dead_letters ORDER BY id LIMIT $1", limit)
    finally:
        await conn.close()
    out = []
    for r in rows:
        d = dict(r)
        for k in ("key", "raw"):
            v = d[k]
            d[k] = v.decode("utf-8", "backslashreplace") if v is not None else None
        d["parked_at"] = d["parked_at"].isoformat()
        out.append(d)
    return out


def dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()
