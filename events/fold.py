"""State is a fold: ``apply(state, event) -> state``.

The live projector, ``projections rebuild``, ``projections verify``, ``replay`` and the
API's ``?as_of=`` all call this one function, so they cannot disagree.

Rules that make the fold total:

* An event for a task we have not seen starts from a blank state (the log may be read
  from the middle, e.g. after retention of an earlier release).
* A duplicate ``task.created`` is ignored: the first one wins.
* Events of an older attempt than the one in the state are stale and ignored.
* Terminal states (DONE, FAILED, CANCELLED) absorb everything, with one deliberate
  exception: ``task.redriven`` re-opens a FAILED task (that is what redrive means), and
  ``task.dead_lettered`` marks a FAILED task as dead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from events.models import (
    TERMINAL,
    CloudEvent,
    EventType,
    TaskCreated,
    TaskDone,
    TaskFailed,
    TaskProgress,
    TaskRedriven,
    TaskRetryScheduled,
    TaskStatus,
)


class TaskState(BaseModel):
    """The read model of one task; also what ``GET /tasks/{id}`` shows."""

    model_config = ConfigDict(frozen=True)

    task_id: uuid.UUID
    tenant: str | None = None
    title: str = ""
    type: str = "echo"
    payload: dict[str, Any] = {}
    priority: int = 0
    max_attempts: int | None = None
    timeout_s: float | None = None
    status: TaskStatus = TaskStatus.PENDING
    result: Any = None
    error: str | None = None
    attempt: int = 0
    progress: int = 0
    progress_message: str | None = None
    not_before: datetime | None = None
    schedule_id: uuid.UUID | None = None
    due_at: datetime | None = None
    cancel_requested: bool = False
    dead_lettered: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    created_by: str | None = None  # task.created's actor: the API key id that submitted it

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


Handler = Callable[[TaskState, CloudEvent], TaskState]
# What an event changes: the fields to update, or None when it leaves the state as it is.
Update = Callable[[TaskState, CloudEvent], dict[str, Any] | None]

_new = object.__new__
_setattr = object.__setattr__


def _evolve(state: TaskState, update: dict[str, Any]) -> TaskState:
    """``state.model_copy(update=update)``, without its generic overhead.

    The fold copies a state once per event, so this is on the projector's hot path. It
    does exactly what pydantic's ``model_copy`` does for this model (which has no extra
    fields and no private attributes): a shallow copy of the fields with the update
    applied, and the updated names added to the fields set. No validation, as there.
    """
    fields = state.__dict__.copy()
    fields.update(update)
    new = _new(TaskState)
    _setattr(new, "__dict__", fields)
    _setattr(new, "__pydantic_fields_set__", state.__pydantic_fields_set__ | update.keys())
    _setattr(new, "__pydantic_extra__", None)
    _setattr(new, "__pydantic_private__", None)
    return new


_BLANK: Final = TaskState(task_id=uuid.UUID(int=0)).__dict__


def _blank(task_id: uuid.UUID, tenant: str | None) -> TaskState:
    """``TaskState(task_id=task_id, tenant=tenant)`` for an already valid id and tenant."""
    fields = {**_BLANK, "task_id": task_id, "tenant": tenant, "payload": {}}
    new = _new(TaskState)
    _setattr(new, "__dict__", fields)
    _setattr(new, "__pydantic_fields_set__", {"task_id", "tenant"})
    _setattr(new, "__pydantic_extra__", None)
    _setattr(new, "__pydantic_private__", None)
    return new


def _created_fields(state: TaskState, tenant: str | None, time: datetime,
                    d: TaskCreated, actor: str | None) -> dict[str, Any] | None:
    if state.created_at is not None:
        return None  # duplicate task.created: the first one wins
    fields = {
        "tenant": tenant,
        "title": d.title,
        "type": d.type,
        "payload": d.payload,
        "priority": d.priority,
        "max_attempts": d.max_attempts,
        "timeout_s": d.timeout_s,
        "schedule_id": d.schedule_id,
        "due_at": d.due_at,
        "created_at": time,
        "created_by": actor,
    }
    if d.run_at is not None:
        # Delayed until run_at: the worker waits for not_before (as for a retry), and
        # the task reads as DELAYED until it starts.
        fields["status"] = TaskStatus.DELAYED
        fields["not_before"] = d.run_at
    return fields


def _created(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    d = ev.data
    assert isinstance(d, TaskCreated)
    return _created_fields(state, ev.tenant, ev.time, d, ev.actor)


def _processing(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    return {
        "status": TaskStatus.PROCESSING,
        "attempt": ev.attempt,
        "progress": 0,
        "progress_message": None,
        "not_before": None,
    }


def _progress(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    d = ev.data
    assert isinstance(d, TaskProgress)
    if state.status is not TaskStatus.PROCESSING or ev.attempt != state.attempt:
        return None
    return {"progress": d.percent, "progress_message": d.message}


def _done(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    d = ev.data
    assert isinstance(d, TaskDone)
    return {
        "status": TaskStatus.DONE,
        "result": d.result,
        "error": None,
        "attempt": max(state.attempt, ev.attempt),
        "progress": 100,
        "finished_at": ev.time,
    }


def _failed(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    d = ev.data
    assert isinstance(d, TaskFailed)
    return {
        "status": TaskStatus.FAILED,
        "error": d.error,
        "attempt": max(state.attempt, ev.attempt),
        "finished_at": ev.time,
    }


def _retry_scheduled(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    d = ev.data
    assert isinstance(d, TaskRetryScheduled)
    return {
        "status": TaskStatus.RETRYING,
        "error": d.error,
        "attempt": max(state.attempt, ev.attempt),
        "not_before": d.not_before,
    }


def _cancel_requested(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    return {"cancel_requested": True}


def _cancelled(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    return {"status": TaskStatus.CANCELLED, "finished_at": ev.time}


def _dead_lettered(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    if state.status is not TaskStatus.FAILED:
        return None  # only a failed task can be dead
    return {"dead_lettered": True}


def _redriven(state: TaskState, ev: CloudEvent) -> dict[str, Any] | None:
    d = ev.data
    assert isinstance(d, TaskRedriven)
    update: dict[str, Any] = {}
    if state.created_at is None and d.spec is not None:
        # A reader that starts after the task finished (a worker's recovery window):
        # the event carries the definition, and the task counts as FAILED until now.
        # Who submitted it is not known here: the redrive's actor is not the submitter.
        update = _created_fields(state, ev.tenant, ev.time, d.spec, None) or {}
        update["status"] = TaskStatus.FAILED
        update["attempt"] = max(state.attempt, ev.attempt)
    elif state.status is not TaskStatus.FAILED:
        return None  # only a failed task can be redriven
    update.update(
        status=TaskStatus.PENDING,
        dead_lettered=False,
        cancel_requested=False,
        error=None,
        result=None,
        progress=0,
        progress_message=None,
        finished_at=None,
        not_before=None,
    )
    return update


UPDATES: Final[dict[EventType, Update]] = {
    EventType.CREATED: _created,
    EventType.PROCESSING: _processing,
    EventType.PROGRESS: _progress,
    EventType.DONE: _done,
    EventType.FAILED: _failed,
    EventType.RETRY_SCHEDULED: _retry_scheduled,
    EventType.CANCEL_REQUESTED: _cancel_requested,
    EventType.CANCELLED: _cancelled,
    EventType.DEAD_LETTERED: _dead_lettered,
    EventType.REDRIVEN: _redriven,
    EventType.ERASED: lambda state, ev: None,  # journal only: the sealed fields stay
}


def _handler(update: Update) -> Handler:
    def handle(state: TaskState, ev: CloudEvent) -> TaskState:
        fields = update(state, ev)
        return state if fields is None else _evolve(state, fields)

    return handle


# Each event type's transition as ``state -> state`` (the fold itself uses UPDATES).
HANDLERS: Final[dict[EventType, Handler]] = {t: _handler(u) for t, u in UPDATES.items()}
# Events that still change a terminal task (see the module docstring).
_OPEN_TERMINAL: Final = {
    EventType.CREATED: frozenset(TaskStatus),
    EventType.DEAD_LETTERED: frozenset({TaskStatus.FAILED}),
    EventType.REDRIVEN: frozenset({TaskStatus.FAILED}),
}
# Events that carry an attempt number and are stale when older than the state's.
_ATTEMPTED: Final = frozenset(
    {
        EventType.PROCESSING,
        EventType.PROGRESS,
        EventType.DONE,
        EventType.FAILED,
        EventType.RETRY_SCHEDULED,
    }
)


def apply(state: TaskState | None, event: CloudEvent) -> TaskState:
    """Fold one event into a task's state. Total, pure and idempotent per event."""
    if state is None:
        state = _blank(event.subject, event.tenant)
    update = UPDATES.get(event.type)
    if update is None:  # an event type this release does not know: no state change
        return state
    if state.terminal and state.status not in _OPEN_TERMINAL.get(event.type, frozenset()):
        return state
    if event.type in _ATTEMPTED and event.attempt < state.attempt:
        return state
    fields = update(state, event)
    if fields is None:
        return state
    fields["updated_at"] = event.time
    return _evolve(state, fields)


def fold(events: list[CloudEvent], state: TaskState | None = None) -> TaskState | None:
    for ev in events:
        state = apply(state, ev)
    return state
