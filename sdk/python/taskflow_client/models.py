"""What the API answers, as typed values; and what a submit sends (``TaskSpec``).

Field names are the API's (``docs/api.md``, ``/openapi.json``); the contract test in the
TaskFlow repository fails when they disagree. Members the API adds later are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

STATUSES = ("PENDING", "DELAYED", "PROCESSING", "DONE", "FAILED", "CANCELLED", "RETRYING")
TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED"})

PriorityName: TypeAlias = Literal["low", "normal", "high", "critical"]
Priority: TypeAlias = int | PriorityName
# The API's level names and their numbers (docs/priorities.md); higher starts first.
PRIORITIES: Final[dict[str, int]] = {"low": -50, "normal": 0, "high": 50, "critical": 100}


def priority_number(priority: Priority | str) -> int:
    """``"critical"`` -> 100; an int as it is; ``ValueError`` for any other name."""
    if isinstance(priority, bool) or not isinstance(priority, (int, str)):
        raise TypeError(f"priority must be an int or a level name, not {priority!r}")
    if isinstance(priority, int):
        return priority
    number = PRIORITIES.get(priority.strip().lower())
    if number is None:
        raise ValueError(f"priority must be an integer or one of {', '.join(PRIORITIES)}, "
                         f"not {priority!r}")
    return number


def _time(v: Any) -> datetime | None:
    return datetime.fromisoformat(v.replace("Z", "+00:00")) if isinstance(v, str) else None


@dataclass(frozen=True, slots=True)
class Position:
    """Where an event is in the log: ``(partition, offset)``."""

    partition: int
    offset: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Position:
        return cls(int(d["partition"]), int(d["offset"]))

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """A task the API accepted: its id, status then, and the position of its creation.

    ``replayed`` is true when an ``idempotency_key`` named a task accepted before.
    ``callback`` is the webhook a ``callback_url`` created (``webhook_id`` and its
    ``secret``, said once), when the task was accepted with one.
    """

    task_id: str
    status: str
    position: Position
    replayed: bool = False
    callback: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.task_id

    @classmethod
    def from_json(cls, d: dict[str, Any], replayed: bool = False) -> TaskHandle:
        return cls(str(d["task_id"]), str(d["status"]), Position.from_json(d["position"]),
                   bool(d.get("replayed", replayed)), d.get("callback"))


@dataclass(frozen=True, slots=True)
class Task:
    """A task's state in the read model (``GET /tasks/{id}``)."""

    task_id: str
    title: str
    type: str
    status: str
    payload: dict[str, Any]
    attempt: int
    progress: int
    result: Any = None
    error: str | None = None
    progress_message: str | None = None
    priority: int = 0
    max_attempts: int | None = None
    timeout_s: float | None = None
    not_before: datetime | None = None
    cancel_requested: bool = False
    dead_lettered: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    schedule_id: str | None = None  # the schedule that fired it, and for which due time
    due_at: datetime | None = None
    waiting_reason: str | None = None  # PENDING because no running worker pool serves it
    created_by: str | None = None  # the API key id that submitted it (task.created's actor)

    @property
    def id(self) -> str:
        return self.task_id

    @property
    def done(self) -> bool:
        """The task is terminal: DONE, FAILED or CANCELLED."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Task:
        return cls(
            task_id=str(d["task_id"]), title=d["title"], type=d["type"], status=d["status"],
            payload=d.get("payload") or {}, attempt=int(d.get("attempt", 0)),
            progress=int(d.get("progress", 0)), result=d.get("result"), error=d.get("error"),
            progress_message=d.get("progress_message"), priority=int(d.get("priority") or 0),
            max_attempts=d.get("max_attempts"), timeout_s=d.get("timeout_s"),
            not_before=_time(d.get("not_before")),
            cancel_requested=bool(d.get("cancel_requested")),
            dead_lettered=bool(d.get("dead_lettered")),
            created_at=_time(d.get("created_at")), updated_at=_time(d.get("updated_at")),
            finished_at=_time(d.get("finished_at")),
            schedule_id=str(d["schedule_id"]) if d.get("schedule_id") else None,
            due_at=_time(d.get("due_at")), waiting_reason=d.get("waiting_reason"),
            created_by=d.get("created_by"),
        )


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of ``GET /tasks``; ``next_cursor`` is None on the last."""

    items: list[Task]
    next_cursor: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TaskPage:
        return cls([Task.from_json(t) for t in d["items"]], d.get("next_cursor"))


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a task's history (``GET /tasks/{id}/events``): the CloudEvent and its
    position in the log. ``raw`` holds every member as the API sent it."""

    id: str
    type: str
    time: datetime | None
    data: dict[str, Any]
    attempt: int | None
    position: Position
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        return cls(str(d["id"]), d["type"], _time(d.get("time")), d.get("data") or {},
                   d.get("attempt"), Position.from_json(d["position"]), d)


@dataclass(frozen=True, slots=True)
class Change:
    """One change of the SSE stream (``GET /events``): ``position`` is its ``id:``, the
    resume point; ``event`` the event type; ``data`` at least ``task_id`` and ``status``."""

    position: int
    event: str
    data: dict[str, Any]

    @property
    def task_id(self) -> str:
        return str(self.data.get("task_id", ""))

    @property
    def status(self) -> str | None:
        s = self.data.get("status")
        return str(s) if s is not None else None


@dataclass(frozen=True, slots=True)
class Action:
    """The answer of ``cancel`` and ``retry``: the task, its status before, the position."""

    task_id: str
    status: str
    position: Position

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Action:
        return cls(str(d["task_id"]), str(d["status"]), Position.from_json(d["position"]))


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task to submit, as ``submit`` takes it (and ``submit_many`` takes many).

    ``delay_s`` or ``run_at`` (RFC 3339, or a ``datetime``) ask for a later start.
    ``callback_url`` subscribes a webhook to this task's terminal events; such a task is
    sent on its own ``POST /tasks``, since a batch refuses it.
    """

    title: str
    type: str = "echo"
    payload: dict[str, Any] | None = None
    priority: Priority | None = None  # a number from -100 to 100, or a level name
    max_attempts: int | None = None
    timeout_s: float | None = None
    idempotency_key: str | None = None
    delay_s: float | None = None
    run_at: datetime | str | None = None
    callback_url: str | None = None
    concurrency_key: str | None = None  # at most max_concurrency of these run at once
    max_concurrency: int | None = None

    def body(self) -> dict[str, Any]:
        """The task as ``POST /tasks`` takes it (without the idempotency key)."""
        if self.delay_s is not None and self.run_at is not None:
            raise ValueError("give delay_s or run_at, not both")
        out: dict[str, Any] = {"title": self.title, "type": self.type,
                               "payload": self.payload if self.payload is not None else {}}
        for name in ("max_attempts", "timeout_s", "delay_s", "callback_url", "concurrency_key",
                     "max_concurrency"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        if self.priority is not None:  # a level name is sent as its number
            out["priority"] = priority_number(self.priority)
        if self.run_at is not None:
            out["run_at"] = (self.run_at.isoformat() if isinstance(self.run_at, datetime)
                             else self.run_at)
        return out
