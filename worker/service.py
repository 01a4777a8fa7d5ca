"""The worker: runs tasks from the log, with exactly one terminal event per task.

How the guarantees are kept:

* **One lane per assigned partition.** A lane folds every record of its partition with
  ``events.fold.apply`` (the worker's view of each task), runs the tasks that become
  runnable, and writes what happened through a transactional producer whose
  ``transactional_id`` is the partition's. Events and the consumer-group offset commit
  in the same Kafka transaction.
* **Commit up to the lowest unfinished task.** A lane tracks the offset of the event that
  made each open task runnable (``task.created``, ``task.retry_scheduled``,
  ``task.redriven``). It commits ``min(open offsets)`` (or its read position when nothing
  is open), so a crash never skips a task. The offset rides along in a transaction at
  most every ``worker_offset_commit_interval_ms``: it only decides where recovery starts
  reading.
* **Recovery reads ahead before running anything.** After an assignment, the records
  between the committed offset and the partition's end at assignment time may include
  terminal events written by the previous owner for tasks that come after the lowest
  unfinished one. The lane folds all of them first and only then starts what is still
  open, so a finished task never runs again and never gets a second terminal event.
* **Zombies are fenced.** A new owner's producer, with the same transactional id, fences
  the old one, whose next commit fails; it wrote nothing that a ``read_committed``
  reader (every TaskFlow consumer) can see.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from pydantic_core import PydanticSerializationError, to_jsonable_python

from events import constants, jsonsafe, runtime
from events.codec import decode, scrub_nul
from events.errors import LogUnavailable, ProducerFencedOff, UndecodableEvent, UnsafeJson
from events.fold import TaskState, apply
from events.log import (
    TP,
    GroupConsumer,
    RawMessage,
    Record,
    TransactionalProducer,
    dead_letter_topic,
    ensure_topic,
)
from events.models import (
    CloudEvent,
    EventData,
    EventType,
    FailureReason,
    TaskCancelled,
    TaskCreated,
    TaskDeadLettered,
    TaskDone,
    TaskFailed,
    TaskProcessing,
    TaskProgress,
    TaskRetryScheduled,
    new_event,
)
from events.retry import backoff
from events.settings import Settings
from worker import metrics as wmetrics
from worker.handlers import REGISTRY, AsyncHandler, HandlerError

log = logging.getLogger("taskflow.worker")

PROGRESS_MIN_INTERVAL_S = 0.5  # seconds between two task.progress events of one task
REVOKE_GRACE_S = 5.0  # seconds in-flight tasks get to finish when their partition moves
LANE_CLOSE_TIMEOUT_S = 5.0  # seconds a lane's producer gets to close
STALL_CHECK_S = 10.0  # seconds between two checks, while idle, that no partition is stuck
_TRIGGERS = frozenset({EventType.CREATED, EventType.RETRY_SCHEDULED, EventType.REDRIVEN})
FINISHED_MEMORY = 100_000  # finished task ids a lane remembers
DLT_RETRY_BASE_S = 0.1  # seconds before the first retry to create the dead-letter topic
DLT_RETRY_CAP_S = 5.0  # seconds between two retries, at most


def storable(result: Any, *, max_depth: int = constants.MAX_JSON_DEPTH,
             max_keys: int = constants.MAX_JSON_KEYS) -> Any:
    """``result`` as the JSON value ``task.done`` will carry, or ValueError if it has none.

    Checked before anything is staged: a result that cannot be encoded would otherwise
    fail the lane's whole transaction, and one the read model cannot hold exactly (the
    values the API refuses in a payload, ``events.jsonsafe``) would be refused or changed
    by it. Python values JSON lacks (a tuple, a datetime) are converted as pydantic does;
    NaN and the infinities are kept as they are, so that the check refuses them rather
    than pydantic writing ``null`` for them.
    """
    if result is None or type(result) is bool or (
            type(result) is int and jsonsafe.INT_MIN <= result <= jsonsafe.INT_MAX):
        return result  # the common cases, JSON as they are
    try:
        value = to_jsonable_python(result, inf_nan_mode="constants")
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise ValueError(f"the result cannot be stored as JSON: {exc}") from None
    try:
        jsonsafe.check(value, max_depth=max_depth, max_keys=max_keys)
    except UnsafeJson as exc:
        raise ValueError(f"the result cannot be stored exactly: {exc}") from None
    return value


class _Abandoned(Exception):
    """The task is left for another worker (shutdown or revoked partition)."""


@dataclass
class _Ctx:
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
    ctxs: dict[uuid.UUID, _Ctx] = field(default_factory=dict)
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

    @property
    def recovering(self) -> bool:
        return self.position < self.recovery_end

    def stage(self, *events: CloudEvent, resolve: uuid.UUID | None = None) -> None:
        self.outbox.extend(events)
        if resolve is not None:
            self.resolved.add(resolve)
        self.dirty.set()

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
        for t in resolved:
            self.open.pop(t, None)
        offset = self.commit_offset()
        now = time.monotonic()
        due = offset != self.committed and (self.closed or now >= self.offset_due)
        if not events and not raw and not due:
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


@dataclass
class Worker:
    """Consumes the task log as one member of ``settings.worker_group`` and runs tasks.

    :param settings: process settings (topic, group, concurrency, timeouts, retries).
    :param worker_id: appears in ``source`` and ``task.processing``; default host-pid.
    """

    settings: Settings
    worker_id: str = ""
    started: int = 0
    done: int = 0
    failed: int = 0
    retries: int = 0
    cancelled: int = 0
    parked: int = 0
    committed_events: int = 0
    redelivered: int = 0
    duplicates: int = 0
    lanes: dict[TP, Lane] = field(default_factory=dict, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    _sem: asyncio.Semaphore | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _room: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # a task ended
    _fatal: BaseException | None = field(default=None, repr=False)
    _dlt_ready: bool = field(default=False, repr=False)  # <topic>.dlt is known to exist

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = self.settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.source = constants.WORKER_SOURCE_PREFIX + self.worker_id

    def __repr__(self) -> str:
        return (f"Worker({self.worker_id} ◆ {self.started} started ◆ {self.done} done ◆ "
                f"{self.failed} failed ◆ {self.retries} retries ◆ {self.cancelled} cancelled ◆ "
                f"{self.parked} parked ◆ {self.in_flight} in flight)")

    @property
    def in_flight(self) -> int:
        return sum(len(lane.running) for lane in self.lanes.values())

    def event(self, data: EventData, task_id: uuid.UUID, attempt: int,
              tenant: str | None) -> CloudEvent:
        return new_event(data, task_id=task_id, source=self.source, attempt=attempt, tenant=tenant)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        for name in filter(None, (m.strip() for m in s.handler_modules.split(","))):
            importlib.import_module(name)  # registers the module's @handler functions
        if s.worker_metrics_port:
            wmetrics.serve(s.worker_metrics_port)
        self._sem = asyncio.Semaphore(s.worker_concurrency)
        self._consumer = GroupConsumer(
            bootstrap=s.kafka_bootstrap,
            topics=[s.topic],
            group_id=s.worker_group,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
            read_committed=True,
            max_poll_records=500,
            client_id=f"taskflow-worker-{self.worker_id}",
        )
        self._consumer.on_seeked = self._on_seeked
        await self._consumer.start()
        try:  # not fatal: a lane makes sure of it again before it parks anything
            await self._ensure_dead_letter_topic()
        except Exception as exc:
            log.warning("cannot create the dead-letter topic yet: %r", exc)
        # Lanes keep every open task and the ids of up to FINISHED_MEMORY finished ones
        # each; with the default thresholds, full collections walking all of them stalled
        # the worker for about 100 ms every second under load.
        runtime.tune_gc(*runtime.BATCH_SERVICE_GC)

    async def _ensure_dead_letter_topic(self) -> None:
        s = self.settings
        if await ensure_topic(s.kafka_bootstrap, dead_letter_topic(s.topic),
                              constants.DEAD_LETTER_PARTITIONS):
            log.info("created the dead-letter topic %s", dead_letter_topic(s.topic))
        self._dlt_ready = True

    async def dead_letter_topic(self) -> None:
        """Return once ``<topic>.dlt`` exists, creating it if needed, with backoff.

        A producer sending to a missing topic fails its whole transaction, and with it the
        lane: a deployment whose dead-letter topic was never made would stop at its first
        poison record. So the lane waits here instead, before it takes anything staged.
        """
        attempt = 0
        while not self._dlt_ready:
            try:
                await self._ensure_dead_letter_topic()
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                attempt += 1
                if attempt == 1:
                    log.warning("cannot create the dead-letter topic, retrying: %r", exc)
                await asyncio.sleep(min(DLT_RETRY_CAP_S, DLT_RETRY_BASE_S * 2 ** min(attempt, 8)))

    def _on_seeked(self, tps: list[TP]) -> None:
        for tp in tps:
            if tp in self.lanes:
                self.lanes[tp].ready = True

    def request_stop(self) -> None:
        self._stopping.set()

    def lane_failed(self, lane: Lane, exc: BaseException) -> None:
        """A lane could not write (Kafka away or stalled, a transaction timed out, ...).

        Its producer is unusable and what it staged is lost, so the whole worker stops
        and ``run`` raises: the caller (``cli.services.serve``) builds a fresh worker,
        whose lanes reopen their producers (aborting any open transaction) and resume
        from the group's committed offsets, so nothing is run twice to a second terminal
        event. A fenced lane needs none of that: another worker owns the partition now,
        and the rebalance will revoke it here.
        """
        if isinstance(exc, ProducerFencedOff):
            return
        if self._fatal is None:
            self._fatal = exc
        self._stopping.set()

    async def stop(self) -> None:
        """Graceful: let in-flight tasks finish within the grace period, commit, leave.

        After a failure there is nothing to wait for: the lanes cannot commit what their
        tasks would stage, and the tasks run again in the worker that replaces this one.
        """
        self._stopping.set()
        grace = 0 if self._fatal is not None else self.settings.shutdown_grace_s
        await self._drain(list(self.lanes), grace)
        if self._consumer is not None:
            await self._consumer.stop()
        # A rebalance that was under way may have opened lanes after the drain above.
        await self._drain(list(self.lanes), 0)
        log.info("shutdown %r", self)

    async def _drain(self, tps: list[TP], grace_s: float) -> None:
        lanes = [self.lanes[tp] for tp in tps if tp in self.lanes]
        running = [t for lane in lanes for t in lane.running.values()]
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for lane in lanes:
                for tid, task in lane.running.items():
                    if task in pending:
                        lane.cancel_reason[tid] = "abandon"
                        task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for lane in lanes:
            lane.closed = True
            lane.dirty.set()
            if lane.committer is not None and lane.failure is None:
                try:
                    await asyncio.wait_for(lane.committer, 15)
                except (TimeoutError, ProducerFencedOff, Exception) as exc:
                    log.warning("final commit of %s failed: %r", lane.tp, exc)
            try:  # a producer whose broker is away may not close in time
                await asyncio.wait_for(lane.producer.stop(), LANE_CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("closing the producer of %s failed: %r", lane.tp, exc)
            self.lanes.pop(lane.tp, None)

    async def _on_assigned(self, tps: list[TP]) -> dict[TP, int]:
        """Create a lane per new partition and seek it to the group's committed offset.

        The committed offset is read explicitly (not through the consumer's position,
        which is not settled inside a rebalance callback), so recovery starts exactly
        where the previous owner's last transaction left it.
        """
        assert self._consumer is not None
        consumer = self._consumer
        firsts = await consumer.beginning_offsets(tps)

        async def open_lane(tp: TP) -> tuple[TP, int]:
            producer = TransactionalProducer(
                bootstrap=self.settings.kafka_bootstrap,
                transactional_id=f"{self.settings.worker_group}.{tp[0]}.{tp[1]}",
                timeout_s=self.settings.produce_timeout_s,
            )
            await producer.start()  # init_transactions fences any previous owner
            committed = await consumer.committed(tp)
            position = committed if committed is not None else firsts[tp]
            # Read the end only now: the fencing above aborted the previous owner's open
            # transaction, so the last stable offset is no longer held back by it.
            end = (await consumer.end_offsets([tp]))[tp]
            lane = Lane(worker=self, tp=tp, producer=producer, recovery_end=end,
                        position=position, committed=position)
            lane.committer = asyncio.create_task(lane.run_committer())
            self.lanes[tp] = lane
            log.info("partition %d: resuming at %d, recovery reads to %d", tp[1], position, end)
            return tp, position

        # Partitions open side by side: each init_transactions is a few broker round trips.
        try:
            opened = await asyncio.gather(*(open_lane(tp) for tp in tps if tp not in self.lanes))
        except Exception as exc:  # Kafka away mid-rebalance: the consumer would carry on
            # with partitions that have no lane, so this worker is replaced instead.
            log.warning("cannot open lanes for %s: %r", sorted(p for _, p in tps), exc)
            if self._fatal is None:
                self._fatal = exc
            self._stopping.set()
            return {}
        seeks = dict(opened)
        log.info("assigned %s", sorted(p for _, p in tps))
        return seeks

    async def _on_revoked(self, tps: list[TP]) -> None:
        await self._drain(tps, REVOKE_GRACE_S)

    # ------------------------------------------------------------ main loop
    async def run(self, *, until_idle: bool = False, idle_ms: int = 2000) -> None:
        """Consume and run tasks until stopped (or, with ``until_idle``, until nothing is left)."""
        assert self._consumer is not None
        idle_since = time.monotonic()
        next_stall_check = time.monotonic() + STALL_CHECK_S
        limit = self.settings.worker_concurrency * 8
        while not self._stopping.is_set():
            if self.in_flight > limit:
                # Backpressure: stop polling until half the backlog is done. Not
                # ``consumer.pause``: aiokafka drops a paused partition's fetched records
                # and fetches them again on resume, so a busy worker read its log about
                # ten times over. Unpolled, the fetcher holds one response per partition.
                self._room.clear()
                while self.in_flight > limit // 2 and not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 0.1)
                    self._room.clear()
                    await self._consumer.keepalive()
                continue
            records = await self._consumer.poll(timeout_ms=100, max_records=500)
            if records:
                next_stall_check = time.monotonic() + STALL_CHECK_S
            elif time.monotonic() >= next_stall_check:
                next_stall_check = time.monotonic() + STALL_CHECK_S
                stuck = await self._consumer.stalled(self.settings.produce_timeout_s)
                if stuck:  # rebuilt by the caller, resuming from the committed offsets
                    self._fatal = LogUnavailable(
                        f"the consumer stopped fetching partitions {[p for _, p in stuck]}")
                    break
            for r in records:
                lane = self.lanes.get((r.topic, r.partition))
                # A lane exists before its seek is in place (the rebalance callback
                # awaits between creating it and returning the seeks), and meanwhile the
                # consumer may hand over records from its own fetch position. Folding
                # those would move the lane past records it never saw; after the seek
                # they arrive again, from the lane's position.
                if lane is not None and lane.ready and lane.failure is None:
                    self._on_record(lane, r)
            for lane in list(self.lanes.values()):
                if not lane.ready:  # still inside the rebalance callback
                    continue
                if lane.recovering and not records:
                    lane.position = max(lane.position, await self._consumer.position(lane.tp))
                if not lane.recovering and lane.recovery_end >= 0:
                    self._finish_recovery(lane)
            if records or self.in_flight:
                idle_since = time.monotonic()
            elif until_idle and (time.monotonic() - idle_since) * 1000 > idle_ms and self.lanes:
                break
        if self._fatal is not None:
            raise self._fatal

    def _finish_recovery(self, lane: Lane) -> None:
        log.info("partition %d recovered at offset %d: %d open task(s)", lane.tp[1],
                 lane.position, len(lane.open))
        lane.recovery_end = -1  # marks recovery as done
        for tid in list(lane.open):
            self._schedule(lane, tid)
        lane.dirty.set()  # commit the position even if nothing else happens

    def _park(self, lane: Lane, r: Record, error: str) -> None:
        """Send ``r`` to the dead-letter topic with its coordinates and ``error``.

        The value is cut to ``DLT_VALUE_MAX`` bytes: a record near the broker's size limit
        plus these headers would not fit, and the lane would fail on it again and again.
        The whole record stays in the log at the coordinates the headers give.
        """
        self.parked += 1
        value = r.value
        headers = [
            (constants.HEADER_DLT_TOPIC, r.topic.encode()),
            (constants.HEADER_DLT_PARTITION, str(r.partition).encode()),
            (constants.HEADER_DLT_OFFSET, str(r.offset).encode()),
            (constants.HEADER_DLT_ERROR, scrub_nul(error).encode("utf-8", "replace")[:4000]),
        ]
        if value is not None and len(value) > constants.DLT_VALUE_MAX:
            headers.append((constants.HEADER_DLT_TRUNCATED, str(len(value)).encode()))
            value = value[:constants.DLT_VALUE_MAX]
        lane.raw.append(RawMessage(topic=dead_letter_topic(self.settings.topic), key=r.key,
                                   value=value, headers=tuple(headers)))
        lane.dirty.set()

    def _on_record(self, lane: Lane, r: Record) -> None:
        if r.offset < lane.position:
            # Redelivery (a seek during a rebalance can re-fetch records the lane has
            # already folded): folding a task.created again would re-open a finished task.
            self.redelivered += 1
            return
        lane.position = r.offset + 1
        try:
            ev = decode(r.value)
        except UndecodableEvent as exc:
            self._park(lane, r, exc.error)
            return
        if ev.type is EventType.CREATED:
            # A task.created that did not come through the API's edge (another producer,
            # an older release) may hold a value the read model cannot store exactly; the
            # projector parks it too, so running it would finish a task nobody can see.
            # Only the values are checked, not the API's size limits, which the projector
            # does not enforce either.
            data = cast(TaskCreated, ev.data)
            try:
                jsonsafe.check(data.title, loc=["title"])
                jsonsafe.check(data.payload, max_depth=jsonsafe.DEPTH_CARRIED,
                               max_keys=sys.maxsize, loc=["payload"])
            except UnsafeJson as exc:
                self._park(lane, r, f"task.created holds a value TaskFlow cannot carry "
                                    f"exactly: {exc}")
                return
        tid = ev.subject
        if ev.type is EventType.CREATED and tid in lane.finished:
            self.duplicates += 1  # the fold ignores it too: the first task.created wins
            return
        state = apply(lane.states.get(tid), ev)
        lane.states[tid] = state
        if ev.type is EventType.REDRIVEN:
            lane.base[tid] = state.attempt
        if ev.type in _TRIGGERS and not state.terminal:
            # Keep the earliest trigger of an unfinished task: committing past its
            # task.created would lose the definition a restarted worker needs.
            lane.open.setdefault(tid, r.offset)
        if state.terminal:
            lane.open.pop(tid, None)
            task = lane.running.get(tid)
            if task is not None and tid not in lane.cancel_reason:
                lane.cancel_reason[tid] = "superseded"
                task.cancel()
            if tid not in lane.running:
                lane.states.pop(tid, None)  # nothing more to do for it
                lane.base.pop(tid, None)
                lane.finished[tid] = None
                if len(lane.finished) > FINISHED_MEMORY:
                    lane.finished.popitem(last=False)
        if ev.type is EventType.CANCEL_REQUESTED:
            task = lane.running.get(tid)
            if task is not None:
                lane.cancel_reason[tid] = "cancel"
                ctx = lane.ctxs.get(tid)
                if ctx is not None:
                    ctx.cancelled = True  # the signal a thread-run handler can check
                task.cancel()  # an async handler stops at its next await
            elif tid in lane.open and tid not in lane.resolved and not lane.recovering:
                self._cancel_now(lane, tid, state)
        elif ev.type in _TRIGGERS and not lane.recovering:
            self._schedule(lane, tid)
        if not lane.recovering and not lane.dirty.is_set() and not lane.open:
            lane.dirty.set()  # move the committed offset along on quiet partitions

    def _cancel_now(self, lane: Lane, tid: uuid.UUID, state: TaskState) -> None:
        self.cancelled += 1
        lane.stage(self.event(TaskCancelled(reason="cancel requested"), tid, state.attempt,
                              state.tenant), resolve=tid)

    def _schedule(self, lane: Lane, tid: uuid.UUID) -> None:
        state = lane.states.get(tid)
        if (state is None or state.terminal or tid in lane.running or tid in lane.resolved
                or tid not in lane.open):
            return
        if state.cancel_requested:
            self._cancel_now(lane, tid, state)
            return
        lane.running[tid] = asyncio.create_task(self._run_task(lane, tid, state))

    # ------------------------------------------------------------ one task
    async def _run_task(self, lane: Lane, tid: uuid.UUID, state: TaskState) -> None:
        assert self._sem is not None
        attempt = state.attempt + 1
        try:
            if state.not_before is not None:
                # The loop's monotonic timer may fire a hair early against the wall
                # clock the event time uses, so wait until the wall clock agrees.
                for _ in range(10):
                    delay = (state.not_before - datetime.now(UTC)).total_seconds()
                    if delay <= 0:
                        break
                    await asyncio.sleep(delay + 0.001)
            async with self._sem:
                await self._attempt(lane, tid, state, attempt)
        except asyncio.CancelledError:
            reason = lane.cancel_reason.get(tid)
            if reason == "cancel":
                self.cancelled += 1
                lane.stage(self.event(TaskCancelled(reason="cancel requested"), tid, attempt,
                                      state.tenant), resolve=tid)
            elif reason is None:
                raise
        finally:
            lane.running.pop(tid, None)
            lane.cancel_reason.pop(tid, None)
            self._room.set()  # the main loop may be waiting for room to resume

    async def _attempt(self, lane: Lane, tid: uuid.UUID, state: TaskState, attempt: int) -> None:
        s = self.settings
        self.started += 1
        lane.stage(self.event(TaskProcessing(worker_id=self.worker_id), tid, attempt, state.tenant))
        fn = REGISTRY.get(state.type)
        timeout = state.timeout_s or s.default_timeout_s
        ctx = _Ctx(task_id=str(tid), attempt=attempt, lane=lane, tid=tid, tenant=state.tenant)
        lane.ctxs[tid] = ctx
        wmetrics.IN_FLIGHT.inc()
        t0 = time.monotonic()
        try:
            await self._run_handler(lane, tid, state, attempt, ctx, fn, timeout)
        finally:
            lane.ctxs.pop(tid, None)
            wmetrics.IN_FLIGHT.dec()
            wmetrics.DURATION.labels(state.type).observe(time.monotonic() - t0)

    async def _run_handler(self, lane: Lane, tid: uuid.UUID, state: TaskState, attempt: int,
                           ctx: _Ctx, fn: AsyncHandler | None, timeout: float) -> None:
        s = self.settings
        error: str | None = None
        reason: FailureReason = "error"
        retryable = True
        if fn is None:
            error, retryable = f"no handler registered for type {state.type!r}", False
        else:
            try:
                async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
                    result = await fn(dict(state.payload), ctx)
            except TimeoutError:
                error, reason = f"timed out after {timeout:g}s", "timeout"
            except asyncio.CancelledError:
                raise
            except HandlerError as exc:  # the handler says retrying cannot help
                error, retryable = str(exc), False
            except Exception as exc:  # anything else may be transient: retry it
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                try:
                    result = storable(result, max_depth=s.max_json_depth,
                                      max_keys=s.max_json_keys)
                except ValueError as exc:  # the same result would fail every attempt
                    error, retryable = str(exc), False
            if error is None:
                self.done += 1
                wmetrics.FINISHED.labels(state.type, "DONE").inc()
                lane.stage(self.event(TaskDone(result=result), tid, attempt, state.tenant),
                           resolve=tid)
                return
        assert error is not None
        error = scrub_nul(error)  # exception texts may quote the payload's bytes
        max_attempts = state.max_attempts or s.default_max_attempts
        used = attempt - lane.base.get(tid, 0)
        if retryable and used < max_attempts:
            delay = backoff(used, base_s=s.retry_base_s, cap_s=s.retry_cap_s)
            self.retries += 1
            wmetrics.FINISHED.labels(state.type, "RETRYING").inc()
            not_before = datetime.now(UTC) + timedelta(seconds=delay)
            lane.stage(self.event(
                TaskRetryScheduled(error=error, reason=reason,
                                   not_before=not_before, delay_s=round(delay, 3)),
                tid, attempt, state.tenant))  # still open: the retry is read back and run
            return
        self.failed += 1
        wmetrics.FINISHED.labels(state.type, "FAILED").inc()
        lane.stage(
            self.event(TaskFailed(error=error, reason=reason), tid, attempt,
                       state.tenant),
            self.event(TaskDeadLettered(error=error), tid, attempt, state.tenant),
            resolve=tid,
        )
