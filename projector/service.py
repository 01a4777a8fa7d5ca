"""The projector: folds the log into the Postgres read model, exactly once.

Each poll becomes one transaction: lock the checkpoints of the partitions in the batch,
drop records at or below them (redelivery after a crash or a rebalance is a no-op),
fold the rest with ``events.fold.apply``, write rows, journal, change feed and the new
checkpoints, commit. On assignment it seeks to checkpoint + 1; Kafka's own committed
offsets are never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import orjson

from events import runtime
from events.codec import decode_verbatim
from events.db import asyncpg_dsn
from events.errors import UndecodableEvent
from events.fold import TaskState, apply
from events.log import TP, GroupConsumer, Record
from events.models import CloudEvent, TaskStatus
from events.settings import Settings
from projector import store

log = logging.getLogger("taskflow.projector")

# A record; its event or its error; the event's JSON when the record's bytes are it as is.
Decoded = tuple[Record, CloudEvent | None, str | None, bytes | None]


def tune_gc() -> None:
    """The projector's collector settings: a batch allocates tens of thousands of
    short-lived containers, so young objects are collected every 50,000 allocations."""
    runtime.tune_gc(*runtime.BATCH_SERVICE_GC)


def decode_records(records: list[Record]) -> list[Decoded]:
    """Decode each record (None and the error for poison records, which get parked)."""
    out: list[Decoded] = []
    for r in records:
        try:
            ev, verbatim = decode_verbatim(r.value)
        except UndecodableEvent as exc:
            out.append((r, None, exc.error, None))
        else:
            out.append((r, ev, None, r.value if verbatim else None))
    return out


CONSUMED_REPORT_INTERVAL_S = 1.0  # seconds between two idle reports of consumer positions

# Records decoded or folded between two returns to the event loop. A batch is thousands
# of events: done in one go, its decode or fold would hold back the transaction of the
# batch before, whose next statement waits for the loop while Postgres sits idle.
SLICE = 500


async def decode_slices(records: list[Record]) -> list[Decoded]:
    """``decode_records``, a slice at a time."""
    out: list[Decoded] = []
    for i in range(0, len(records), SLICE):
        if i:
            await asyncio.sleep(0)
        out.extend(decode_records(records[i:i + SLICE]))
    return out


def summarize(state: TaskState) -> str | None:
    """A short, human-sized line for SSE: the result or the error, cut at 200 chars."""
    if state.status is TaskStatus.DONE and state.result is not None:
        text = (state.result if isinstance(state.result, str)
                else orjson.dumps(state.result).decode())
    elif state.error:
        text = state.error
    elif state.progress_message:
        text = state.progress_message
    else:
        return None
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0
    parked: int = 0
    changes: int = 0
    last_position: int | None = None


@dataclass
class Projector:
    """Folds ``settings.topic`` into the read model in ``schema``.

    :param settings: process settings (topic, database, batch size, projection name).
    :param schema: Postgres schema holding the read model (``public`` for the live one).
    :param group_id: consumer group; projectors of one projection share it.
    """

    settings: Settings
    schema: str = "public"
    group_id: str = ""
    events_applied: int = 0
    batches: int = 0
    parked: int = 0
    skipped: int = 0
    redone: int = 0  # batches folded again because their checkpoints moved meanwhile
    split: int = 0  # batches split to find the records Postgres refused
    _pool: asyncpg.Pool | None = field(default=None, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _assigned: set[TP] = field(default_factory=set, repr=False)
    _idle_reported: bool = field(default=False, repr=False)
    _next_report: float = field(default=0.0, repr=False)  # monotonic; see _report_consumed
    _failure: BaseException | None = field(default=None, repr=False)  # raised by ``run``

    def __repr__(self) -> str:
        return (f"Projector({self.settings.projection!r} ◆ {self.events_applied} events ◆ "
                f"{self.batches} batches ◆ {self.skipped} redelivered ◆ {self.redone} redone ◆ "
                f"{self.split} split ◆ {self.parked} parked)")

    @property
    def projection(self) -> str:
        return self.settings.projection

    async def start(self) -> None:
        s = self.settings
        self._pool = await store.create_pool(asyncpg_dsn(s.database_url), min_size=1, max_size=2)
        self._consumer = GroupConsumer(
            bootstrap=s.kafka_bootstrap,
            topics=[s.topic],
            group_id=self.group_id or f"taskflow.projector.{s.projection}.{s.topic}",
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
            read_committed=True,
            max_poll_records=s.projector_batch_max,
            client_id="taskflow-projector",
        )
        await self._consumer.start()
        tune_gc()

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._pool is not None:
            await self._pool.close()
        log.info("shutdown %r", self)

    def request_stop(self) -> None:
        self._stopping.set()

    async def _on_assigned(self, tps: list[TP]) -> dict[TP, int]:
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                cps = await store.read_checkpoints(
                    conn, schema=self.schema, projection=self.projection,
                    topic=self.settings.topic)
        except Exception as exc:  # Postgres away mid-rebalance: no seek is possible, so
            # this projector stops (``run`` raises) and a fresh one seeks on assignment.
            self._failure = exc
            self._stopping.set()
            return {}
        self._assigned = set(tps)
        log.info("assigned %s", sorted(p for _, p in tps))
        return {(t, p): cps.get(p, -1) + 1 for t, p in tps}

    async def _on_revoked(self, tps: list[TP]) -> None:
        self._assigned -= set(tps)

    async def trim(self) -> int:
        assert self._pool is not None
        s = self.settings
        async with self._pool.acquire() as conn:
            return await store.trim_changes(conn, schema=self.schema,
                                            max_age_s=s.changes_retention_s,
                                            max_rows=s.changes_retention_rows)

    async def _next_batch(self) -> list[Decoded]:
        assert self._consumer is not None
        records = await self._consumer.poll(
            timeout_ms=100, max_records=self.settings.projector_batch_max
        )
        return await decode_slices(records)

    async def run(self, *, until_idle: bool = False, idle_ms: int = 1000) -> None:
        """Apply batches until stopped (or, with ``until_idle``, until the log is drained).

        A pipeline of three, so that this process and the database work side by side:
        batch N is written (one transaction) while batch N+1 is folded in memory and
        batch N+2 is fetched and decoded. Batch N+1's fold starts from batch N's states
        and checkpoints before N has committed; its own transaction then locks the
        checkpoints and checks that they are exactly the ones the fold started from. If
        anything else moved them (a rebalance, a zombie projector) or N had to be redone,
        the batch is folded again from what is committed. So redelivery stays a no-op and
        nothing is applied twice or skipped.
        """
        assert self._consumer is not None
        idle_since = time.monotonic()
        next_trim = time.monotonic() + self.settings.changes_trim_interval_s
        pending: asyncio.Task[list[Decoded]] | None = None
        writing: asyncio.Task[None] | None = None
        prev: Folded | None = None
        try:
            while not self._stopping.is_set():
                if time.monotonic() >= next_trim:
                    await self.trim()
                    next_trim = time.monotonic() + self.settings.changes_trim_interval_s
                if pending is None:
                    pending = asyncio.ensure_future(self._next_batch())
                batch = await pending
                pending = None
                if batch:
                    # Prefetch only while busy: an idle poll in flight would hold the
                    # consumer through the idle bookkeeping below.
                    pending = asyncio.ensure_future(self._next_batch())
                    folded = await self._fold(batch, prev)
                    if writing is not None:
                        await writing  # batch N must commit before N+1 is written
                        writing = None
                        if folded.rests_on is not None and folded.rests_on.outcome != "written":
                            folded = await self._fold(batch, None)
                    writing = asyncio.ensure_future(self._write(folded))
                    prev = folded
                    idle_since = time.monotonic()
                    self._idle_reported = False
                    continue
                if writing is not None:
                    await writing
                    writing = None
                if (not self._idle_reported and self._assigned
                        and time.monotonic() >= self._next_report):
                    await self._report_consumed()
                elif until_idle and (time.monotonic() - idle_since) * 1000 > idle_ms:
                    if self._caught_up():
                        return
            if writing is not None:
                await writing  # a clean stop finishes the batch under way
                writing = None
            if self._failure is not None:
                raise self._failure
        finally:
            for task in (pending, writing):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _fold(self, batch: list[Decoded], prev: Folded | None) -> Folded:
        """Fold ``batch`` on top of ``prev`` (the batch before, maybe still being written).

        Tasks of ``prev`` start from its states, and its partitions from its checkpoints;
        everything else is read from the database, checkpoints first: a write landing
        between the two reads moves a checkpoint, which ``_write`` then notices.
        """
        assert self._pool is not None
        parts = sorted({d[0].partition for d in batch})
        known = prev.checkpoints if prev is not None else {}
        base: dict[int, int] = {p: known[p] for p in parts if p in known}
        ids = task_ids_of(batch)
        states: dict[uuid.UUID, TaskState] = {}
        if prev is not None:
            states = {t: prev.states[t] for t in ids if t in prev.states}
        missing = [t for t in ids if t not in states]
        if len(base) < len(parts) or missing:
            async with self._pool.acquire() as conn:
                if len(base) < len(parts):
                    cps = await store.read_checkpoints(
                        conn, schema=self.schema, projection=self.projection,
                        topic=self.settings.topic)
                    base.update({p: cps.get(p, -1) for p in parts if p not in base})
                if missing:
                    states.update(await store.load_states(conn, schema=self.schema,
                                                          task_ids=missing))
        folded = await fold_batch(batch, base, states)
        folded.rests_on = prev
        return folded

    async def _write(self, folded: Folded) -> None:
        """Write a folded batch in one transaction, or fold it again if its ground moved.

        If Postgres refuses a row of the batch, that transaction is rolled back and the
        batch is applied again from what is committed, split until the records it cannot
        hold are found and parked (``apply_or_park``). Its outcome is then "split", so
        the next batch, folded on the states this one would have left, is folded again.
        """
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                cps = await store.lock_checkpoints(
                    conn, schema=self.schema, projection=self.projection,
                    topic=self.settings.topic, partitions=sorted(folded.base))
                stale = folded.rests_on is not None and folded.rests_on.outcome != "written"
                if stale or cps != folded.base:
                    folded.outcome = "redone"
                    self.redone += 1
                    res = await apply_batch(
                        conn, [d[0] for d in folded.decoded], schema=self.schema,
                        projection=self.projection, topic=self.settings.topic,
                        decoded=folded.decoded)
                else:
                    res = folded.result()
                    res.last_position = await write_folded(
                        conn, folded, schema=self.schema, projection=self.projection,
                        topic=self.settings.topic)
        except Exception as exc:
            if not store.refused(exc):
                raise  # an outage or a bug, not a record: nothing is parked for it
            folded.outcome = "split"
            self.split += 1
            async with self._pool.acquire() as conn, conn.transaction():
                res = await apply_or_park(
                    conn, folded.decoded, schema=self.schema, projection=self.projection,
                    topic=self.settings.topic, failed=exc)
        if folded.outcome == "pending":
            folded.outcome = "written"
        folded.rests_on = None  # the chain of batches need not stay in memory
        self._count(res)

    def _count(self, res: BatchResult) -> None:
        self.batches += 1
        self.events_applied += res.applied
        self.skipped += res.skipped
        self.parked += res.parked

    async def _report_consumed(self) -> None:
        """When idle, record the consumer positions so lag can ignore transaction markers.

        At most once per ``CONSUMED_REPORT_INTERVAL_S``: under a trickle of events the
        projector goes idle between every two batches, and a write (and a WAL flush) each
        time was a second Postgres transaction per batch.
        """
        assert self._consumer is not None and self._pool is not None
        self._next_report = time.monotonic() + CONSUMED_REPORT_INTERVAL_S
        positions = {}
        for tp in list(self._assigned):
            hw = self._consumer.highwater(tp)
            pos = await self._consumer.position(tp)
            if hw is not None and pos >= hw:
                positions[tp[1]] = pos
        if positions:
            async with self._pool.acquire() as conn:
                await store.record_consumed(conn, schema=self.schema, projection=self.projection,
                                            topic=self.settings.topic, positions=positions)
        self._idle_reported = True

    def _caught_up(self) -> bool:
        assert self._consumer is not None
        return bool(self._assigned)

    async def apply_records(self, records: list[Record]) -> BatchResult:
        return await self.apply_decoded(decode_records(records))

    async def apply_decoded(self, batch: list[Decoded]) -> BatchResult:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            res = await apply_or_park(conn, batch, schema=self.schema,
                                      projection=self.projection, topic=self.settings.topic)
        self._count(res)
        return res


@dataclass
class Folded:
    """A batch folded in memory: the rows to write and the states it leaves behind."""

    base: dict[int, int]  # checkpoints the fold started from (offsets at or below: skipped)
    checkpoints: dict[int, int]  # checkpoints after the batch
    states: dict[uuid.UUID, TaskState]  # every task of the batch, after it
    touched: dict[uuid.UUID, tuple[TaskState, int, int]]
    # Each touched task's state before the batch (None: not in the read model yet).
    before: dict[uuid.UUID, TaskState | None]
    journal: list[store.JournalRow]
    changes: list[store.ChangeRow]
    parked: list[store.ParkedRow]
    skipped: int = 0
    decoded: list[Decoded] = field(default_factory=list)
    # Set once written: the next batch's fold may rest on it only if it was written as is.
    outcome: str = "pending"  # "written" | "redone" | "split" | "pending"
    rests_on: Folded | None = None  # the batch whose states and checkpoints it started from

    @property
    def advanced(self) -> dict[int, int]:
        return {p: o for p, o in self.checkpoints.items() if o != self.base[p]}

    def result(self) -> BatchResult:
        return BatchResult(applied=len(self.journal), skipped=self.skipped,
                           parked=len(self.parked), changes=len(self.changes))


async def fold_batch(decoded: list[Decoded], base: dict[int, int],
                     states: dict[uuid.UUID, TaskState], *,
                     record_changes: bool = True) -> Folded:
    """Fold ``decoded`` onto ``states`` (the tasks' states at checkpoints ``base``).

    No I/O: it only yields to the event loop every ``SLICE`` events. Records at or below
    a partition's checkpoint are skipped (redelivery). ``states`` is updated in place
    and returned in ``Folded.states``.
    """
    fresh: list[Decoded] = []
    new_cps = dict(base)
    skipped = 0
    for item in sorted(decoded, key=lambda d: (d[0].partition, d[0].offset)):
        r = item[0]
        if r.offset <= new_cps[r.partition]:
            skipped += 1  # already applied: redelivery is a no-op
            continue
        new_cps[r.partition] = r.offset
        fresh.append(item)
    touched: dict[uuid.UUID, tuple[TaskState, int, int]] = {}
    before: dict[uuid.UUID, TaskState | None] = {}
    journal: list[store.JournalRow] = []
    changes: list[store.ChangeRow] = []
    parked: list[store.ParkedRow] = []
    for i, (r, ev, err, verbatim) in enumerate(fresh):
        if i and not i % SLICE:
            await asyncio.sleep(0)
        if ev is None:
            parked.append(store.ParkedRow(r.partition, r.offset, r.key, r.value, err or ""))
            continue
        old = states.get(ev.subject)
        try:  # everything a record makes, before any of it is kept
            new = apply(old, ev)
            entry = store.JournalRow(
                r.partition, r.offset, ev.subject, ev.id, ev.type.value, ev.time, ev.attempt,
                verbatim if verbatim is not None else ev.model_dump(mode="json"),
            )
            # No visible change: ``new == old``, without pydantic's generic __eq__.
            same = new is old or (old is not None and new.__dict__ == old.__dict__)
            change = None if same or not record_changes else store.ChangeRow(
                new.task_id, new.tenant, ev.type.value, new.status.value, new.attempt,
                new.progress, summarize(new), ev.time, r.partition, r.offset,
            )
        except Exception as exc:  # the fold is total by design; if a record breaks it
            # anyway, that record is parked rather than the partition stopped on it
            parked.append(store.ParkedRow(r.partition, r.offset, r.key, r.value,
                                          store.error_text(exc), "fold"))
            continue
        journal.append(entry)
        if same:
            continue
        states[ev.subject] = new
        if ev.subject not in touched:
            before[ev.subject] = old  # untouched so far, so still as the batch found it
        touched[ev.subject] = (new, r.partition, r.offset)
        if change is not None:
            changes.append(change)
    return Folded(base=dict(base), checkpoints=new_cps, states=states, touched=touched,
                  before=before,
                  journal=journal, changes=changes, parked=parked, skipped=skipped,
                  decoded=decoded)


def task_ids_of(decoded: list[Decoded]) -> set[uuid.UUID]:
    return {d[1].subject for d in decoded if d[1] is not None}


async def write_folded(conn: asyncpg.Connection, folded: Folded, *, schema: str,
                       projection: str, topic: str) -> int | None:
    """Write a folded batch inside the caller's transaction (checkpoints already locked)."""
    if not folded.advanced:
        return None
    for p in folded.parked:
        log.warning("parked %s partition %d offset %d (%s): %s", topic, p.partition, p.offset,
                    p.reason, p.error)
    return await store.write_batch(
        conn, schema=schema, projection=projection, topic=topic, states=folded.touched,
        before=folded.before,
        journal=folded.journal, changes=folded.changes, parked=folded.parked,
        checkpoints=folded.advanced,
    )


async def apply_batch(
    conn: asyncpg.Connection,
    records: list[Record],
    *,
    schema: str,
    projection: str,
    topic: str,
    record_changes: bool = True,
    decoded: list[Decoded] | None = None,
) -> BatchResult:
    """Fold ``records`` into the read model inside the caller's transaction.

    ``record_changes=False`` (rebuilds) leaves the SSE change feed alone. ``decoded``
    is ``decode_records(records)`` if the caller already has it.
    """
    partitions = sorted({r.partition for r in records})
    cps = await store.lock_checkpoints(
        conn, schema=schema, projection=projection, topic=topic, partitions=partitions
    )
    if decoded is None:
        decoded = decode_records(records)
    task_ids = list(task_ids_of(decoded))  # fold_batch skips what the checkpoints cover
    states = await store.load_states(conn, schema=schema, task_ids=task_ids) if task_ids else {}
    folded = await fold_batch(decoded, cps, states, record_changes=record_changes)
    res = folded.result()
    res.last_position = await write_folded(conn, folded, schema=schema, projection=projection,
                                           topic=topic)
    return res


async def apply_or_park(
    conn: asyncpg.Connection,
    decoded: list[Decoded],
    *,
    schema: str,
    projection: str,
    topic: str,
    record_changes: bool = True,
    failed: BaseException | None = None,
) -> BatchResult:
    """``apply_batch``, except that a record whose rows Postgres refuses is parked.

    Inside the caller's transaction. The batch is tried in a savepoint; if Postgres
    refuses it (``store.refused``), it is split in halves, each tried in its own
    savepoint, down to single records: a single record refused is parked with the error
    and its checkpoint moved past it. Halves go in log order and each folds from what the
    ones before it wrote, so every other record lands once, in order. An outage is raised
    as it is. ``failed``: the whole batch is known to fail with this error already.
    """
    # Lock every checkpoint in the outer transaction first: a savepoint rolled back
    # would release locks taken inside it.
    await store.lock_checkpoints(conn, schema=schema, projection=projection, topic=topic,
                                 partitions=sorted({d[0].partition for d in decoded}))
    total = BatchResult()

    async def attempt(part: list[Decoded], error: BaseException | None) -> None:
        if error is None:
            try:
                async with conn.transaction():
                    res = await apply_batch(
                        conn, [d[0] for d in part], schema=schema, projection=projection,
                        topic=topic, record_changes=record_changes, decoded=part)
            except Exception as exc:
                if not store.refused(exc):
                    raise
                error = exc
            else:
                total.applied += res.applied
                total.skipped += res.skipped
                total.parked += res.parked
                total.changes += res.changes
                if res.last_position is not None:
                    total.last_position = res.last_position
                return
        if len(part) == 1:
            total.parked += await _park(conn, part[0][0], error, schema=schema,
                                        projection=projection, topic=topic)
            return
        half = len(part) // 2
        await attempt(part[:half], None)
        await attempt(part[half:], None)

    await attempt(sorted(decoded, key=lambda d: (d[0].partition, d[0].offset)), failed)
    return total


async def _park(conn: asyncpg.Connection, r: Record, error: BaseException, *, schema: str,
                projection: str, topic: str) -> int:
    """Park one record Postgres refused and move its partition's checkpoint past it; 1 if
    parked, 0 if the checkpoint was already there (a record applied by another owner)."""
    cps = await store.lock_checkpoints(conn, schema=schema, projection=projection,
                                       topic=topic, partitions=[r.partition])
    if r.offset <= cps[r.partition]:
        return 0
    row = store.ParkedRow(r.partition, r.offset, r.key, r.value, store.error_text(error),
                          "write")
    await store.write_batch(conn, schema=schema, projection=projection, topic=topic,
                            states={}, journal=[], changes=[], parked=[row],
                            checkpoints={r.partition: r.offset})
    log.warning("parked %s partition %d offset %d (%s): %s", topic, r.partition, r.offset,
                row.reason, row.error)
    return 1
