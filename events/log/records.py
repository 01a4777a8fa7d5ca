"""The shapes records take on their way in and out of the log, free of aiokafka's types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TP = tuple[str, int]  # (topic, partition)


@dataclass(slots=True)
class Record:
    """One raw record from the log. Treat it as read-only: it is not frozen only because a
    frozen dataclass is much slower to build (each field is set through
    ``object.__setattr__``), and every consumed record is one."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class RawMessage:
    """Bytes to append as they are (dead-letter copies of poison records)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def to_record(msg: Any) -> Record:
    """A ``Record`` from one of aiokafka's ``ConsumerRecord``s."""
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        timestamp_ms=msg.timestamp,
        headers=tuple(msg.headers or ()),
    )
