"""Request and response bodies of the HTTP API, with OpenAPI examples."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from events.models import TaskStatus
from events.priority import PRIORITY_MAX, PRIORITY_MIN, parse_priority

MAX_TITLE = 500
MAX_DELAY_S = 366 * 86_400  # seconds: the longest delay a task may wait
TYPE_PATTERN = r"^[A-Za-z0-9_.:-]+$"  # a task type: what a handler is registered under


def _in_utc_range(v: datetime) -> datetime:
    # Postgres compares a timestamptz in UTC, and the driver converts it there first: a
    # time like 9999-12-31T23:59:59-14:00 is a valid date whose UTC is past year 9999.
    if v.tzinfo is not None:
        try:
            v.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time is out of range once converted to UTC") from None
    return v


QueryTime = Annotated[datetime, AfterValidator(_in_utc_range)]


class TaskIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"title": "say hello", "type": "echo", "payload": {"message": "hi"}}]
        },
    )

    title: str = Field(min_length=1, max_length=MAX_TITLE)
    type: str = Field(default="echo", min_length=1, max_length=100, pattern=TYPE_PATTERN)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: Annotated[int, BeforeValidator(parse_priority)] = Field(
        default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX,
        description="-100..100, higher starts first; or low (-50), normal (0), high (50), "
                    "critical (100)")
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    # Webhook for this task alone: its terminal events, signed (see docs/webhooks.md).
    callback_url: str | None = Field(default=None, min_length=1, max_length=2048)
    run_at: Annotated[AwareDatetime, AfterValidator(_in_utc_range)] | None = Field(
        default=None, description="RFC 3339 with an offset: the task starts no earlier")
    delay_s: float | None = Field(default=None, ge=0, le=MAX_DELAY_S,
                                  description="seconds from now before the task may start")
    concurrency_key: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="at most max_concurrency tasks with this key run at once, across workers")
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000,
                                        description="with concurrency_key; default 1")

    @model_validator(mode="after")
    def _one_delay(self) -> TaskIn:
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give run_at or delay_s, not both")
        if self.max_concurrency is not None and self.concurrency_key is None:
            raise ValueError("max_concurrency needs a concurrency_key")
        if self.concurrency_key is not None and "\x00" in self.concurrency_key:
            raise ValueError("concurrency_key must not contain NUL characters")
        return self

    @field_validator("title")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("must not contain NUL characters")
        return v


class PositionOut(BaseModel):
    partition: int
    offset: int


class TaskAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "task_id": "0b7f3c1e-3f4e-4a59-9d7c-6f1d2a3b4c5d", "status": "PENDING",
        "position": {"partition": 3, "offset": 41}}]})

    task_id: uuid.UUID
    status: TaskStatus
    position: PositionOut


class TaskOut(BaseModel):
    task_id: uuid.UUID
    title: str
    type: str
    status: TaskStatus
    payload: dict[str, Any]
    result: Any = None
    error: str | None = None
    attempt: int
    progress: int
    progress_message: str | None = None
    priority: int = 0
    max_attempts: int | None = None
    timeout_s: float | None = None
    not_before: datetime | None = None
    schedule_id: uuid.UUID | None = None
    due_at: datetime | None = None
    cancel_requested: bool = False
    dead_lettered: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    # The actor of its task.created: the API key id that submitted it, "anonymous" with
    # auth off, the scheduler's fires none (null); null for tasks from before 0017.
    created_by: str | None = None
    # PENDING because no running worker pool serves the type (events/pool_registry.py).
    waiting_reason: str | None = None


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = None


class EventPage(BaseModel):
    """The task's history in log order: each item is the CloudEvent plus its ``position``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [{
        "specversion": "1.0", "id": "5f0c...", "source": "taskflow/api", "type": "task.created",
        "subject": "0b7f3c1e-3f4e-4a59-9d7c-6f1d2a3b4c5d", "time": "2026-11-22T10:00:00Z",
        "datacontenttype": "application/json", "data": {"title": "say hello"},
        "schemaversion": 2, "attempt": 0, "tenant": None, "actor": "3f9a0c1b2d4e",
        "position": {"partition": 3, "offset": 41}}]}]})

    items: list[dict[str, Any]]


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"tasks": [{"title": "one", "payload": {"message": "a"}},
                   {"title": "two", "type": "sleep", "payload": {"seconds": 1}}]}]})

    # Each item is validated on its own (``api/submit.py``), so that ``?partial=true`` can
    # refuse one task and accept the others; the document still says each is a TaskIn.
    tasks: list[Any] = Field(min_length=1, max_length=1000,
                             json_schema_extra={"items": {"$ref": "#/components/schemas/TaskIn"}})


class BatchAccepted(BaseModel):
    items: list[TaskAccepted]


IDEMPOTENCY_KEY = Field(default=None, max_length=255, pattern=r"^[\x21-\x7e]+$")


class BatchItemIn(TaskIn):
    """A task of ``POST /tasks:batch?partial=true``: a TaskIn, with its own idempotency key."""

    idempotency_key: str | None = IDEMPOTENCY_KEY


class BatchItemOut(BaseModel):
    """One task's outcome in ``?partial=true``: accepted (``task_id``, ``status``,
    ``position``; ``replayed`` when its key named a task accepted before), or ``problem``."""

    task_id: uuid.UUID | None = None
    status: TaskStatus | None = None
    position: PositionOut | None = None
    replayed: bool = False
    problem: dict[str, Any] | None = None


class BatchOutcome(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {"task_id": "0b7f3c1e-3f4e-4a59-9d7c-6f1d2a3b4c5d", "status": "PENDING",
         "position": {"partition": 3, "offset": 41}},
        {"problem": {"type": "https://taskflow.dev/problems/validation",
                     "title": "Unprocessable content", "status": 422,
                     "detail": "the task is not valid",
                     "errors": [{"loc": ["body", "tasks", 1, "title"],
                                 "msg": "String should have at least 1 character",
                                 "type": "string_too_short"}]}}]}]})

    items: list[BatchItemOut]


class LoginIn(BaseModel):
    """``POST /session``: the API key the dashboard logs in with, pasted once."""

    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"key": "tfk_<id>_<secret>"}]})

    key: str = Field(min_length=1, max_length=256)


class LoginOut(BaseModel):
    """Who the login cookie stands for, and the ``X-CSRF-Token`` its writes must carry."""

    tenant: str
    key_id: str
    expires_at: datetime
    csrf_token: str
