"""Event schemas: the CloudEvents 1.0 envelope and one frozen data model per event type.

Event data models are named for what happened (``TaskCreated``, ``TaskDone``). Each type
has a current schema version in ``SCHEMA_VERSIONS``; older versions are upcast by
``events.codec`` before anyone sees them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SerializeAsAny, create_model

from events import constants, ids

ACTOR_MAX: Final = 200  # characters of an event's ``actor`` attribute
ANONYMOUS: Final = "anonymous"  # the actor of a command while auth is off


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    DELAYED = "DELAYED"  # created with a run_at in the future; not_before is its due time
    PROCESSING = "PROCESSING"
    RETRYING = "RETRYING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL: Final = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED})


class EventType(StrEnum):
    CREATED = "task.created"
    PROCESSING = "task.processing"
    PROGRESS = "task.progress"
    DONE = "task.done"
    FAILED = "task.failed"
    RETRY_SCHEDULED = "task.retry_scheduled"
    CANCEL_REQUESTED = "task.cancel_requested"
    CANCELLED = "task.cancelled"
    DEAD_LETTERED = "task.dead_lettered"
    REDRIVEN = "task.redriven"
    ERASED = "task.erased"  # the task's data key was deleted (events/crypto.py)
    # Schedules (scheduler/): on the schedule topic, keyed and subject-ed by schedule id.
    SCHEDULE_CREATED = "schedule.created"
    SCHEDULE_UPDATED = "schedule.updated"
    SCHEDULE_PAUSED = "schedule.paused"
    SCHEDULE_RESUMED = "schedule.resumed"
    SCHEDULE_DELETED = "schedule.deleted"
    SCHEDULE_FIRED = "schedule.fired"
    # Workflows (coordinator/): on the workflow topic, keyed and subject-ed by workflow id.
    WORKFLOW_CREATED = "workflow.created"
    WORKFLOW_NODE_STARTED = "workflow.node_started"
    WORKFLOW_NODE_FINISHED = "workflow.node_finished"
    WORKFLOW_CANCEL_REQUESTED = "workflow.cancel_requested"
    WORKFLOW_RETRY_REQUESTED = "workflow.retry_requested"
    WORKFLOW_FINISHED = "workflow.finished"


class EventData(BaseModel):
    """Base of every event payload: frozen, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskSpec(EventData):
    """What a task is; also what each fire of a schedule submits (``ScheduleTask``)."""

    title: str
    type: str = "echo"
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    max_attempts: int | None = None
    timeout_s: float | None = None


class TaskCreated(TaskSpec):
    # Delayed task: no worker starts it before this time.
    run_at: AwareDatetime | None = None
    # A schedule's fire: the schedule and the due time this task is for (scheduler/).
    schedule_id: uuid.UUID | None = None
    due_at: AwareDatetime | None = None
    # At most max_concurrency tasks with this key run at once, across workers
    # (events/leases.py).
    concurrency_key: str | None = None
    max_concurrency: int | None = None


class TaskProcessing(EventData):
    worker_id: str


class TaskProgress(EventData):
    percent: int = Field(ge=0, le=100)
    message: str | None = None


class TaskDone(EventData):
    result: Any = None


FailureReason = Literal["error", "timeout", "cancelled", "lost", "exhausted"]


class TaskFailed(EventData):
    error: str
    reason: FailureReason = "error"


class TaskRetryScheduled(EventData):
    error: str
    reason: FailureReason = "error"
    not_before: datetime
    delay_s: float


class TaskCancelRequested(EventData):
    reason: str | None = None


class TaskCancelled(EventData):
    reason: str | None = None


class TaskDeadLettered(EventData):
    error: str


class TaskRedriven(EventData):
    """A FAILED task runs again. ``spec`` repeats the task's definition so that a worker
    that no longer remembers the task (it was finished long ago) can run it."""

    reason: str | None = None
    spec: TaskCreated | None = None


class TaskErased(EventData):
    """The task's sealed payload and result can no longer be read: its key is gone."""

    actor: str
    reason: str | None = None


ScheduleTask = TaskSpec  # the task of a schedule's definition


class ScheduleCreated(EventData):
    """A schedule's whole definition. Exactly one of ``cron`` and ``every_s`` is set."""

    name: str
    cron: str | None = None
    every_s: float | None = None
    timezone: str = "UTC"
    task: ScheduleTask
    overlap: Literal["allow", "skip"] = "allow"
    catchup: Literal["none", "latest", "all"] = "none"


class ScheduleUpdated(ScheduleCreated):
    """The whole new definition (a PATCH is merged at the edge)."""


class SchedulePaused(EventData):
    pass


class ScheduleResumed(EventData):
    pass


class ScheduleDeleted(EventData):
    pass


FireOutcome = Literal["fired", "missed", "overlap"]


class ScheduleFired(EventData):
    """The scheduler handled the due times up to ``due_at``: it fired ``task_id`` for it,
    or skipped ``count`` due times ending there (missed while down, or overlapping)."""

    due_at: AwareDatetime
    task_id: uuid.UUID | None = None
    outcome: FireOutcome = "fired"
    count: int = Field(default=1, ge=1)


class WorkflowNode(TaskSpec):
    """One node of a workflow: a task definition, its key and the keys it waits for."""

    key: str
    depends_on: list[str] = Field(default_factory=list)


class WorkflowCreated(EventData):
    """A workflow's whole definition; ``digest`` identifies the request body (for an
    ``Idempotency-Key`` replay)."""

    name: str
    on_failure: Literal["fail_fast", "continue"] = "fail_fast"
    tasks: list[WorkflowNode]
    digest: str | None = None


class WorkflowNodeStarted(EventData):
    """The coordinator created the node's task (in the same Kafka transaction)."""

    key: str
    round: int = Field(ge=0)
    task_id: uuid.UUID


