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

import logging
import uuid
from dataclasses import dataclass, field
from typing import cast

from events import chain, chain_db, constants, runtime, workflow_db
from events.codec import encode
from events.log import (
    TP,
    RawMessage,
    Record,
    TransactionalProducer,
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
from events.partitioned import Partition, PartitionedService
from events.settings import Settings
from events.workflows import (
    NODE_EVENT_MAX,
    PARENTS_TOO_LARGE,
    WORKFLOW_PROJECTION,
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
class Part(Partition):
    """What a coordinator keeps for one workflow partition."""

    states: dict[uuid.UUID, WorkflowState] = field(default_factory=dict)
    active: set[uuid.UUID] = field(default_factory=set)  # workflows with work left
    pending: dict[uuid.UUID, Pending] = field(default_factory=dict)


@dataclass(repr=False)
class Coordinator(PartitionedService[Part]):
    """Runs the workflows of the partitions it owns in the coordinator group.

    :param settings: process settings (topics, group, tick).
    :param coordinator_id: appears in ``source``; default host-pid.
    """

    kind = "coordinator"
    log = log
    acting = "acting"
    projection = WORKFLOW_PROJECTION
    project_every_s = PROJECT_EVERY_S

    coordinator_id: str = ""
    started: int = 0
    skipped: int = 0
    finished: int = 0

    def __post_init__(self) -> None:
        if not self.coordinator_id:
            self.coordinator_id = runtime.instance_id()
        self.source = runtime.event_source(self.settings.coordinator_source,
                                           constants.COORDINATOR_SOURCE_PREFIX,
                                           self.coordinator_id)
        self.topic = workflow_topic(self.settings.topic)
        self.group = coordinator_group(self.settings)

    def __repr__(self) -> str:
        return (f"Coordinator({self.coordinator_id} ◆ {self.started} nodes started ◆ "
                f"{self.skipped} skipped ◆ {self.finished} workflows finished ◆ "
                f"{self.parked} parked ◆ {len(self.parts)} partitions)")

    def _instance_id(self) -> str:
        return self.coordinator_id

    def _tick_s(self) -> float:
        return self.settings.coordinator_tick_s

    async def _open(self, tp: TP, producer: TransactionalProducer, end: int,
                    first: int) -> Part:
        return Part(tp=tp, producer=producer, end=end, position=first)

    def _on_recovered(self, part: Part) -> None:
        log.info("partition %d recovered: %d workflow(s), %d active", part.tp[1],
                 len(part.states), len(part.active))

    def _busy(self, part: Part) -> bool:
        return bool(part.active)

    def _apply(self, part: Part, r: Record, ev: CloudEvent) -> None:
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

    async def _project(self, part: Part) -> None:
        """Write the changed workflows of ``part`` and its checkpoint in one transaction."""
        if not part.dirty and not self._parks(part):
            return
        assert self._engine is not None
        rows = [workflow_db.row(part.states[wid], part.tp[1], off)
                for wid, off in part.dirty.items() if wid in part.states]
        async with self._engine.begin() as conn:
            await self._write_parks(conn, part)
            await workflow_db.write(conn, topic=self.topic, partition=part.tp[1],
                                    offset=part.position - 1, rows=rows)
        part.dirty.clear()
        self._parked(part)

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
