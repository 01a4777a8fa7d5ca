"""The workflow fold, its checks and the coordinator's plan, without any I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from events.models import (
    CloudEvent,
    EventData,
    WorkflowCancelRequested,
    WorkflowCreated,
    WorkflowFinished,
    WorkflowNode,
    WorkflowNodeFinished,
    WorkflowNodeStarted,
    WorkflowRetryRequested,
    new_event,
)
from events.workflows import (
    BadWorkflow,
    WorkflowState,
    apply_workflow,
    check,
    node_task_id,
    plan,
)

WID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
_t = 0


def ev(data: EventData) -> CloudEvent:
    global _t
    _t += 1
    return new_event(data, task_id=WID, source="test", time=T0 + timedelta(seconds=_t))


def node(key: str, *deps: str) -> WorkflowNode:
    return WorkflowNode(key=key, title=key.upper(), payload={"message": key},
                        depends_on=list(deps))


DIAMOND = [node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c")]


def created(nodes: list[WorkflowNode], on_failure: str = "fail_fast") -> WorkflowState:
    st = apply_workflow(None, ev(WorkflowCreated(name="w", tasks=nodes,
                                                 on_failure=on_failure)))
    assert st is not None
    return st


def start(st: WorkflowState, *keys: str) -> WorkflowState:
    for k in keys:
        n = st.nodes[k]
        new = apply_workflow(st, ev(WorkflowNodeStarted(key=k, round=n.round,
                                                        task_id=n.task_id)))
        assert new is not None
        st = new
    return st


def finish(st: WorkflowState, key: str, status: str = "DONE", result: object = None
           ) -> WorkflowState:
    n = st.nodes[key]
    new = apply_workflow(st, ev(WorkflowNodeFinished(
        key=key, round=n.round, task_id=n.task_id, status=status,
        result=result)))
    assert new is not None
    return new


def skip(st: WorkflowState) -> WorkflowState:
    """Apply the plan's skips, as the coordinator writes them."""
    for key, rnd, reason in plan(st, set()).skip:
        new = apply_workflow(st, ev(WorkflowNodeFinished(key=key, round=rnd,
                                                         status="CANCELLED", reason=reason)))
        assert new is not None
        st = new
    return st


def started_keys(st: WorkflowState) -> list[str]:
    return [spec.key for spec, *_ in plan(st, set()).start]


def test_check_orders_parents_first() -> None:
    order = check(DIAMOND)
    assert order.index("a") < order.index("b") < order.index("d")
    assert order.index("c") < order.index("d")


def test_check_names_the_cycle() -> None:
    with pytest.raises(BadWorkflow) as exc:
        check([node("a", "c"), node("b", "a"), node("c", "b"), node("x")])
    cycle = exc.value.extra["cycle"]
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"} and len(cycle) == 4
    assert "cycle" in exc.value.message


def test_check_names_an_unknown_key_and_a_self_loop() -> None:
    with pytest.raises(BadWorkflow) as exc:
        check([node("a", "nope")])
    assert exc.value.extra["unknown_key"] == "nope"
    assert exc.value.loc == ["body", "tasks", 0, "depends_on", 0]
    with pytest.raises(BadWorkflow) as exc:
        check([node("a", "a")])
    assert exc.value.extra["cycle"] == ["a", "a"]


def test_check_takes_a_deep_chain() -> None:
    chain = [node("n0")] + [node(f"n{i}", f"n{i - 1}") for i in range(1, 1000)]
    assert check(chain)[0] == "n0"


def test_diamond_runs_in_order_and_d_sees_both_results() -> None:
    st = created(DIAMOND)
    assert started_keys(st) == ["a"]
    assert st.nodes["a"].task_id == node_task_id(WID, "a", 0)
    st = start(st, "a")
    assert started_keys(st) == []  # a is running
    st = finish(st, "a", result="ra")
    assert sorted(started_keys(st)) == ["b", "c"]
    st = finish(start(st, "b", "c"), "b", result="rb")
    assert started_keys(st) == []  # c is not done yet
    st = finish(st, "c", result="rc")
    [(spec, tid, rnd, payload)] = plan(st, set()).start
    assert spec.key == "d" and rnd == 0 and tid == node_task_id(WID, "d", 0)
    assert payload == {"message": "d", "parents": {"b": "rb", "c": "rc"}}
    st = finish(start(st, "d"), "d", result="rd")
    assert st.status == "DONE" and st.finished_at is not None
    assert plan(st, set()).finish
    st2 = apply_workflow(st, ev(WorkflowFinished(round=0, status="DONE", nodes={})))
    assert st2 is not None and not plan(st2, set()).finish


