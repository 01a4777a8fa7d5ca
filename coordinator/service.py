"""The coordinator: runs workflows, starting each node exactly once.

How the guarantees are kept (the scheduler's recipe, see ``scheduler/service.py``):

* **One owner per workflow partition.** Coordinators are one consumer group on the
  workflow topic; each owns some of its partitions. For each it opens a transactional
  producer whose ``transactional_id`` is the partition's, which fences any previous owner.
* **The log says what was started.** A node's ``task.created`` (task topic) and its
  ``workflow.node_started`` (workflow topic, the workflow's key) are written in one Kafka
  transaction. A new owner reads its partitions from the start (``read_committed``) up to
  the end it saw once the fencing had aborted any open transaction, and only then acts:
  it knows every start that committed, and none that did not. So a node has one
  ``task.created`` however often coordinators crash or partitions move.
* **Same node, same task id** (``events.workflows.node_task_id``: workflow id, node key,
  retry round).
* **Finished nodes.** Each tick the owner looks up its started nodes' tasks in the
  ``tasks`` read model; a finished one becomes a ``workflow.node_finished`` (with the
  result) on the workflow topic, and the decisions that follow are made once it is read
  back, from the fold of the log alone. A repeated ``node_finished`` changes nothing.

The coordinator also writes the ``workflows`` projection of the partitions it owns: the
fold of their events, with a checkpoint, in one Postgres transaction at most every
``PROJECT_EVERY_S`` per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from events import chain, chain_db, constants, workflow_db
from events.codec import decode, encode
from events.db import make_engine
from events.errors import ProducerFencedOff, UndecodableEvent
from events.heartbeat import Heartbeat
from events.log import (
    TP,
    GroupConsumer,
    RawMessage,
    Record,
    TransactionalProducer,
    ensure_topic,
    task_key,
)
from events.models import (
    CloudEvent,
    EventData,
    EventType,
    NodeOutcome,
    TaskCancelRequested,
    TaskCreated,
    WorkflowFinished,
    WorkflowNodeFinished,
    WorkflowNodeStarted,
    new_event,
)
from events.settings import Settings
from events.workflows import (
    NODE_EVENT_MAX,
    PARENTS_TOO_LARGE,
    WorkflowState,
    apply_workflow,
    plan,
    workflow_topic,
)

log = logging.getLogger("taskflow.coordinator")

PROJECT_EVERY_S = 0.2  # seconds between two projection writes of a partition, at least


def coordinator_group(settings: Settings) -> str:
    """The coordinator's consumer group: set, or derived from the topic."""
    if settings.coordinator_group:
        return settings.coordinator_group
    return "taskflow.coordinator" if settings.topic == constants.TOPIC else \
        f"{settings.topic}.coordinator"


@dataclass
class Pending:
    """What was written for one workflow and committed, but not read back yet: left alone
    until the fold has it. Forgotten once the workflow has nothing left to do."""

    issued: set[tuple[str, int]] = field(default_factory=set)  # started or skipped
    reported: set[tuple[str, int]] = field(default_factory=set)  # node_finished written
    cancels: set[uuid.UUID] = field(default_factory=set)  # task.cancel_requested written
    finished: set[int] = field(default_factory=set)  # rounds a workflow.finished was for


@dataclass
class Part:
    """What a coordinator keeps for one workflow partition."""

    tp: TP
    producer: TransactionalProducer
    end: int  # recovery: act on nothing before the fold has read this far
    position: int = 0
    ready: bool = False
    recovered: bool = False
    states: dict[uuid.UUID, WorkflowState] = field(default_factory=dict)
    active: set[uuid.UUID] = field(default_factory=set)  # workflows with work left
    pending: dict[uuid.UUID, Pending] = field(default_factory=dict)
    dirty: dict[uuid.UUID, int] = field(default_factory=dict)  # workflow -> last offset
    next_projection: float = 0.0