NodeOutcome = Literal["DONE", "FAILED", "CANCELLED"]


class WorkflowNodeFinished(EventData):
    """A node ended: its task finished, or it was skipped (``reason``) without a task."""

    key: str
    round: int = Field(ge=0)
    task_id: uuid.UUID | None = None
    status: NodeOutcome
    result: Any = None
    error: str | None = None
    reason: str | None = None


class WorkflowCancelRequested(EventData):
    reason: str | None = None


class WorkflowRetryRequested(EventData):
    """Run the failed and cancelled nodes, and what depends on them, again as ``round``."""

    round: int = Field(ge=1)


class WorkflowFinished(EventData):
    """Every node of ``round`` ended: the outcome and each node's status."""

    round: int = Field(ge=0)
    status: NodeOutcome
    nodes: dict[str, str]


DATA_MODELS: Final[dict[EventType, type[EventData]]] = {
    EventType.CREATED: TaskCreated,
    EventType.PROCESSING: TaskProcessing,
    EventType.PROGRESS: TaskProgress,
    EventType.DONE: TaskDone,
    EventType.FAILED: TaskFailed,
    EventType.RETRY_SCHEDULED: TaskRetryScheduled,
    EventType.CANCEL_REQUESTED: TaskCancelRequested,
    EventType.CANCELLED: TaskCancelled,
    EventType.DEAD_LETTERED: TaskDeadLettered,
    EventType.REDRIVEN: TaskRedriven,
    EventType.ERASED: TaskErased,
    EventType.SCHEDULE_CREATED: ScheduleCreated,
    EventType.SCHEDULE_UPDATED: ScheduleUpdated,
    EventType.SCHEDULE_PAUSED: SchedulePaused,
    EventType.SCHEDULE_RESUMED: ScheduleResumed,
    EventType.SCHEDULE_DELETED: ScheduleDeleted,
    EventType.SCHEDULE_FIRED: ScheduleFired,
    EventType.WORKFLOW_CREATED: WorkflowCreated,
    EventType.WORKFLOW_NODE_STARTED: WorkflowNodeStarted,
    EventType.WORKFLOW_NODE_FINISHED: WorkflowNodeFinished,
    EventType.WORKFLOW_CANCEL_REQUESTED: WorkflowCancelRequested,
    EventType.WORKFLOW_RETRY_REQUESTED: WorkflowRetryRequested,
    EventType.WORKFLOW_FINISHED: WorkflowFinished,
}
TYPE_OF: Final[dict[type[EventData], EventType]] = {v: k for k, v in DATA_MODELS.items()}

# Current schema version of every event type. Bump it when a data model changes and add
# an upcaster in events.codec for the old version.
SCHEMA_VERSIONS: Final[dict[EventType, int]] = {t: 1 for t in EventType}
SCHEMA_VERSIONS[EventType.CREATED] = 2  # v1 had no priority and called payload "params"


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope in structured mode; ``subject`` is the task id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = constants.SPEC_VERSION
    id: uuid.UUID = Field(default_factory=ids.uuid4)
    source: str
    type: EventType
    subject: uuid.UUID
    time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: Literal["application/json"] = "application/json"
    data: SerializeAsAny[EventData]
    schemaversion: int = Field(default=1, strict=True)
    attempt: int = Field(default=0, ge=0)
    tenant: str | None = None
    # Who asked for it: the API key id of a command (``anonymous`` with auth off), or
    # ``--actor`` of a CLI command; unset (and left out of the JSON) on events a service
    # writes on its own, and on records older than the attribute.
    actor: str | None = Field(default=None, max_length=ACTOR_MAX,
                              exclude_if=lambda v: v is None)
    # The audit hash chain (events.chain); left out of the JSON while unset.
    chainprev: str | None = Field(default=None, exclude_if=lambda v: v is None)
    chainhash: str | None = Field(default=None, exclude_if=lambda v: v is None)

    @property
    def task_id(self) -> uuid.UUID:
        return self.subject


def _typed_envelope(etype: EventType, model: type[EventData]) -> type[CloudEvent]:
    fields: dict[str, Any] = {"type": (Literal[etype], ...), "data": (model, ...)}
    return create_model(f"{model.__name__}Event", __base__=CloudEvent,
                        __module__=__name__, **fields)


# One envelope class per event type, its ``type`` and ``data`` pinned. Every event is an
# instance of one of them: ``events.codec`` validates a record's JSON into the right one
# in a single pass, and events of one type compare equal however they were made.
ENVELOPES: Final[dict[EventType, type[CloudEvent]]] = {
    t: _typed_envelope(t, m) for t, m in DATA_MODELS.items()
}


def new_event(
    data: EventData,
    *,
    task_id: uuid.UUID,
    source: str,
    attempt: int = 0,
    tenant: str | None = None,
    time: datetime | None = None,
    actor: str | None = None,
) -> CloudEvent:
    """Build the envelope for ``data`` at the current schema version of its type."""
    etype = TYPE_OF[type(data)]
    return ENVELOPES[etype](
        source=source,
        type=etype,
        subject=task_id,
        time=time or datetime.now(UTC),
        data=data,
        schemaversion=SCHEMA_VERSIONS[etype],
        attempt=attempt,
        tenant=tenant,
        actor=actor,
    )


class Position(BaseModel):
    """Where an event sits in the log."""

    model_config = ConfigDict(frozen=True)

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


class LoggedEvent(BaseModel):
    """An event as read from the log, with its coordinates."""

    model_config = ConfigDict(frozen=True)

    event: CloudEvent
    topic: str
    partition: int
    offset: int
    timestamp_ms: int = 0

    @property
    def position(self) -> Position:
        return Position(partition=self.partition, offset=self.offset)
