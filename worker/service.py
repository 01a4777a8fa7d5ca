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
import functools
import importlib
import logging
import time
import uuid
from dataclasses import dataclass, field

from events import chain, constants, pools, runtime
from events.crypto import master_key
from events.db import make_engine
from events.errors import LogUnavailable, ProducerFencedOff
from events.heartbeat import Heartbeat
from events.keystore import Keyring
from events.log import (
    TP,
    GroupConsumer,
    TransactionalProducer,
    dead_letter_topic,
    ensure_topic,
)
from events.models import CloudEvent, EventData, new_event
from events.priority import parse_tenant_weights
from events.settings import Settings
from worker import metrics as wmetrics
from worker import outbound as _outbound  # noqa: F401  (registers http and email)
from worker.concurrency import Leases
from worker.gate import Gate
from worker.handlers import names as handler_names
from worker.lane import Lane
from worker.ratelimit import StartRate
from worker.registry import Registration
from worker.running import on_record, schedule

log = logging.getLogger("taskflow.worker")

REVOKE_GRACE_S = 5.0  # seconds in-flight tasks get to finish when their partition moves
LANE_CLOSE_TIMEOUT_S = 5.0  # seconds a lane's producer gets to close
STALL_CHECK_S = 10.0  # seconds between two checks, while idle, that no partition is stuck
DLT_RETRY_BASE_S = 0.1  # seconds before the first retry to create the dead-letter topic
DLT_RETRY_CAP_S = 5.0  # seconds between two retries, at most


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
    waiting: int = 0  # tasks waiting for their not_before (delayed, retrying): no slot
    types: tuple[str, ...] = ()  # this worker's pool (--types); () is the default pool
    pooled: tuple[str, ...] = ()  # types only dedicated pools run
    missing: set[str] = field(default_factory=set)  # types seen without a handler here
    rates: dict[str, StartRate] = field(default_factory=dict, repr=False)  # per type
    leases: Leases = field(default_factory=lambda: Leases("", ""), repr=False)
    lanes: dict[TP, Lane] = field(default_factory=dict, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    gate: Gate = field(default_factory=lambda: Gate(1), repr=False)  # worker_concurrency
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    room: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # a task ended
    _fatal: BaseException | None = field(default=None, repr=False)
    _dlt_ready: bool = field(default=False, repr=False)  # <topic>.dlt is known to exist
    keyring: Keyring | None = field(default=None, repr=False)  # TASKFLOW_ENCRYPTION_KEY
    registration: Registration | None = field(default=None, repr=False)  # worker_pools row

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = self.settings.worker_id or runtime.instance_id()
        # A pool (``--types``) is its own consumer group: see events/pools.py.
        self.types = pools.type_list(self.settings.worker_types)
        self.pooled = pools.type_list(self.settings.pooled_types)
        if self.types:
            self.settings = self.settings.model_copy(update={
                "worker_group": pools.pool_group(self.settings.worker_group, self.types)})
        self.source = runtime.event_source(self.settings.worker_source,
                                           constants.WORKER_SOURCE_PREFIX, self.worker_id)

    def __repr__(self) -> str:
        return (f"Worker({self.worker_id} ◆ {self.started} started ◆ {self.done} done ◆ "
                f"{self.failed} failed ◆ {self.retries} retries ◆ {self.cancelled} cancelled ◆ "
                f"{self.parked} parked ◆ {self.in_flight} in flight)")

    @property
    def in_flight(self) -> int:
        """Tasks taking or waiting for a slot; not those waiting for their start time,
        which cost only memory (a backlog of delayed tasks must not stop the polling)."""
        return sum(len(lane.running) for lane in self.lanes.values()) - self.waiting

    async def data_key(self, task_id: uuid.UUID) -> bytes | None:
        """The task's data key (events/crypto.py); None once erased or without one."""
        if self.keyring is None:
            return None
        return (await self.keyring.keys([task_id])).get(task_id)

    def share(self) -> float:
        """This worker's part of the pool's work: its partitions over all of them."""
        total = self._consumer.partition_count() if self._consumer is not None else 0
        return len(self.lanes) / total if total else 0.0

    def type_rate(self, limit: float) -> float:
        return limit * self.share()

    def claims(self, type_: str) -> bool:
        """Whether this worker's pool is the one to run tasks of ``type_``. It keeps them
        open even without a handler, so that a worker with one runs them later."""
        return pools.serves(type_, types=self.types, pooled=self.pooled)

    def event(self, data: EventData, task_id: uuid.UUID, attempt: int,
              tenant: str | None) -> CloudEvent:
        return new_event(data, task_id=task_id, source=self.source, attempt=attempt, tenant=tenant)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        chain.configure(s)
        if s.encryption_key:
            self.keyring = Keyring(master_key(s.encryption_key),
                                   make_engine(s.database_url, pool_size=2))
        for name in filter(None, (m.strip() for m in s.handler_modules.split(","))):
            importlib.import_module(name)  # registers the module's @handler functions
        if s.worker_metrics_port:
            wmetrics.serve(s.worker_metrics_port)
        # What this worker serves, for /handlers and waiting_reason (worker/registry.py).
        self.registration = Registration(
            s.database_url, self.worker_id, pools.pool_name(self.types),
            tuple(t for t in handler_names() if self.claims(t)), s.worker_pool_refresh_s)
        self.gate = Gate(s.worker_concurrency, weights=parse_tenant_weights(s.tenant_weights))
        self.leases = Leases(s.database_url, self.source)
        for type_, limit in parse_tenant_weights(s.type_rate_limits).items():
            self.rates[type_] = StartRate(rate=functools.partial(self.type_rate, limit))
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
        # each; with the default thresholds, frequent full collections walking all of them
        # stalled the worker under load.
        runtime.tune_gc(*runtime.BATCH_SERVICE_GC)

    async def _ensure_dead_letter_topic(self) -> None:
        s = self.settings
        if await ensure_topic(s.kafka_bootstrap, dead_letter_topic(s.topic),
                              constants.DEAD_LETTER_PARTITIONS,
                              replication_factor=s.replication_factor,
                              min_insync_replicas=s.min_insync_replicas):
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
        await self.leases.close()
        if self.registration is not None:
            await self.registration.close()
        if self.keyring is not None:
            await self.keyring.engine.dispose()
        log.info("shutdown %r", self)

    async def _drain(self, tps: list[TP], grace_s: float) -> None:
        lanes = [self.lanes[tp] for tp in tps if tp in self.lanes]
        for lane in lanes:  # not started yet: nothing to finish, and no slot to take
            for tid in list(lane.queued):
                lane.cancel_reason[tid] = "abandon"
                task = lane.running.get(tid)
                if task is not None:
                    task.cancel()
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
        # The whole backlog is read, up to worker_queue_max, so that the gate can pick
        # the highest priority (and the fairest tenant) among all of it, not just among
        # what the log happened to put first.
        limit = max(self.settings.worker_concurrency * 8, self.settings.worker_queue_max)
        heartbeat = Heartbeat(self.settings.heartbeat_file)
        while not self._stopping.is_set():
            heartbeat.beat()
            if self.registration is not None:
                self.registration.tick()
            if self.in_flight > limit:
                # Backpressure: stop polling until half the backlog is done. Not
                # ``consumer.pause``: aiokafka drops a paused partition's fetched records
                # and fetches them again on resume, so a busy worker read its log many
                # times over. Unpolled, the fetcher holds one response per partition.
                self.room.clear()
                while self.in_flight > limit // 2 and not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.room.wait(), 0.1)
                    self.room.clear()
                    await self._consumer.keepalive()
                    if self.registration is not None:
                        self.registration.tick()
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
                    on_record(self, lane, r)
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
            schedule(self, lane, tid)
        lane.dirty.set()  # commit the position even if nothing else happens

