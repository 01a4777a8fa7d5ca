"""Exceptions of the shared core.

    TaskFlowError
    ├── ConfigError            a TASKFLOW_* setting is missing or invalid
    ├── LogUnavailable         Kafka did not acknowledge in time
    ├── ProducerFencedOff      a newer owner of this partition fenced our transactions
    ├── UndecodableEvent       a record in the log is not a valid TaskFlow event
    └── UnsafeJson             a JSON value some part of TaskFlow cannot carry exactly
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


class UnsafeJson(TaskFlowError, ValueError):
    """A value that the log, the fold, Postgres jsonb or the SSE encoder cannot carry.

    ``loc`` is the path to it (keys and list indexes), ``kind`` a short machine name.
    """

    def __init__(self, msg: str, kind: str, loc: list[str | int] | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.kind = kind
        self.loc: list[str | int] = loc if loc is not None else []

    def __str__(self) -> str:
        where = "".join(f"[{p!r}]" for p in self.loc)
        return f"{where or 'value'}: {self.msg}"

    def __repr__(self) -> str:
        return f"UnsafeJson(kind={self.kind!r}, loc={self.loc!r}, msg={self.msg!r})"
