"""The wire codec: round trips, clear errors for bad records, and upcasting of old logs."""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from events.codec import decode, decode_verbatim, encode
from events.errors import UndecodableEvent
from events.fold import fold
from events.models import (
    SCHEMA_VERSIONS,
    CloudEvent,
    EventData,
    EventType,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    SchedulePaused,
    ScheduleResumed,
    ScheduleTask,
    ScheduleUpdated,
    TaskCancelled,
    TaskCancelRequested,
    TaskCreated,
    TaskDeadLettered,
    TaskDone,
    TaskErased,
    TaskFailed,
    TaskProcessing,
    TaskProgress,
    TaskRedriven,
    TaskRetryScheduled,
    TaskStatus,
    WorkflowCancelRequested,
    WorkflowCreated,
    WorkflowFinished,
    WorkflowNode,
    WorkflowNodeFinished,
    WorkflowNodeStarted,
    WorkflowRetryRequested,
    new_event,
)

GOLDEN = Path(__file__).parent / "golden" / "v1_log.jsonl"
GOLDEN_SHA256 = "ec9da517c5c0970ae5512e2a386d83ab25e82bb464a4eb7cb4fb92f86e290a51"
GOLDEN_ACTOR = Path(__file__).parent / "golden" / "v2_actor_log.jsonl"
GOLDEN_ACTOR_SHA256 = "022b47d795f1fbc3316e15b6ea7b126ba53360d53902c80442904b7e9067a58f"
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
TID = uuid.UUID("00000000-0000-4000-8000-00000000c0de")

SAMPLES: dict[EventType, EventData] = {
    EventType.CREATED: TaskCreated(title="t", type="sleep", payload={"seconds": 1, "n": [1, 2]},
                                   priority=3, max_attempts=5, timeout_s=2.5),
    EventType.PROCESSING: TaskProcessing(worker_id="host-1"),
    EventType.PROGRESS: TaskProgress(percent=42, message="almost half"),
    EventType.DONE: TaskDone(result={"message": "hi", "nested": [1, None, 2.5]}),
    EventType.FAILED: TaskFailed(error="boom", reason="timeout"),
    EventType.RETRY_SCHEDULED: TaskRetryScheduled(error="flaky", not_before=T0, delay_s=1.5),
    EventType.CANCEL_REQUESTED: TaskCancelRequested(reason="user"),
    EventType.CANCELLED: TaskCancelled(reason="cancel requested"),
    EventType.DEAD_LETTERED: TaskDeadLettered(error="exhausted"),
    EventType.REDRIVEN: TaskRedriven(reason="fixed the handler"),
    EventType.ERASED: TaskErased(actor="tenant:acme", reason="erasure request"),
    EventType.SCHEDULE_CREATED: ScheduleCreated(
        name="n", cron="30 2 * * *", timezone="Europe/Berlin",
        task=ScheduleTask(title="t", payload={"a": 1}), overlap="skip", catchup="latest"),
    EventType.SCHEDULE_UPDATED: ScheduleUpdated(name="n", every_s=60.0,
                                                task=ScheduleTask(title="t")),
    EventType.SCHEDULE_PAUSED: SchedulePaused(),
    EventType.SCHEDULE_RESUMED: ScheduleResumed(),
    EventType.SCHEDULE_DELETED: ScheduleDeleted(),
    EventType.SCHEDULE_FIRED: ScheduleFired(due_at=T0, task_id=TID),
    EventType.WORKFLOW_CREATED: WorkflowCreated(name="w", tasks=[
        WorkflowNode(key="a", title="A"), WorkflowNode(key="b", title="B", depends_on=["a"])]),
    EventType.WORKFLOW_NODE_STARTED: WorkflowNodeStarted(key="a", round=0, task_id=TID),
    EventType.WORKFLOW_NODE_FINISHED: WorkflowNodeFinished(key="a", round=0, task_id=TID,
                                                           status="DONE", result={"x": 1}),
    EventType.WORKFLOW_CANCEL_REQUESTED: WorkflowCancelRequested(reason="r"),
    EventType.WORKFLOW_RETRY_REQUESTED: WorkflowRetryRequested(round=1),
    EventType.WORKFLOW_FINISHED: WorkflowFinished(round=0, status="DONE", nodes={"a": "DONE"}),
}


def test_samples_cover_every_event_type() -> None:
    assert set(SAMPLES) == set(EventType)


@pytest.mark.parametrize("etype", list(EventType))
def test_round_trip(etype: EventType) -> None:
    event = new_event(SAMPLES[etype], task_id=TID, source="test", attempt=2, tenant="acme",
                      time=T0)
    raw = encode(event)
    doc = orjson.loads(raw)
    assert doc["type"] == etype.value and doc["subject"] == str(TID)
    assert doc["specversion"] == "1.0" and doc["schemaversion"] == SCHEMA_VERSIONS[etype]
    back = decode(raw)
    assert back == event
    assert type(back.data) is type(event.data)
    assert back.time == T0 and back.time.tzinfo is not None
    assert encode(back) == raw


