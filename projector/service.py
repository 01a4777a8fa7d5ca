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
from events.codec import decode
from events.db import asyncpg_dsn
from events.errors import UndecodableEvent
from events.fold import TaskState, apply
from events.log import TP, GroupConsumer, Record
from events.models import CloudEvent, TaskStatus
from events.settings import Settings
from projector import store

log = logging.getLogger("taskflow.projector")

Decoded = tuple[Record, CloudEvent | None, str | None]  # a record, its event or its error


def tune_gc() -> None:
    """The projector's collector settings: a batch allocates tens of thousands of
    short-lived containers, so young objects are collected every 50,000 allocations."""
    runtime.tune_gc(50_000, 50, 100)


def decode_records(records: list[Record]) -> list[Decoded]:
    """Decode each record (None and the error for poison records, which get parked)."""
    out: list[Decoded] = []
    for r in records:
        try:
            out.append((r, decode(r.value), None))
        except UndecodableEvent as exc:
            out.append((r, None, exc.error))
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
    _pool: asyncpg.Pool | None = field(default=None, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _assigned: set[TP] = field(default_factory=set, repr=False)
    _idle_reported: bool = field(default=False, repr=False)

    def __repr__(self) -> str:
        return (f"Projector({self.settings.projection!r} ◆ {self.events_applied} events ◆ "
                f"{self.batches} batches ◆ {self.skipped} redelivered ◆ {self.parked} parked)")

    @property
    def projection(self) -> str:
        return self.settings.projection

    async def start(self) -> None:
        s = self.settings
        self._pool = await asyncpg.create_pool(
            asyncpg_dsn(s.database_url), min_size=1, max_size=2, init=store.init_connection
        )
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
        async with self._pool.acquire() as conn:
            cps = await store.read_checkpoints(
                conn, schema=self.schema, projection=self.projection, topic=self.settings.topic
            )
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
        return decode_records(records)

    async def run(self, *, until_idle: bool = False, idle_ms: int = 1000) -> None:
        """Apply batches until stopped (or, with ``until_idle``, until the log is drained).

        The next batch is fetched and decoded while the current one is written: the
        database works on its transaction while this process decodes, instead of each
        waiting for the other. The next batch is still folded and written only after the
        current one committed, and each transaction re-checks the checkpoints it locks,
        so redelivery (after a rebalance, say) stays a no-op.
        """
        assert self._consumer is not None
        idle_since = time.monotonic()
        next_trim = time.monotonic() + self.settings.changes_trim_interval_s
        pending: asyncio.Task[list[Decoded]] | None = None
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
                    await self.apply_decoded(batch)
                    idle_since = time.monotonic()
                    self._idle_reported = False
                elif not self._idle_reported and self._assigned:
                    await self._report_consumed()
                elif until_idle and (time.monotonic() - idle_since) * 1000 > idle_ms:
                    if self._caught_up():
                        return
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def _report_consumed(self) -> None:
        """When idle, record the consumer positions so lag can ignore transaction markers."""
        assert self._consumer is not None and self._pool is not None
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
            res = await apply_batch(
                conn, [r for r, _, _ in batch], schema=self.schema,
                projection=self.projection, topic=self.settings.topic, decoded=batch,
            )
        self.batches += 1
        self.events_applied += res.applied
        self.skipped += res.skipped
        self.parked += res.parked
        return res


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
    res = BatchResult()
    partitions = sorted({r.partition for r in records})
    cps = await store.lock_checkpoints(
        conn, schema=schema, projection=projection, topic=topic, partitions=partitions
    )
    if decoded is None:
        decoded = decode_records(records)
    fresh: list[Decoded] = []
    new_cps = dict(cps)
    for item in sorted(decoded, key=lambda d: (d[0].partition, d[0].offset)):
        r = item[0]
        if r.offset <= new_cps[r.partition]:
            res.skipped += 1  # already applied: redelivery is a no-op
            continue
        new_cps[r.partition] = r.offset
        fresh.append(item)
    task_ids = list({ev.subject for _, ev, _ in fresh if ev is not None})
    states = await store.load_states(conn, schema=schema, task_ids=task_ids) if task_ids else {}
    touched: dict[uuid.UUID, tuple[TaskState, int, int]] = {}
    journal: list[store.JournalRow] = []
    changes: list[store.ChangeRow] = []
    parked: list[store.ParkedRow] = []
    for r, ev, err in fresh:
        if ev is None:
            parked.append(store.ParkedRow(r.partition, r.offset, r.key, r.value, err or ""))
            continue
        old = states.get(ev.subject)
        new = apply(old, ev)
        journal.append(store.JournalRow(
            r.partition, r.offset, ev.subject, ev.id, ev.type.value, ev.time, ev.attempt,
            ev.model_dump(mode="json"),
        ))
        if new is old or (old is not None and new.__dict__ == old.__dict__):
            continue  # no visible change (``new == old``, without pydantic's generic __eq__)
        states[ev.subject] = new
        touched[ev.subject] = (new, r.partition, r.offset)
        if record_changes:
            changes.append(store.ChangeRow(
                new.task_id, new.tenant, ev.type.value, new.status.value, new.attempt,
                new.progress, summarize(new), ev.time, r.partition, r.offset,
            ))
    res.applied = len(journal)
    res.parked = len(parked)
    res.changes = len(changes)
    advanced = {p: o for p, o in new_cps.items() if o != cps[p]}
    if advanced:
        res.last_position = await store.write_batch(
            conn, schema=schema, projection=projection, topic=topic, states=touched,
            journal=journal, changes=changes, parked=parked, checkpoints=advanced,
        )
    return res
