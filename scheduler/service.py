"""The scheduler: fires schedules into the task log, exactly once per due time.

How the guarantees are kept:

* **One owner per schedule partition.** Schedulers are one consumer group on the schedule
  topic; each owns some of its partitions. For each it opens a transactional producer
  whose ``transactional_id`` is the partition's, which fences any previous owner.
* **The log says what was fired.** Each fire writes the task's ``task.created`` (task
  topic) and a ``schedule.fired`` (schedule topic, the schedule's key) in one Kafka
  transaction. A new owner reads its partitions from the start (``read_committed``) up to
  the end it saw once the fencing had aborted any open transaction, and only then fires:
  it knows every fire that committed, and none that did not.
* **Same due time, same task id** (``events.schedules.fire_task_id``). Should a fire be
  repeated anyway, it names the same task, and every reader ignores a second
  ``task.created`` of a task it knows.
* **Missed due times** (older than ``scheduler_grace_s`` when found, because no scheduler
  owned the partition) follow the schedule's catchup policy: ``none`` skips them,
  ``latest`` fires the last one, ``all`` fires each. Skips are logged as
  ``schedule.fired`` with outcome ``missed`` (or ``overlap``), so they are not revisited.

The scheduler also writes the ``schedules`` projection of the partitions it owns: the
fold of their events, with a checkpoint, in one Postgres transaction at most every
``PROJECT_EVERY_S`` per partition.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from events import chain, constants, runtime, schedule_db
from events.codec import encode
from events.log import (
    TP,
    RawMessage,
    Record,
    TransactionalProducer,
    task_key,
)
from events.models import CloudEvent, ScheduleFired, TaskCreated, new_event
from events.partitioned import Partition, PartitionedService
from events.schedules import (
    SCHEDULE_PROJECTION,
    ScheduleState,
    apply_schedule,
    fire_task_id,
    next_due,
    schedule_topic,
)
from events.settings import Settings

log = logging.getLogger("taskflow.scheduler")

PROJECT_EVERY_S = 0.5  # seconds between two projection writes of a partition, at least


def scheduler_group(settings: Settings) -> str:
    """The scheduler's consumer group: set, or derived from the topic."""
    if settings.scheduler_group:
        return settings.scheduler_group
    return "taskflow.scheduler" if settings.topic == constants.TOPIC else \
        f"{settings.topic}.scheduler"


@dataclass
class Part(Partition):
    """What a scheduler keeps for one schedule partition."""

    states: dict[uuid.UUID, ScheduleState] = field(default_factory=dict)
    # Handled, committed, but not read back yet: due time and task of the last fire.
    handled: dict[uuid.UUID, datetime] = field(default_factory=dict)
    last_task: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    journaled: int = -1  # records up to this offset are in schedule_events already
    journal: list[dict[str, object]] = field(default_factory=list)  # rows to add


