"""Process tuning: the slow-collection warning."""

from __future__ import annotations

import gc
import logging

import pytest

from events import runtime


def _warnings_of_a_collection(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                              *, started: bool) -> list[logging.LogRecord]:
    """Watch collections (every one counting as slow), collect once, return the warnings."""
    monkeypatch.setattr(runtime, "SLOW_GC_S", -1.0)
    monkeypatch.setattr(runtime, "_started", started)
    before = list(gc.callbacks)
    try:
        runtime.watch_gc(logging.getLogger("taskflow.gc.test"))
        with caplog.at_level(logging.WARNING, logger="taskflow.gc.test"):
            gc.collect(1)
    finally:
        gc.callbacks[:] = before
    return list(caplog.records)


def test_a_slow_garbage_collection_is_logged(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    records = _warnings_of_a_collection(monkeypatch, caplog, started=True)
    assert any("garbage collection of generation 1 took" in r.getMessage() for r in records)


def test_collections_during_start_up_are_not_reported(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert not _warnings_of_a_collection(monkeypatch, caplog, started=False)
