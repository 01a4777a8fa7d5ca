"""A lane: everything a worker keeps and writes for one partition.

A lane folds every record of its partition (``worker.running.on_record``) and stages the
events its tasks produce. Its committer writes them through a transactional producer
whose ``transactional_id`` is the partition's, so events and the consumer-group offset
commit in the same Kafka transaction. The offset it commits is the lowest trigger offset
of a task not yet resolved (``Lane.commit_offset``), so a crash never skips a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from events import chain
from events.codec import scrub_nul
from events.fold import TaskState
from events.log import TP, RawMessage, TransactionalProducer
from events.models import CloudEvent, TaskProgress

if TYPE_CHECKING:
    from worker.service import Worker

log = logging.getLogger("taskflow.worker")

PROGRESS_MIN_INTERVAL_S = 0.5  # seconds between two task.progress events of one task


@dataclass
class TaskCtx:
    """The ``TaskContext`` a handler gets: progress goes to its lane, rate-limited."""

    task_id: str
    attempt: int
    lane: Lane
    tid: uuid.UUID
    tenant: str | None
    cancelled: bool = False  # set on cancel; a thread-run handler polls is_cancelled()
    _last: float = 0.0

    def is_cancelled(self) -> bool:
        return self.cancelled

    def progress(self, percent: int, message: str | None = None) -> None:
        percent = max(0, min(100, int(percent)))
        now = time.monotonic()
        if now - self._last >= PROGRESS_MIN_INTERVAL_S:
            self._last = now
            text = scrub_nul(message) if message else message
            self.lane.stage(self.lane.worker.event(
                TaskProgress(percent=percent, message=text), self.tid, self.attempt, self.tenant
            ))


@dataclass
class Lane:
    """Everything a worker does for one partition."""

    worker: Worker
    tp: TP
    producer: TransactionalProducer
    recovery_end: int
    position: int = 0
    states: dict[uuid.UUID, TaskState] = field(default_factory=dict)
    open: dict[uuid.UUID, int] = field(default_factory=dict)  # task -> trigger offset
    base: dict[uuid.UUID, int] = field(default_factory=dict)  # attempt at last redrive
    running: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)
    ctxs: dict[uuid.UUID, TaskCtx] = field(default_factory=dict)
    queued: set[uuid.UUID] = field(default_factory=set)  # running, but waiting for a slot
    keys: dict[uuid.UUID, tuple[str, int]] = field(default_factory=dict)  # concurrency key
    # Called once everything staged before them is committed (a lease goes back then).
    on_commit: list[Callable[[], None]] = field(default_factory=list)
    cancel_reason: dict[uuid.UUID, str] = field(default_factory=dict)
    # Tasks this lane saw end, so a late duplicate task.created (an idempotent submit
    # retried before the first was projected) cannot start a finished task again.
    finished: OrderedDict[uuid.UUID, None] = field(default_factory=OrderedDict)
    outbox: list[CloudEvent] = field(default_factory=list)
    raw: list[RawMessage] = field(default_factory=list)
    resolved: set[uuid.UUID] = field(default_factory=set)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    ready: bool = False  # the consumer has been seeked to ``position``
    committer: asyncio.Task[None] | None = None
    failure: BaseException | None = None
    committed: int = -1  # the group offset this lane last committed
    offset_due: float = 0.0  # monotonic time from which the offset may be committed again
    chain: dict[uuid.UUID, str] = field(default_factory=dict)  # task -> latest chainhash

    @property
    def recovering(self) -> bool:
        return self.position < self.recovery_end

    def stage(self, *events: CloudEvent, resolve: uuid.UUID | None = None) -> None:
        if chain.enabled():
            events = tuple(self._link(e) for e in events)
        self.outbox.extend(events)
        if resolve is not None:
            self.resolved.add(resolve)
        self.dirty.set()

    def _link(self, event: CloudEvent) -> CloudEvent:
        """``event`` on the audit chain, after the latest event of its task seen here."""
        sealed = chain.seal(event, self.chain.get(event.subject, chain.GENESIS))
        self.chain[event.subject] = sealed.chainhash or chain.GENESIS
        return sealed

    def commit_offset(self) -> int:
        """The lowest trigger offset of a task not yet resolved, else the read position.

        ``open`` only ever gains entries from records folded in offset order, so its
        insertion order is offset order and the first unresolved entry is the lowest.
        """
        resolved = self.resolved
        for t, o in self.open.items():
            if t not in resolved:
                return o
        return self.position

    async def flush(self) -> None:
        """One Kafka transaction: the staged events, and the group offset when it is due.

        The offset rides along at most every ``worker_offset_commit_interval_ms`` (and on
        close). It only bounds how far a new owner reads back on recovery, which folds
        every record up to the partition's end before running anything, so a late offset
        costs a longer read, never a task run twice. Leaving it out of most transactions
        saves two of their five requests and a commit marker.
        """
        if self.raw:  # a poison record to park: its topic must exist before the commit
            await self.worker.dead_letter_topic()
        events, raw, resolved = self.outbox, self.raw, self.resolved
        self.outbox, self.raw, self.resolved = [], [], set()
        after, self.on_commit = self.on_commit, []
        for t in resolved:
            self.open.pop(t, None)
        offset = self.commit_offset()
        now = time.monotonic()
        due = offset != self.committed and (self.closed or now >= self.offset_due)
        if not events and not raw and not due:
            for cb in after:
                cb()
            return
        log.debug("partition %d: commit %d events, offset %s, %d open, position %d",
                  self.tp[1], len(events), offset if due else "later", len(self.open),
                  self.position)
        await self.producer.safe_commit(
            topic=self.worker.settings.topic,
            events=events,
            raw=raw,
            offsets={self.tp: offset} if due else {},
            group_id=self.worker.settings.worker_group,
            partition=self.tp[1],
        )
        if due:
            self.committed = offset
            self.offset_due = now + self.worker.settings.worker_offset_commit_interval_ms / 1000
        self.worker.committed_events += len(events)
        for cb in after:
            cb()

    async def run_committer(self) -> None:
        """Commit staged events in batches: one Kafka transaction per round."""
        linger = self.worker.settings.worker_commit_linger_ms / 1000
        try:
            while True:
                if self.dirty.is_set() or self.commit_offset() == self.committed:
                    await self.dirty.wait()
                else:  # only the offset is behind: commit it once it is due
                    wait = self.offset_due - time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.dirty.wait(), max(wait, 0.001))
                if linger and not self.closed and self.dirty.is_set():
                    await asyncio.sleep(linger)  # let a quick task's events share one
                self.dirty.clear()
                await self.flush()
                if self.closed and not self.outbox and not self.raw:
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # fenced, or Kafka gone: this lane cannot write
            self.failure = exc
            log.error("lane %s stopped: %r", self.tp, exc)
            for t in list(self.running.values()):
                t.cancel()
            self.worker.lane_failed(self, exc)
