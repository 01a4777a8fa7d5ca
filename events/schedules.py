"""Schedules as a fold, and when they are due.

A schedule lives on the schedule topic (``schedule_topic``), keyed by its id: its
``schedule.created|updated|paused|resumed|deleted`` events, and the ``schedule.fired``
that the scheduler writes in the same Kafka transaction as each fire's ``task.created``.
``apply_schedule`` folds them into a ``ScheduleState``; the scheduler, the ``schedules``
projection, ``projections verify|rebuild`` and the API all use it.

Due times
=========
* ``every_s``: ``anchor + k * every_s`` for k >= 1, where the anchor is the time of the
  event that (re)started the schedule (created, updated or resumed).
* ``cron``: the expression (cronsim: 5 fields, or 6 with seconds) read as wall-clock time
  in ``timezone``. Daylight saving: a time that does not exist on the day the clocks go
  forward (02:30 when 02:00 jumps to 03:00) fires at the first instant after the gap
  (03:00); a time that happens twice when they go back fires once, at its first
  occurrence. So a daily 02:30 fires exactly once on both days.
* A due time is handled once: the fold's ``last_due_at`` only moves forward, and the
  next due time is always the first one after ``cursor``, which is past the last one
  handled and past the anchor. Due times while paused are dropped.

A fire's task id is ``fire_task_id(schedule_id, due_at)``: a scheduler that fires the same
due time again (after a crash between produce and commit, or a second instance) names the
same task, and ``task.created`` of a known task is ignored by every reader.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict

from events.models import (
    CloudEvent,
    EventType,
    ScheduleCreated,
    ScheduleFired,
)

SCHEDULE_TOPIC_SUFFIX: Final = ".schedules"  # schedules live on <topic>.schedules
SCHEDULE_PROJECTION: Final = "schedules"  # name of the projection in projector_offsets
FIRE_NS: Final = uuid.UUID("3b1f7a9e-52c4-4e0d-8f6a-0c9d2e7b4a15")  # uuid5 of fires
_US: Final = timedelta(microseconds=1)


def schedule_topic(topic: str) -> str:
    """The schedule topic that goes with the task topic ``topic``."""
    return topic + SCHEDULE_TOPIC_SUFFIX


def fire_task_id(schedule_id: uuid.UUID, due_at: datetime) -> uuid.UUID:
    """The id of the task a schedule fires for ``due_at``: the same for every scheduler."""
    return uuid.uuid5(FIRE_NS, f"{schedule_id}/{due_at.astimezone(UTC).isoformat()}")


def trigger_task_id(schedule_id: uuid.UUID, at: datetime) -> uuid.UUID:
    """The id of a manual trigger's task (``POST /schedules/{id}:trigger``)."""
    return uuid.uuid5(FIRE_NS, f"{schedule_id}/trigger/{at.astimezone(UTC).isoformat()}")


class BadSchedule(ValueError):
    """A definition that cannot be evaluated; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __repr__(self) -> str:
        return f"BadSchedule({self.field!r}, {self.message!r})"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadSchedule("timezone", f"unknown time zone {name!r}") from None


def check(spec: ScheduleCreated) -> None:
    """Raise ``BadSchedule`` unless ``spec`` can be evaluated."""
    if (spec.cron is None) == (spec.every_s is None):
        raise BadSchedule("cron", "give exactly one of cron and every_s")
    tz = zone(spec.timezone)
    if spec.cron is not None:
        try:
            next(CronSim(spec.cron, datetime.now(tz)))
        except (CronSimError, StopIteration, ValueError) as exc:
            raise BadSchedule("cron", f"bad cron expression {spec.cron!r}: {exc}") from None


def next_due(spec: ScheduleCreated, anchor: datetime, after: datetime) -> datetime | None:
    """The first due time strictly after ``after`` (UTC), or None if there is none."""
    if spec.every_s is not None:
        every = max(1, round(spec.every_s * 1_000_000))
        k = max(0, (after - anchor) // _US // every) + 1
        return (anchor + k * _US * every).astimezone(UTC)
    assert spec.cron is not None
    try:
        return next(CronSim(spec.cron, after.astimezone(zone(spec.timezone)))).astimezone(UTC)
    except StopIteration:
        return None


class ScheduleState(BaseModel):
    """One schedule as its events leave it; also what the ``schedules`` table holds."""

    model_config = ConfigDict(frozen=True)

    schedule_id: uuid.UUID
    tenant: str | None = None
    spec: ScheduleCreated
    paused: bool = False
    deleted: bool = False
    anchor: datetime
    last_due_at: datetime | None = None
    last_task_id: uuid.UUID | None = None
    fires: int = 0
    skips: int = 0
    created_at: datetime
    updated_at: datetime

    @property
    def active(self) -> bool:
        return not (self.paused or self.deleted)

    @property
    def cursor(self) -> datetime:
        """Due times at or before this are handled (or were before the anchor)."""
        if self.last_due_at is None or self.last_due_at < self.anchor:
            return self.anchor
        return self.last_due_at

    def next_run_at(self) -> datetime | None:
        return next_due(self.spec, self.anchor, self.cursor) if self.active else None


def apply_schedule(state: ScheduleState | None, ev: CloudEvent) -> ScheduleState | None:
    """Fold one schedule event. Total: unknown or out-of-place events change nothing."""
    t, d = ev.type, ev.data
    if t is EventType.SCHEDULE_CREATED:
        if state is not None:
            return state  # a duplicate created: the first one wins
        assert isinstance(d, ScheduleCreated)
        return ScheduleState(schedule_id=ev.subject, tenant=ev.tenant,
                             spec=ScheduleCreated(**_spec_fields(d)), anchor=ev.time,
                             created_at=ev.time, updated_at=ev.time)
    if state is None or state.deleted:
        return state
    update: dict[str, Any]
    if t is EventType.SCHEDULE_UPDATED:
        assert isinstance(d, ScheduleCreated)
        update = {"spec": ScheduleCreated(**_spec_fields(d)), "anchor": max(ev.time, state.anchor)}
    elif t is EventType.SCHEDULE_PAUSED:
        update = {"paused": True}
    elif t is EventType.SCHEDULE_RESUMED:
        if not state.paused:
            return state
        update = {"paused": False, "anchor": max(ev.time, state.anchor)}
    elif t is EventType.SCHEDULE_DELETED:
        update = {"deleted": True}
    elif t is EventType.SCHEDULE_FIRED:
        assert isinstance(d, ScheduleFired)
        if state.last_due_at is not None and d.due_at <= state.last_due_at:
            return state  # handled already
        update = {"last_due_at": d.due_at}
        if d.outcome == "fired":
            update |= {"last_task_id": d.task_id, "fires": state.fires + 1}
        else:
            update["skips"] = state.skips + d.count
        return state.model_copy(update=update)  # a fire is not a change to the schedule
    else:
        return state
    update["updated_at"] = ev.time
    return state.model_copy(update=update)


def _spec_fields(d: ScheduleCreated) -> dict[str, Any]:
    return {name: getattr(d, name) for name in ScheduleCreated.model_fields}
