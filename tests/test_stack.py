"""The local stack's own helpers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cli import stack


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's storage tool reads ``-t -GKo…`` as an option and fails to format."""
    ids: Iterator[uuid.UUID] = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)),  # "-AAA…"
                                     uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    cid = stack.new_cluster_id()
    assert cid == "AAAAAAAAAAAAAAAAAAAAAA"
    assert not cid.startswith("-")
