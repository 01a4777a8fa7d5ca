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

from events import runtime
from events.db import asyncpg_dsn
from events.fold import TaskState
from events.heartbeat import Heartbeat
from events.log import TP, GroupConsumer, Record
from events.settings import Settings
from projector import connections, retention, store
from projector.apply import apply_batch, apply_or_park, write_folded
from projector.batch import (
    BatchResult,
    Decoded,
    Folded,
    decode_records,
    decode_slices,
    fold_batch,
    task_ids_of,
)

log = logging.getLogger("taskflow.projector")


def tune_gc() -> None:
    """The projector's collector settings: a batch allocates tens of thousands of
    short-lived containers, so young objects are collected every 50,000 allocations."""
    runtime.tune_gc(*runtime.BATCH_SERVICE_GC)


CONSUMED_REPORT_INTERVAL_S = 1.0  # seconds between two idle reports of consumer positions


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
    expired: int = 0  # finished tasks the retention rule removed (projector/retention.py)
    _next_sweep: float = field(default=0.0, repr=False)  # monotonic time of the next sweep
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
        self._pool = await connections.create_pool(asyncpg_dsn(s.database_url), min_size=1,
                                                   max_size=2)
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
        if s.retention_days is not None and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + s.retention_sweep_interval_s
            async with self._pool.acquire() as conn:
                self.expired += await retention.sweep(conn, schema=self.schema,
                                                      projection=self.projection,
                                                      days=s.retention_days)
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
        heartbeat = Heartbeat(self.settings.heartbeat_file)
        try:
            while not self._stopping.is_set():
                heartbeat.beat()
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
