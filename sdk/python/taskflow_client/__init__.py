"""The Python client of TaskFlow: ``TaskFlow`` (sync) and ``AsyncTaskFlow`` (asyncio)."""

from taskflow_client.aio import AsyncTaskFlow, BatchError, Retry, WaitTimeout
from taskflow_client.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ProblemError,
    RateLimited,
    ServerError,
    TaskFlowError,
    TransportError,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from taskflow_client.models import (
    Action,
    Change,
    Event,
    Position,
    Priority,
    PriorityName,
    Task,
    TaskHandle,
    TaskPage,
    TaskSpec,
)
from taskflow_client.sync import TaskFlow

__version__ = "0.1.0"
__all__ = [
    "Action", "AsyncTaskFlow", "BadRequest", "BatchError", "Change", "Conflict", "Event",
    "NotFound", "Position", "Priority", "PriorityName", "ProblemError", "RateLimited",
    "Retry", "ServerError", "Task", "TaskFlow", "TaskFlowError", "TaskHandle", "TaskPage",
    "TaskSpec", "TransportError", "Unauthorized", "Unavailable", "ValidationError",
    "WaitTimeout",
]