@dataclass
class Coordinator:
    """Runs the workflows of the partitions it owns in the coordinator group.

    :param settings: process settings (topics, group, tick).
    :param coordinator_id: appears in ``source``; default host-pid.
    """

    settings: Settings
    coordinator_id: str = ""
    started: int = 0
    skipped: int = 0
    finished: int = 0
    parked: int = 0
    parts: dict[TP, Part] = field(default_factory=dict, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    _engine: AsyncEngine | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _to_park: list[tuple[int, Record, str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.coordinator_id:
            self.coordinator_id = f"{socket.gethostname()}-{os.getpid()}"
        self.source = constants.COORDINATOR_SOURCE_PREFIX + self.coordinator_id
        self.topic = workflow_topic(self.settings.topic)
        self.group = coordinator_group(self.settings)

    def __repr__(self) -> str:
        return (f"Coordinator({self.coordinator_id} ◆ {self.started} nodes started ◆ "
                f"{self.skipped} skipped ◆ {self.finished} workflows finished ◆ "
                f"{self.parked} parked ◆ {len(self.parts)} partitions)")

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
            read_committed=True, max_poll_records=5000,
            client_id=f"taskflow-coordinator-{self.coordinator_id}")
        self._consumer.on_seeked = self._on_seeked
        await self._consumer.start()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        for part in list(self.parts.values()):
            try:
                await asyncio.wait_for(self._project(part), 5)
            except Exception as exc:
                log.warning("final projection of partition %d failed: %r", part.tp[1], exc)
        if self._consumer is not None:
            await self._consumer.stop()
        await self._close(list(self.parts))
        if self._engine is not None:
            await self._engine.dispose()
        log.info("shutdown %r", self)

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
            self.parts[tp] = Part(tp=tp, producer=producer, end=end, position=firsts[tp])
            log.info("partition %d: folding from %d to %d before acting", tp[1],
                     firsts[tp], end)
            return tp, firsts[tp]

        opened = await asyncio.gather(*(open_part(tp) for tp in tps if tp not in self.parts))
        return dict(opened)

    async def _on_revoked(self, tps: list[TP]) -> None:
        await self._close(tps)

    # ------------------------------------------------------------ main loop
    async def run(self, *, until_idle: bool = False) -> None:
        assert self._consumer is not None
        tick_ms = int(self.settings.coordinator_tick_s * 1000)
        idle_since = time.monotonic()
        heartbeat = Heartbeat(self.settings.heartbeat_file)
        while not self._stopping.is_set():
            heartbeat.beat()
            records = await self._consumer.poll(timeout_ms=tick_ms, max_records=5000)
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
                    log.info("partition %d recovered: %d workflow(s), %d active",
                             part.tp[1], len(part.states), len(part.active))
                if part.recovered:
                    try:
                        await self._act(part)
                    except ProducerFencedOff:
                        log.warning("partition %d is owned by another coordinator",
                                    part.tp[1])
                        await self._close([part.tp])
                        continue
                    busy = busy or bool(part.active)
                now = time.monotonic()
                if not part.recovered or now >= part.next_projection:
                    part.next_projection = now + PROJECT_EVERY_S
                    await self._project(part)
            if records or busy:
                idle_since = time.monotonic()
            elif until_idle and time.monotonic() - idle_since > 2 and self.parts:
                break

    def _fold(self, part: Part, r: Record) -> None:
        if r.offset < part.position:
            return  # redelivered after a seek
        part.position = r.offset + 1
        try:
            ev = decode(r.value)
        except UndecodableEvent as exc:
            self._park(part, r, exc.error)
            return
        old = part.states.get(ev.subject)
        try:
            new = apply_workflow(old, ev)
        except Exception as exc:  # a record this fold cannot take: park, never stop
            self._park(part, r, f"fold: {exc!r}")
            return
        if new is None or new is old:
            return
        part.states[ev.subject] = new
        part.dirty[ev.subject] = r.offset
        if new.status == "RUNNING" or new.finished_round != new.round:
            part.active.add(ev.subject)
        else:
            part.active.discard(ev.subject)
            part.pending.pop(ev.subject, None)

    def _park(self, part: Part, r: Record, error: str) -> None:
        self.parked += 1
        log.warning("parked %s:%d:%d: %s", r.topic, r.partition, r.offset, error)
        self._to_park.append((part.tp[1], r, error))

    async def _project(self, part: Part) -> None:
        """Write the changed workflows of ``part`` and its checkpoint in one transaction."""
        if not part.dirty and not any(p[0] == part.tp[1] for p in self._to_park):
            return
        assert self._engine is not None
        rows = [workflow_db.row(part.states[wid], part.tp[1], off)
                for wid, off in part.dirty.items() if wid in part.states]
        parks = [p for p in self._to_park if p[0] == part.tp[1]]
        async with self._engine.begin() as conn:
            for _, r, error in parks:
                await workflow_db.park(conn, topic=self.topic, partition=r.partition,
                                       offset=r.offset, key=r.key, raw=r.value, error=error)
            await workflow_db.write(conn, topic=self.topic, partition=part.tp[1],
                                    offset=part.position - 1, rows=rows)
        part.dirty.clear()
        self._to_park = [p for p in self._to_park if p[0] != part.tp[1]]

    async def _act(self, part: Part) -> None:
        """Report finished nodes, start, skip and cancel nodes, and finish workflows of
        the partition, in one Kafka transaction."""
        if not part.active:
            return
        assert self._engine is not None
        tasks: list[CloudEvent] = []
        marks: list[CloudEvent] = []
        issued: list[tuple[uuid.UUID, str, int]] = []
        reported: list[tuple[uuid.UUID, str, int]] = []
        cancels: list[tuple[uuid.UUID, uuid.UUID]] = []
        finishes: list[tuple[uuid.UUID, int]] = []
        none = Pending()
        # Nodes whose task may have ended: their task, by id.
        watch: dict[uuid.UUID, tuple[WorkflowState, str, int]] = {}
        for wid in part.active:
            st = part.states[wid]
            seen = part.pending.get(wid, none).reported
            for key, node in st.nodes.items():
                if node.status == "STARTED" and (key, node.round) not in seen:
                    watch[node.task_id] = (st, key, node.round)
        ended = await workflow_db.finished_tasks(self._engine, watch)
        for tid, (status, result, error) in ended.items():
            st, key, rnd = watch[tid]
            marks.append(self._mark(st, WorkflowNodeFinished(
                key=key, round=rnd, task_id=tid, status=cast(NodeOutcome, status),
                result=result if status == "DONE" else None, error=error)))
            reported.append((st.workflow_id, key, rnd))
        for wid in part.active:
            st = part.states[wid]
            pend = part.pending.get(wid, none)
            p = plan(st, pend.issued)
            for spec, tid, rnd, payload in p.start:
                created = new_event(
                    TaskCreated(title=spec.title, type=spec.type, payload=payload,
                                priority=spec.priority, max_attempts=spec.max_attempts,
                                timeout_s=spec.timeout_s),
                    task_id=tid, source=self.source, tenant=st.tenant)
                size = len(encode(created))
                if size > NODE_EVENT_MAX:
                    marks.append(self._mark(st, WorkflowNodeFinished(
                        key=spec.key, round=rnd, status="FAILED", reason=PARENTS_TOO_LARGE,
                        error=f"the task with its parents' results is {size} bytes, over "
                              f"{NODE_EVENT_MAX}")))
                    issued.append((wid, spec.key, rnd))
                    continue
                tasks.append(created)
                marks.append(self._mark(st, WorkflowNodeStarted(key=spec.key, round=rnd,
                                                                task_id=tid)))
                issued.append((wid, spec.key, rnd))
            for key, rnd, reason in p.skip:
                marks.append(self._mark(st, WorkflowNodeFinished(
                    key=key, round=rnd, status="CANCELLED", reason=reason)))
                issued.append((wid, key, rnd))
            for tid in p.cancel:
                if tid not in pend.cancels:
                    tasks.append(new_event(TaskCancelRequested(reason="workflow cancelled"),
                                           task_id=tid, source=self.source,
                                           tenant=st.tenant))
                    cancels.append((wid, tid))
            if p.finish and st.round not in pend.finished:
                marks.append(self._mark(st, WorkflowFinished(
                    round=st.round, status=cast(NodeOutcome, st.status),
                    nodes={k: st.nodes[k].status for k in st.order})))
                finishes.append((wid, st.round))
        if not tasks and not marks:
            return
        raw = [RawMessage(topic=self.topic, key=task_key(ev.subject), value=encode(ev))
               for ev in marks]
        if chain.enabled():  # a started node opens its chain; a cancel extends the task's
            heads = await chain_db.heads(self._engine, [ev.subject for ev in tasks
                                                        if ev.type is not EventType.CREATED])
            tasks = [chain.seal(ev, heads.get(ev.subject, chain.GENESIS)) for ev in tasks]
        await part.producer.safe_commit(topic=self.settings.topic, events=tasks, offsets={},
                                        group_id=self.group, raw=raw)

        def pending(wid: uuid.UUID) -> Pending:
            return part.pending.setdefault(wid, Pending())

        for wid, key, rnd in issued:
            pending(wid).issued.add((key, rnd))
        for wid, key, rnd in reported:
            pending(wid).reported.add((key, rnd))
        for wid, tid in cancels:
            pending(wid).cancels.add(tid)
        for wid, rnd in finishes:
            pending(wid).finished.add(rnd)
        n_started = sum(1 for ev in marks if isinstance(ev.data, WorkflowNodeStarted))
        self.started += n_started
        self.skipped += len(issued) - n_started
        self.finished += len(finishes)

    def _mark(self, st: WorkflowState, data: EventData) -> CloudEvent:
        return new_event(data, task_id=st.workflow_id, source=self.source, tenant=st.tenant)