def _raw(**over: Any) -> bytes:
    """A valid task.progress record, with some envelope fields replaced (None drops one)."""
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "test",
        "type": "task.progress",
        "subject": str(TID),
        "time": "2024-05-01T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {"percent": 10},
        "schemaversion": 1,
        "attempt": 1,
    }
    doc.update(over)
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def test_the_valid_base_record_decodes() -> None:
    # The negative cases below each change one thing of this record.
    assert decode(_raw()).data == TaskProgress(percent=10)


@pytest.mark.parametrize(("raw", "error"), [
    pytest.param(None, "no value", id="none"),
    pytest.param(b"", "not JSON", id="empty"),
    pytest.param(b"\xff{not json", "not JSON", id="not-json"),
    pytest.param(b"[1, 2]", "not a JSON object", id="array"),
    pytest.param(b'"task.done"', "not a JSON object", id="string"),
    pytest.param(_raw(type="task.archived"), "unknown event type", id="unknown-type"),
    pytest.param(_raw(type=None), "unknown event type", id="no-type"),
    pytest.param(_raw(type=["task.done"]), "unknown event type", id="type-not-a-string"),
    pytest.param(_raw(data=[1]), "data is not a JSON object", id="data-array"),
    pytest.param(_raw(data="10%"), "data is not a JSON object", id="data-string"),
    pytest.param(_raw(data=None), "data is not a JSON object", id="no-data"),
    pytest.param(_raw(data={"percent": 150}), "invalid task.progress", id="percent-150"),
    pytest.param(_raw(data={"percent": 10, "eta": 3}), "invalid task.progress", id="extra-field"),
    pytest.param(_raw(type="task.created", data={"payload": {}}, schemaversion=2),
                 "invalid task.created", id="created-without-title"),
    pytest.param(_raw(schemaversion=2), "newer", id="newer-schemaversion"),
    pytest.param(_raw(type="task.created", data={"title": "t"}, schemaversion=3), "newer",
                 id="newer-created-schemaversion"),
    pytest.param(_raw(schemaversion=0), "no upcaster", id="schemaversion-0"),
    pytest.param(_raw(schemaversion="1"), "not an integer", id="schemaversion-string"),
    pytest.param(_raw(schemaversion=1.0), "not an integer", id="schemaversion-float"),
    pytest.param(_raw(subject="not-a-uuid"), "invalid task.progress", id="bad-subject"),
    pytest.param(_raw(attempt=-1), "invalid task.progress", id="negative-attempt"),
    pytest.param(_raw(specversion="0.3"), "invalid task.progress", id="old-specversion"),
])
def test_decode_rejects(raw: bytes | None, error: str) -> None:
    with pytest.raises(UndecodableEvent) as info:
        decode(raw)
    assert error in info.value.error
    assert info.value.raw == raw  # the caller parks the record with its original bytes


def test_decode_rejects_boolean_schemaversion() -> None:
    with pytest.raises(UndecodableEvent):
        decode(_raw(schemaversion=True))


def test_schemaversion_defaults_to_1_when_absent() -> None:
    raw = _raw(type="task.created", data={"title": "old", "params": {"a": 1}}, schemaversion=None)
    event = decode(raw)
    assert isinstance(event.data, TaskCreated) and event.data.payload == {"a": 1}


def test_upcasts_created_v1_params_to_payload_with_priority_0() -> None:
    raw = _raw(type="task.created", schemaversion=1,
               data={"title": "old", "type": "echo", "params": {"message": "hello"}})
    event = decode(raw)
    assert event.schemaversion == SCHEMA_VERSIONS[EventType.CREATED] == 2
    assert event.data == TaskCreated(title="old", type="echo", payload={"message": "hello"},
                                     priority=0)
    written = orjson.loads(encode(event))
    assert written["schemaversion"] == 2
    assert written["data"]["payload"] == {"message": "hello"} and "params" not in written["data"]


def test_upcasts_created_v1_without_params_to_empty_payload() -> None:
    event = decode(_raw(type="task.created", data={"title": "old"}, schemaversion=1))
    assert isinstance(event.data, TaskCreated)
    assert (event.data.payload, event.data.priority) == ({}, 0)


def test_created_v2_with_params_is_rejected() -> None:
    # "params" only exists in v1; at v2 it is an unknown field, not silently dropped.
    with pytest.raises(UndecodableEvent, match=r"invalid task\.created"):
        decode(_raw(type="task.created", data={"title": "t", "params": {}}, schemaversion=2))


# ---------------------------------------------------------------- golden log of release 0.0


def _golden_lines() -> list[bytes]:
    return GOLDEN.read_bytes().splitlines()


def test_golden_log_is_unchanged() -> None:
    digest = hashlib.sha256(GOLDEN.read_bytes().replace(b"\r\n", b"\n")).hexdigest()
    assert digest == GOLDEN_SHA256, "tests/golden/v1_log.jsonl must never be edited"