@dataclass(repr=False)
class Scheduler(PartitionedService[Part]):
    """Fires the schedules of the partitions it owns in the scheduler group.

    :param settings: process settings (topics, group, tick, grace).
    :param scheduler_id: appears in ``source``; default host-pid.
    """

    kind = "scheduler"
    log = log
    acting = "firing"
    projection = SCHEDULE_PROJECTION
    project_every_s = PROJECT_EVERY_S

    scheduler_id: str = ""
    fired: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        if not self.scheduler_id:
            self.scheduler_id = runtime.instance_id()
        self.source = runtime.event_source(self.settings.scheduler_source,
                                           constants.SCHEDULER_SOURCE_PREFIX, self.scheduler_id)
        self.topic = schedule_topic(self.settings.topic)
        self.group = scheduler_group(self.settings)

    def __repr__(self) -> str:
        return (f"Scheduler({self.scheduler_id} ◆ {self.fired} fired ◆ {self.skipped} "
                f"skipped ◆ {self.parked} parked ◆ {len(self.parts)} partitions)")

    def _instance_id(self) -> str:
        return self.scheduler_id

    def _tick_s(self) -> float:
        return self.settings.scheduler_tick_s

    async def _open(self, tp: TP, producer: TransactionalProducer, end: int,
                    first: int) -> Part:
        assert self._engine is not None
        done = await schedule_db.checkpoint(self._engine, topic=self.topic, partition=tp[1])
        return Part(tp=tp, producer=producer, end=end, position=first, journaled=done)

    def _on_recovered(self, part: Part) -> None:
        log.info("partition %d recovered: %d schedule(s)", part.tp[1], len(part.states))

    async def _act(self, part: Part) -> None:
        await self._fire(part)

    def _apply(self, part: Part, r: Record, ev: CloudEvent) -> None:
        if r.offset > part.journaled and r.value is not None:
            part.journal.append(schedule_db.journal_row(part.tp[1], r.offset, ev, r.value))
        old = part.states.get(ev.subject)
        new = apply_schedule(old, ev)
        if new is not None:
            part.states[ev.subject] = new
            part.dirty[ev.subject] = r.offset

    async def _project(self, part: Part) -> None:
        """Write the changed schedules of ``part`` and its checkpoint in one transaction."""
        if not part.dirty and not self._to_park and not part.journal:
            return
        assert self._engine is not None
        rows = [schedule_db.row(part.states[sid], part.tp[1], off)
                for sid, off in part.dirty.items() if sid in part.states]
        async with self._engine.begin() as conn:
            await self._write_parks(conn, part)
            await schedule_db.write(conn, topic=self.topic, partition=part.tp[1],
                                    offset=part.position - 1, rows=rows,
                                    journal=part.journal)
        part.dirty.clear()
        part.journaled = max(part.journaled, part.position - 1)
        part.journal = []
        self._parked(part)

    async def _fire(self, part: Part) -> None:
        """Fire (or skip) every due time up to now of the partition's schedules, in one
        Kafka transaction."""
        s = self.settings
        now = datetime.now(UTC)
        missed_before = now - timedelta(seconds=s.scheduler_grace_s)
        plans: list[tuple[ScheduleState, list[datetime]]] = []
        for st in part.states.values():
            if not st.active:
                continue
            cursor = max(st.cursor, part.handled.get(st.schedule_id, st.cursor))
            dues: list[datetime] = []
            d = next_due(st.spec, st.anchor, cursor)
            while d is not None and d <= now and len(dues) < constants.SCHEDULER_CATCHUP_MAX:
                dues.append(d)
                d = next_due(st.spec, st.anchor, d)
            if dues:
                plans.append((st, dues))
        if not plans:
            return
        assert self._engine is not None
        watch = {part.last_task.get(st.schedule_id, st.last_task_id) for st, _ in plans
                 if st.spec.overlap == "skip"} - {None}
        busy = await schedule_db.running(self._engine, [t for t in watch if t is not None])
        tasks: list[CloudEvent] = []
        marks: list[CloudEvent] = []
        for st, dues in plans:
            self._plan(st, dues, missed_before, busy, part, tasks, marks)
        raw = [RawMessage(topic=self.topic, key=task_key(ev.subject), value=encode(ev))
               for ev in marks]
        await part.producer.safe_commit(topic=s.topic, events=tasks, offsets={},
                                        group_id=self.group, raw=raw)
        for ev in marks:
            assert isinstance(ev.data, ScheduleFired)
            part.handled[ev.subject] = ev.data.due_at
            if ev.data.task_id is not None:
                part.last_task[ev.subject] = ev.data.task_id
        n = len(tasks)
        self.fired += n
        self.skipped += sum(e.data.count for e in marks
                            if isinstance(e.data, ScheduleFired) and e.data.task_id is None)

    def _plan(self, st: ScheduleState, dues: list[datetime], missed_before: datetime,
              busy: set[uuid.UUID], part: Part, tasks: list[CloudEvent],
              marks: list[CloudEvent]) -> None:
        missed = [d for d in dues if d < missed_before]
        fire = [d for d in dues if d >= missed_before]
        policy = st.spec.catchup
        if policy == "all":
            fire, missed = dues, []
        elif policy == "latest" and missed:
            fire, missed = [missed[-1], *fire], missed[:-1]
        if missed:
            marks.append(self._mark(st, ScheduleFired(due_at=missed[-1], outcome="missed",
                                                      count=len(missed))))
        last = part.last_task.get(st.schedule_id, st.last_task_id)
        running = st.spec.overlap == "skip" and last is not None and last in busy
        skipped: list[datetime] = []
        for d in sorted(fire):
            if running:
                skipped.append(d)
                continue
            if skipped:
                marks.append(self._mark(st, ScheduleFired(due_at=skipped[-1],
                                                          outcome="overlap",
                                                          count=len(skipped))))
                skipped = []
            tid = fire_task_id(st.schedule_id, d)
            t = st.spec.task
            tasks.append(chain.seal(new_event(
                TaskCreated(title=t.title, type=t.type, payload=t.payload,
                            priority=t.priority, max_attempts=t.max_attempts,
                            timeout_s=t.timeout_s, schedule_id=st.schedule_id, due_at=d),
                task_id=tid, source=self.source, tenant=st.tenant)))
            marks.append(self._mark(st, ScheduleFired(due_at=d, task_id=tid)))
            running = st.spec.overlap == "skip"  # the task just fired is running
        if skipped:
            marks.append(self._mark(st, ScheduleFired(due_at=skipped[-1], outcome="overlap",
                                                      count=len(skipped))))

    def _mark(self, st: ScheduleState, data: ScheduleFired) -> CloudEvent:
        return new_event(data, task_id=st.schedule_id, source=self.source, tenant=st.tenant)
