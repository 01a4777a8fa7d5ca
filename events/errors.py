"""Exceptions of the shared core.

    TaskFlowError
    ├── ConfigError            a TASKFLOW_* setting is missing or invalid
    ├── LogUnavailable         Kafka did not acknowledge in time
    ├── ProducerFencedOff      a newer owner of this partition fenced our transactions
    └── UndecodableEvent       a record in the log is not a valid TaskFlow event
"""

from __future__ import annotations


class TaskFlowError(Exception):
    """Root of every TaskFlow exception."""


class ConfigError(TaskFlowError):
    pass


class LogUnavailable(TaskFlowError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"LogUnavailable(reason={self.reason!r})"


class ProducerFencedOff(TaskFlowError):
    def __init__(self, transactional_id: str) -> None:
        super().__init__(transactional_id)
        self.transactional_id = transactional_id

    def __repr__(self) -> str:
        return f"ProducerFencedOff(transactional_id={self.transactional_id!r})"


class UndecodableEvent(TaskFlowError):
    def __init__(self, error: str, raw: bytes | None) -> None:
        super().__init__(error)
        self.error = error
        self.raw = raw

    def __repr__(self) -> str:
        size = len(self.raw) if self.raw is not None else 0
        return f"UndecodableEvent(error={self.error!r}, bytes={size})"