def test_golden_log_is_all_schema_v1_with_params() -> None:
    docs = [orjson.loads(line) for line in _golden_lines()]
    assert 0 < len(docs) < 20
    assert all(d["schemaversion"] == 1 for d in docs)
    created = [d for d in docs if d["type"] == "task.created"]
    assert len(created) == 3
    assert all("params" in d["data"] and "payload" not in d["data"] for d in created)


def test_golden_log_decodes_and_folds() -> None:
    per_task: dict[uuid.UUID, list[CloudEvent]] = defaultdict(list)
    for line in _golden_lines():
        event = decode(line)
        assert event.schemaversion == SCHEMA_VERSIONS[event.type]
        assert decode(encode(event)) == event
        per_task[event.subject].append(event)
    states = {tid: fold(events) for tid, events in per_task.items()}

    echo_ok = states[uuid.UUID("11111111-1111-4111-8111-111111111111")]
    assert echo_ok is not None
    assert (echo_ok.title, echo_ok.type, echo_ok.status) == ("say hello", "echo", TaskStatus.DONE)
    assert echo_ok.payload == {"message": "hello"} and echo_ok.priority == 0
    assert (echo_ok.result, echo_ok.error, echo_ok.attempt) == ("hello", None, 1)
    assert echo_ok.finished_at == datetime(2024, 3, 1, 9, 0, 5, tzinfo=UTC)

    echo_bad = states[uuid.UUID("22222222-2222-4222-8222-222222222222")]
    assert echo_bad is not None
    assert echo_bad.status is TaskStatus.FAILED and echo_bad.payload == {}
    assert echo_bad.error == "payload has no 'message' field" and echo_bad.result is None

    crashed = states[uuid.UUID("33333333-3333-4333-8333-333333333333")]
    assert crashed is not None
    assert (crashed.type, crashed.payload) == ("compute", {"fibonacci": 10})
    assert (crashed.status, crashed.result, crashed.attempt) == (TaskStatus.DONE, 55, 2)
    assert crashed.created_at == datetime(2024, 3, 1, 9, 0, 3, tzinfo=UTC)
    assert crashed.updated_at == datetime(2024, 3, 1, 9, 0, 31, tzinfo=UTC)
    assert all(s is not None and s.tenant is None for s in states.values())


# ------------------------------------------------------- golden log with the actor attribute


def test_golden_actor_log_is_unchanged() -> None:
    digest = hashlib.sha256(GOLDEN_ACTOR.read_bytes().replace(b"\r\n", b"\n")).hexdigest()
    assert digest == GOLDEN_ACTOR_SHA256, "tests/golden/v2_actor_log.jsonl must never be edited"


def test_golden_actor_log_decodes_verbatim_and_folds() -> None:
    per_task: dict[uuid.UUID, list[CloudEvent]] = defaultdict(list)
    actors = []
    for line in GOLDEN_ACTOR.read_bytes().splitlines():
        event, verbatim = decode_verbatim(line)
        assert verbatim and encode(event) == line  # exactly as TaskFlow writes it today
        actors.append((event.type.value, event.actor))
        per_task[event.subject].append(event)
    assert [a for t, a in actors if t in ("task.created", "task.redriven",
                                          "task.cancel_requested")] == [
        "3f9a0c1b2d4e", None, "cli:ops", "anonymous", "anonymous"]
    # Services write none: the worker's events leave the attribute out.
    assert all(a is None for t, a in actors if t in (
        "task.processing", "task.done", "task.failed", "task.dead_lettered", "task.cancelled"))
    states = {tid: fold(events) for tid, events in per_task.items()}
    by_key, before, anonymous = (states[uuid.UUID(f"{c * 8}-{c * 4}-4{c * 3}-8{c * 3}-{c * 12}")]
                                 for c in "abc")
    assert by_key is not None and by_key.status is TaskStatus.DONE
    assert by_key.created_by == "3f9a0c1b2d4e"
    # Submitted before events carried an actor: nobody, and the redrive does not count.
    assert before is not None and before.status is TaskStatus.DONE and before.created_by is None
    assert anonymous is not None and anonymous.status is TaskStatus.CANCELLED
    assert anonymous.created_by == "anonymous"


def test_actor_is_left_out_unless_set_and_null_is_not_verbatim() -> None:
    plain = new_event(TaskCancelled(), task_id=TID, source="taskflow/worker/w", time=T0)
    assert b'"actor"' not in encode(plain)
    by = new_event(TaskCancelRequested(), task_id=TID, source="taskflow/api", time=T0,
                   actor="3f9a0c1b2d4e")
    raw = encode(by)
    assert orjson.loads(raw)["actor"] == "3f9a0c1b2d4e"
    assert decode_verbatim(raw) == (by, True)
    # An explicit null decodes, but re-encoding would drop it: not the bytes as written.
    doc = orjson.loads(encode(plain))
    event, verbatim = decode_verbatim(orjson.dumps({**doc, "actor": None}))
    assert event == plain and not verbatim
