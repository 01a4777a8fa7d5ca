"""The fold ``apply(state, event) -> state``: pure, total and idempotent per event. No I/O."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.fold import HANDLERS, TaskState, apply, fold
from events.models import (
    CloudEvent,
    EventData,
    EventType,
    TaskCancelled,
    TaskCancelRequested,
    TaskCreated,
    TaskDeadLettered,
    TaskDone,
    TaskFailed,
    TaskProcessing,
    TaskProgress,
    TaskRedriven,
    TaskRetryScheduled,
    TaskStatus,
    new_event,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(data: EventData, *, attempt: int = 0, t: float = 0, tenant: str | None = None,
       task_id: uuid.UUID = TID) -> CloudEvent:
    return new_event(data, task_id=task_id, source="test", attempt=attempt, time=at(t),
                     tenant=tenant)


def created(t: float = 0, **kw: object) -> CloudEvent:
    fields: dict[str, object] = {"title": "t", "payload": {"message": "hi"}, **kw}
    return ev(TaskCreated.model_validate(fields), t=t)


def processing(attempt: int, t: float, worker: str = "w1") -> CloudEvent:
    return ev(TaskProcessing(worker_id=worker), attempt=attempt, t=t)


def progress(attempt: int, t: float, percent: int, message: str | None = None) -> CloudEvent:
    return ev(TaskProgress(percent=percent, message=message), attempt=attempt, t=t)


def done(attempt: int, t: float, result: object = "hi") -> CloudEvent:
    return ev(TaskDone(result=result), attempt=attempt, t=t)


def failed(attempt: int, t: float, error: str = "boom") -> CloudEvent:
    return ev(TaskFailed(error=error), attempt=attempt, t=t)


def retry(attempt: int, t: float, delay_s: float = 5.0) -> CloudEvent:
    data = TaskRetryScheduled(error="flaky", not_before=at(t + delay_s), delay_s=delay_s)
    return ev(data, attempt=attempt, t=t)


def state_of(*events: CloudEvent) -> TaskState:
    s = fold(list(events))
    assert s is not None
    return s


# ---------------------------------------------------------------- one test per event type


def test_every_event_type_has_a_handler() -> None:
    # schedule.* and workflow.* events live on topics of their own, folded elsewhere.
    assert set(HANDLERS) == {t for t in EventType
                             if not t.value.startswith(("schedule.", "workflow."))}


def test_created_fills_the_task_from_its_data() -> None:
    e = ev(TaskCreated(title="report", type="sleep", payload={"seconds": 2}, priority=5,
                       max_attempts=4, timeout_s=9.5), t=1, tenant="acme")
    s = apply(None, e)
    assert s.task_id == TID
    assert (s.title, s.type, s.payload, s.priority) == ("report", "sleep", {"seconds": 2}, 5)
    assert (s.max_attempts, s.timeout_s, s.tenant) == (4, 9.5, "acme")
    assert s.status is TaskStatus.PENDING
    assert s.created_at == at(1) and s.updated_at == at(1)
    assert s.finished_at is None and not s.terminal


def test_processing_starts_an_attempt() -> None:
    s = state_of(created(), processing(1, 1))
    assert s.status is TaskStatus.PROCESSING
    assert s.attempt == 1 and s.progress == 0


def test_progress_records_percent_and_message() -> None:
    s = state_of(created(), processing(1, 1), progress(1, 2, 40, "reading"))
    assert (s.progress, s.progress_message) == (40, "reading")
    assert s.status is TaskStatus.PROCESSING


def test_done_records_result_and_finishes() -> None:
    s = state_of(created(), processing(1, 1), progress(1, 2, 40), done(1, 3, {"n": 1}))
    assert s.status is TaskStatus.DONE and s.terminal
    assert s.result == {"n": 1} and s.error is None
    assert s.progress == 100 and s.attempt == 1
    assert s.finished_at == at(3)


def test_failed_records_error_and_finishes() -> None:
    s = state_of(created(), processing(1, 1), failed(1, 2, "no message"))
    assert s.status is TaskStatus.FAILED and s.terminal
    assert s.error == "no message" and s.result is None
    assert s.finished_at == at(2)


def test_retry_scheduled_waits_with_not_before() -> None:
    s = state_of(created(), processing(1, 1), progress(1, 2, 70), retry(1, 3, delay_s=10))
    assert s.status is TaskStatus.RETRYING and not s.terminal
    assert s.error == "flaky" and s.not_before == at(13)
    assert s.attempt == 1 and s.finished_at is None


def test_next_attempt_after_retry_clears_not_before_and_progress() -> None:
    s = state_of(created(), processing(1, 1), progress(1, 2, 70), retry(1, 3),
                 processing(2, 10))
    assert s.status is TaskStatus.PROCESSING
    assert s.attempt == 2 and s.progress == 0 and s.progress_message is None
    assert s.not_before is None


def test_cancel_requested_only_flags_the_task() -> None:
    s = state_of(created(), processing(1, 1), ev(TaskCancelRequested(reason="user"), t=2))
    assert s.cancel_requested is True
    assert s.status is TaskStatus.PROCESSING


def test_cancelled_finishes_the_task() -> None:
    s = state_of(created(), ev(TaskCancelRequested(), t=1), ev(TaskCancelled(), t=2))
    assert s.status is TaskStatus.CANCELLED and s.terminal
    assert s.finished_at == at(2)


def test_dead_lettered_marks_a_failed_task() -> None:
    s = state_of(created(), processing(3, 1), failed(3, 2), ev(TaskDeadLettered(error="x"), t=3))
    assert s.dead_lettered is True
    assert s.status is TaskStatus.FAILED
    assert s.updated_at == at(3)


def test_redriven_reopens_a_failed_task() -> None:
    s = state_of(created(), processing(1, 1), progress(1, 2, 50), failed(1, 3),
                 ev(TaskDeadLettered(error="boom"), t=4), ev(TaskRedriven(reason="fixed"), t=5))
    assert s.status is TaskStatus.PENDING and not s.terminal
    assert s.dead_lettered is False
    assert s.error is None and s.result is None and s.finished_at is None
    assert s.progress == 0
    assert s.attempt == 1  # the next attempt is numbered after the failed one
    s = apply(s, processing(2, 6))
    s = apply(s, done(2, 7, "second time lucky"))
    assert (s.status, s.result, s.error) == (TaskStatus.DONE, "second time lucky", None)


def test_redriven_clears_an_old_cancel_request() -> None:
    s = state_of(created(), processing(1, 1), ev(TaskCancelRequested(), t=2), failed(1, 3),
                 ev(TaskRedriven(), t=4))
    assert s.status is TaskStatus.PENDING
    assert s.cancel_requested is False


# ---------------------------------------------------------------- duplicates and order


def test_duplicate_created_first_wins() -> None:
    first = created(1, title="first", payload={"a": 1})
    second = created(2, title="second", payload={"b": 2}, priority=9)
    s = state_of(first, second)
    assert (s.title, s.payload, s.priority) == ("first", {"a": 1}, 0)
    assert s.created_at == at(1) and s.updated_at == at(1)


def test_duplicate_done_first_wins() -> None:
    s = state_of(created(), processing(1, 1), done(1, 2, "first"), done(1, 3, "second"))
    assert s.result == "first"
    assert s.finished_at == at(2) and s.updated_at == at(2)


def test_processing_before_created() -> None:
    s = apply(None, processing(1, 1))
    assert s.task_id == TID and s.status is TaskStatus.PROCESSING and s.created_at is None
    s = apply(s, created(0, title="late"))
    assert s.title == "late" and s.payload == {"message": "hi"}
    assert s.status is TaskStatus.PROCESSING and s.attempt == 1
    assert s.created_at == at(0)


def test_created_after_terminal_still_fills_the_task() -> None:
    s = state_of(processing(1, 1), done(1, 2, "ok"), created(0, title="late"))
    assert s.status is TaskStatus.DONE and s.result == "ok"
    assert s.title == "late" and s.created_at == at(0)


def test_second_processing_after_crash_takes_the_higher_attempt() -> None:
    s = state_of(created(), processing(1, 1, "w1"), progress(1, 2, 60), processing(2, 3, "w2"))
    assert s.status is TaskStatus.PROCESSING
    assert s.attempt == 2 and s.progress == 0


def test_stale_events_of_an_older_attempt_are_ignored() -> None:
    base = state_of(created(), processing(1, 1), processing(2, 2), progress(2, 3, 30))
    for stale in (processing(1, 4), progress(1, 4, 90), done(1, 4, "old"), failed(1, 4),
                  retry(1, 4)):
        s = apply(base, stale)
        assert s == base, stale.type
    s = apply(base, done(2, 5, "new"))
    assert (s.status, s.result, s.attempt) == (TaskStatus.DONE, "new", 2)


def test_terminal_done_absorbs_failed() -> None:
    s = state_of(created(), processing(1, 1), done(1, 2, "ok"), failed(1, 3), failed(2, 4))
    assert s.status is TaskStatus.DONE and s.result == "ok" and s.error is None
    assert s.finished_at == at(2)


def test_terminal_cancelled_absorbs_processing() -> None:
    s = state_of(created(), ev(TaskCancelled(), t=1), processing(1, 2), progress(1, 3, 50),
                 done(1, 4))
    assert s.status is TaskStatus.CANCELLED and s.attempt == 0 and s.result is None
    assert s.finished_at == at(1) and s.updated_at == at(1)


@pytest.mark.parametrize("late", [
    ev(TaskCancelRequested(), t=9),
    ev(TaskCancelled(), t=9),
    ev(TaskRetryScheduled(error="x", not_before=at(20), delay_s=1.0), attempt=5, t=9),
    ev(TaskProcessing(worker_id="w9"), attempt=5, t=9),
])
@pytest.mark.parametrize("status", [TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_terminal_states_absorb_everything_else(status: TaskStatus, late: CloudEvent) -> None:
    end = {
        TaskStatus.DONE: done(1, 2),
        TaskStatus.FAILED: failed(1, 2),
        TaskStatus.CANCELLED: ev(TaskCancelled(), t=2),
    }[status]
    s = state_of(created(), processing(1, 1), end)
    assert s.status is status
    assert apply(s, late) is s


@pytest.mark.parametrize("status", [TaskStatus.DONE, TaskStatus.CANCELLED])
def test_redriven_and_dead_lettered_only_open_failed(status: TaskStatus) -> None:
    end = done(1, 2) if status is TaskStatus.DONE else ev(TaskCancelled(), t=2)
    s = state_of(created(), processing(1, 1), end)
    assert apply(s, ev(TaskRedriven(), t=3)) is s
    assert apply(s, ev(TaskDeadLettered(error="x"), t=3)) is s


def test_progress_ignored_when_not_processing() -> None:
    pending = state_of(created())
    assert apply(pending, progress(0, 1, 50)) is pending
    retrying = state_of(created(), processing(1, 1), retry(1, 2))
    assert apply(retrying, progress(1, 3, 50)) is retrying


def test_progress_ignored_for_another_attempt() -> None:
    s = state_of(created(), processing(2, 1), progress(2, 2, 10))
    assert apply(s, progress(1, 3, 80)) is s  # older attempt: stale
    assert apply(s, progress(3, 3, 80)) is s  # newer attempt that has not started here
    assert s.progress == 10 and s.updated_at == at(2)


def test_unknown_event_type_leaves_state_unchanged() -> None:
    # A later release may add event types this one does not know; the fold must not raise.
    # model_construct skips validation, which is the only way to hold such an event here.
    fields: dict[str, Any] = {"source": "test", "type": "task.archived", "subject": TID,
                              "time": at(9), "data": TaskCancelled(), "attempt": 0}
    unknown = CloudEvent.model_construct(**fields)
    assert unknown.type not in HANDLERS
    s = state_of(created(), processing(1, 1))
    assert apply(s, unknown) is s
    blank = apply(None, unknown)
    assert blank == TaskState(task_id=TID)


def test_updated_at_moves_to_the_event_time() -> None:
    s = apply(None, created(1))
    assert s.updated_at == at(1)
    s = apply(s, processing(1, 5))
    assert s.updated_at == at(5)
    s = apply(s, progress(1, 7, 20))
    assert s.updated_at == at(7)
    s = apply(s, ev(TaskCancelRequested(), t=8))
    assert s.updated_at == at(8)
    s = apply(s, done(1, 11))
    assert s.updated_at == at(11) == s.finished_at
    assert s.created_at == at(1)


def test_apply_does_not_mutate_its_input() -> None:
    s0 = state_of(created(), processing(1, 1))
    snapshot = s0.model_copy(deep=True)
    for e in (progress(1, 2, 50), done(1, 3), failed(1, 3), ev(TaskCancelled(), t=3)):
        apply(s0, e)
    assert s0 == snapshot


# ---------------------------------------------------------------- property-style


def realistic_log() -> list[CloudEvent]:
    """A crash, a retry, progress, a cancel request that lost the race, and redeliveries."""
    return [
        created(0, title="resize", payload={"w": 10}),
        processing(1, 1, "w1"),
        progress(1, 2, 20),
        processing(2, 3, "w2"),  # w1 crashed; redelivered to w2
        progress(2, 4, 50, "half"),
        retry(2, 5),
        processing(3, 6, "w2"),
        progress(3, 7, 90),
        ev(TaskCancelRequested(reason="user"), t=8),
        done(3, 9, {"w": 10}),
        failed(3, 10, "late duplicate from a zombie"),
        ev(TaskDeadLettered(error="noise"), t=11),
        ev(TaskRedriven(), t=12),
    ]


def test_realistic_log_in_order() -> None:
    s = state_of(*realistic_log())
    assert (s.status, s.result, s.attempt, s.progress) == (TaskStatus.DONE, {"w": 10}, 3, 100)
    assert s.cancel_requested and not s.dead_lettered
    assert s.finished_at == at(9) and s.updated_at == at(9)


@pytest.mark.parametrize("seed", range(25))
def test_fold_is_deterministic_and_idempotent_per_event(seed: int) -> None:
    events = realistic_log()
    random.Random(seed).shuffle(events)

    first, second = fold(events), fold(list(events))
    assert first is not None and first == second

    s: TaskState | None = None
    for e in events:
        once = apply(s, e)
        assert apply(once, e) == once, f"seed {seed}: {e.type} applied twice differs"
        s = once
    assert s == first

    # A log where every record was delivered twice folds to the same state.
    assert fold([e for e in events for _ in (1, 2)]) == first

    # Whatever the order, the one task.created is never lost.
    assert (first.title, first.payload, first.created_at) == ("resize", {"w": 10}, at(0))