def test_issued_nodes_are_not_started_twice() -> None:
    st = created(DIAMOND)
    assert started_keys(st) == ["a"]
    assert plan(st, {("a", 0)}).start == []


def test_repeated_and_stale_node_events_change_nothing() -> None:
    st = finish(start(created(DIAMOND), "a"), "a", result="ra")
    again = apply_workflow(st, ev(WorkflowNodeFinished(key="a", round=0, status="FAILED")))
    assert again is not None and again.nodes["a"].status == "DONE"
    stale = apply_workflow(st, ev(WorkflowNodeStarted(key="b", round=3,
                                                      task_id=uuid.uuid4())))
    assert stale is not None and stale.nodes["b"].status == "WAITING"


def test_fail_fast_skips_everything_not_started() -> None:
    nodes = [node("a"), node("b"), node("c", "a"), node("d", "b")]
    st = start(created(nodes, "fail_fast"), "a", "b")
    st = finish(st, "a", "FAILED")
    st = skip(st)
    assert st.nodes["c"].status == "CANCELLED" and st.nodes["c"].reason == "upstream_failed"
    assert st.nodes["d"].status == "CANCELLED"  # not a dependant, skipped all the same
    assert st.status == "RUNNING"  # b still runs
    st = finish(st, "b")
    assert st.status == "FAILED"


def test_continue_runs_what_does_not_depend_on_the_failure() -> None:
    nodes = [node("a"), node("b"), node("c", "a"), node("e", "c"), node("d", "b")]
    st = start(created(nodes, "continue"), "a", "b")
    st = finish(st, "a", "FAILED")
    st = skip(st)
    assert {k: st.nodes[k].status for k in "ce"} == {"c": "CANCELLED", "e": "CANCELLED"}
    assert st.nodes["e"].reason == "upstream_failed"
    st = finish(st, "b")
    assert started_keys(st) == ["d"]
    st = finish(start(st, "d"), "d")
    assert st.status == "FAILED"
    assert st.summary() == {"FAILED": 1, "CANCELLED": 2, "DONE": 2}


def test_retry_reruns_failed_and_dependants_keeping_done() -> None:
    nodes = [node("a"), node("b", "a"), node("c"), node("d", "b", "c")]
    st = start(created(nodes, "continue"), "a", "c")
    st = finish(st, "c", result="rc")
    st = finish(st, "a", result="ra")
    st = finish(start(st, "b"), "b", "FAILED")
    st = skip(st)
    assert st.status == "FAILED"
    retried = apply_workflow(st, ev(WorkflowRetryRequested(round=1)))
    assert retried is not None
    assert retried.round == 1 and retried.status == "RUNNING"
    assert retried.nodes["a"] == st.nodes["a"] and retried.nodes["c"] == st.nodes["c"]
    assert retried.nodes["b"].status == "WAITING" and retried.nodes["b"].round == 1
    assert retried.nodes["b"].task_id == node_task_id(WID, "b", 1)
    assert retried.nodes["d"].task_id == node_task_id(WID, "d", 1)
    [(spec, _, rnd, payload)] = plan(retried, set()).start
    assert spec.key == "b" and rnd == 1 and payload["parents"] == {"a": "ra"}
    twice = apply_workflow(retried, ev(WorkflowRetryRequested(round=1)))
    assert twice == retried
    # The coordinator's workflow.finished of round 0, landing after the retry, is stale.
    late = apply_workflow(retried, ev(WorkflowFinished(round=0, status="FAILED", nodes={})))
    assert late == retried and plan(retried, set()).finish is False


def test_cancel_skips_waiting_and_cancels_running() -> None:
    st = start(created(DIAMOND), "a")
    st2 = apply_workflow(st, ev(WorkflowCancelRequested()))
    assert st2 is not None and st2.cancel_requested
    p = plan(st2, set())
    assert p.cancel == [st.nodes["a"].task_id]
    assert {k for k, _, r in p.skip if r == "workflow_cancelled"} == {"b", "c", "d"}
    st2 = skip(st2)
    st2 = finish(st2, "a", "CANCELLED")
    assert st2.status == "CANCELLED"


def test_an_invalid_created_from_elsewhere_creates_nothing() -> None:
    bad = WorkflowCreated(name="w", tasks=[node("a", "b"), node("b", "a")])
    assert apply_workflow(None, ev(bad)) is None
