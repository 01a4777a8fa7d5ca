"""Partition ownership for services that act on a log exactly once: the scheduler and the
coordinator.

The recipe, kept here once so both services share it:

* **One owner per partition.** The services of one kind are one consumer group on their
  topic. For each partition it is assigned, a service opens a transactional producer whose
  ``transactional_id`` is the partition's: starting it fences any previous owner and
  aborts its open transaction.
* **Fold before acting.** The new owner reads the partition from the start
  (``read_committed``) up to the end it saw once the fencing was done, and only then acts:
  it knows every action that committed, and none that did not.
* **Fenced, let go.** A producer fenced off by a newer owner closes the partition.

A service subclasses :class:`PartitionedService` and provides the hooks: ``_open`` (the
state of a newly assigned partition), ``_apply`` (fold one decoded event), ``_act``,
``_project`` and ``_on_recovered``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events import chain, owned_db
from events.codec import decode
from events.db import make_engine
from events.errors import ProducerFencedOff, UndecodableEvent
from events.heartbeat import Heartbeat
from events.log import TP, GroupConsumer, Record, TransactionalProducer, ensure_topic
from events.models import CloudEvent
from events.settings import Settings

POLL_MAX_RECORDS = 5000  # records, at most, per poll of the owned partitions
IDLE_S = 2  # seconds without records after which a burst run ends


@dataclass
class Partition:
    """What a service keeps for one partition it owns."""

    tp: TP
    producer: TransactionalProducer
    end: int  # recovery: act on nothing before the fold has read this far
    position: int = 0
    ready: bool = False  # the seek to the start is in place
    recovered: bool = False
    dirty: dict[uuid.UUID, int] = field(default_factory=dict)  # subject -> last offset
    next_projection: float = 0.0  # monotonic time of the next projection write


P = TypeVar("P", bound=Partition)


@dataclass
class PartitionedService(Generic[P]):
    """Owns partitions of ``topic`` in ``group``; folds each, then acts on it.

    :param settings: process settings.
    """

    # Set by the subclass: its name (client id, log lines), its logger, what it does once
    # recovered (log line), its projection (checkpoints, parked records) and how often a
    # partition's projection is written, at most.
    kind: ClassVar[str]
    log: ClassVar[logging.Logger]
    acting: ClassVar[str]
    projection: ClassVar[str]
    project_every_s: ClassVar[float]

    settings: Settings
    parked: int = 0
    parts: dict[TP, P] = field(default_factory=dict, repr=False)
    topic: str = field(default="", init=False, repr=False)
    group: str = field(default="", init=False, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    _engine: AsyncEngine | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Records that are no event of the topic: (partition, record, error), parked by
    # _project.
    _to_park: list[tuple[int, Record, str]] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------ hooks
    def _instance_id(self) -> str:
        raise NotImplementedError

    def _tick_s(self) -> float:
        raise NotImplementedError

    async def _open(self, tp: TP, producer: TransactionalProducer, end: int,
                    first: int) -> P:
        """The state of a partition just assigned, read from ``first``."""
        raise NotImplementedError

    def _apply(self, part: P, r: Record, ev: CloudEvent) -> None:
        """Fold the event ``ev`` of record ``r`` into ``part``."""
        raise NotImplementedError

    def _on_recovered(self, part: P) -> None:
        raise NotImplementedError

    async def _act(self, part: P) -> None:
        """Act on a recovered partition, in one Kafka transaction of its producer."""
        raise NotImplementedError

    def _busy(self, part: P) -> bool:
        """Whether ``part`` has work left that keeps a burst run going."""
        return False

    async def _project(self, part: P) -> None:
        """Write the projection of ``part`` and its checkpoint."""
        raise NotImplementedError

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        chain.configure(s)
        await ensure_topic(s.kafka_bootstrap, self.topic, s.partitions,
                           replication_factor=s.replication_factor,
                           min_insync_replicas=s.min_insync_replicas)
        self._engine = make_engine(s.database_url, pool_size=2)
        self._consumer = GroupConsumer(
            bootstrap=s.kafka_bootstrap, topics=[self.topic], group_id=self.group,
            on_assigned=self._on_assigned, on_revoked=self._on_revoked,
            read_committed=True, max_poll_records=POLL_MAX_RECORDS,
            client_id=f"taskflow-{self.kind}-{self._instance_id()}")
        self._consumer.on_seeked = self._on_seeked
        await self._consumer.start()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        for part in list(self.parts.values()):  # what the last polls folded, if it can
            try:
                await asyncio.wait_for(self._project(part), 5)
            except Exception as exc:
                self.log.warning("final projection of partition %d failed: %r",
                                 part.tp[1], exc)
        if self._consumer is not None:
            await self._consumer.stop()
        await self._close(list(self.parts))
        if self._engine is not None:
            await self._engine.dispose()
        self.log.info("shutdown %r", self)

    async def _close(self, tps: list[TP]) -> None:
        for tp in tps:
            part = self.parts.pop(tp, None)
            if part is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(part.producer.stop(), 5)

    def _on_seeked(self, tps: list[TP]) -> None:
        for tp in tps:
            if tp in self.parts:
                self.parts[tp].ready = True

    async def _on_assigned(self, tps: list[TP]) -> dict[TP, int]:
        assert self._consumer is not None
        consumer = self._consumer
        firsts = await consumer.beginning_offsets(tps)

        async def open_part(tp: TP) -> tuple[TP, int]:
            producer = TransactionalProducer(
                bootstrap=self.settings.kafka_bootstrap,
                transactional_id=f"{self.group}.{tp[0]}.{tp[1]}",
                timeout_s=self.settings.produce_timeout_s)
            await producer.start()  # fences the previous owner, aborting its open txn
            end = (await consumer.end_offsets([tp]))[tp]
            self.parts[tp] = await self._open(tp, producer, end, firsts[tp])
            self.log.info("partition %d: folding from %d to %d before %s", tp[1],
                          firsts[tp], end, self.acting)
            return tp, firsts[tp]

        opened = await asyncio.gather(*(open_part(tp) for tp in tps if tp not in self.parts))
        return dict(opened)

    async def _on_revoked(self, tps: list[TP]) -> None:
        await self._close(tps)

    # ------------------------------------------------------------ main loop
    async def run(self, *, until_idle: bool = False) -> None:
        assert self._consumer is not None
        tick_ms = int(self._tick_s() * 1000)
        idle_since = time.monotonic()
        heartbeat = Heartbeat(self.settings.heartbeat_file)
        while not self._stopping.is_set():
            heartbeat.beat()
            records = await self._consumer.poll(timeout_ms=tick_ms,
                                                max_records=POLL_MAX_RECORDS)
            seen: set[TP] = set()
            for r in records:
                part = self.parts.get((r.topic, r.partition))
                if part is not None and part.ready:
                    self._fold(part, r)
                    seen.add(part.tp)
            busy = False
            for part in list(self.parts.values()):
                if not part.ready:
                    continue
                if part.tp not in seen and not part.recovered:
                    part.position = max(part.position,
                                        await self._consumer.position(part.tp))
                if not part.recovered and part.position >= part.end:
                    part.recovered = True
                    self._on_recovered(part)
                if part.recovered:  # acts first: the projection can wait, a due time not
                    try:
                        await self._act(part)
                    except ProducerFencedOff:
                        self.log.warning("partition %d is owned by another %s", part.tp[1],
                                         self.kind)
                        await self._close([part.tp])
                        continue
                    busy = busy or self._busy(part)
                now = time.monotonic()
                if not part.recovered or now >= part.next_projection:
                    # Actions change their subject's row each time: gathering them into
                    # fewer, larger writes leaves the loop free for the next actions.
                    part.next_projection = now + self.project_every_s
                    await self._project(part)
            if records or busy:
                idle_since = time.monotonic()
            elif until_idle and time.monotonic() - idle_since > IDLE_S and self.parts:
                break

    def _fold(self, part: P, r: Record) -> None:
        if r.offset < part.position:
            return  # redelivered after a seek
        part.position = r.offset + 1
        try:
            ev = decode(r.value)
        except UndecodableEvent as exc:
            self._park(part, r, exc.error)
            return
        self._apply(part, r, ev)

    def _park(self, part: P, r: Record, error: str) -> None:
        self.parked += 1
        self.log.warning("parked %s:%d:%d: %s", r.topic, r.partition, r.offset, error)
        self._to_park.append((part.tp[1], r, error))

    def _parks(self, part: P) -> list[tuple[int, Record, str]]:
        """The records of ``part`` waiting to be parked."""
        return [p for p in self._to_park if p[0] == part.tp[1]]

    async def _write_parks(self, conn: AsyncConnection, part: P) -> None:
        """Park the records of ``part`` waiting for it, in the caller's transaction."""
        for _, r, error in self._parks(part):
            await owned_db.park(conn, projection=self.projection, topic=self.topic,
                                partition=r.partition, offset=r.offset, key=r.key,
                                raw=r.value, error=error)

    def _parked(self, part: P) -> None:
        """The records of ``part`` are parked: forget them."""
        self._to_park = [p for p in self._to_park if p[0] != part.tp[1]]
