"""The local stack's own helpers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import stack
from events.settings import get_settings


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's storage tool reads ``-t -GKo…`` as an option and fails to format."""
    ids: Iterator[uuid.UUID] = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)),  # "-AAA…"
                                     uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    cid = stack.new_cluster_id()
    assert cid == "AAAAAAAAAAAAAAAAAAAAAA"
    assert not cid.startswith("-")


@pytest.mark.stack
def test_the_local_broker_runs_with_a_fixed_heap_and_zgc_and_logs_its_collections() -> None:
    """A fixed heap as kafka-run-class.sh sets it, and ZGC, which does not stop the broker
    for a young collection as G1 did; each collection goes to .stack/kafka/gc.log (the
    session's tests run on this broker)."""
    kafka_dir = stack.Stack(get_settings()).kafka_dir
    pid = int((kafka_dir / "kafka.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert {a.decode() for a in argv} >= set(stack.KAFKA_JVM)
    assert "Using The Z Garbage Collector" in (kafka_dir / "gc.log").read_text()  # its first line
