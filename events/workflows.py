"""Workflows as a fold, and what the coordinator does next.

A workflow lives on the workflow topic (``workflow_topic``), keyed by its id: the API's
``workflow.created|cancel_requested|retry_requested`` and the coordinator's
``workflow.node_started|node_finished|finished``. ``apply_workflow`` folds them into a
``WorkflowState``; the coordinator, the ``workflows`` projection, ``projections
verify|rebuild`` and the API all use it. ``plan`` is the coordinator's decision, a pure
function of the state.

Nodes
=====
A node is ``WAITING`` until the coordinator starts its task (``STARTED``), then ends
``DONE``, ``FAILED`` or ``CANCELLED``. A node whose parent failed or was cancelled is
skipped: it ends ``CANCELLED`` with the reason ``upstream_failed`` and never becomes a
task (its task id stays unused). Under ``fail_fast`` every node not yet started is
skipped as soon as any node failed; under ``continue`` only the failure's dependants.

A node's task id is ``node_task_id(workflow_id, key, round)``: a coordinator that starts a
node again (after a crash, or a second owner) names the same task. Round 0 is the first
run; ``workflow.retry_requested`` with round r+1 puts every FAILED or CANCELLED node, and
everything that depends on one, back to ``WAITING`` in round r+1 (new task ids). DONE
nodes keep their result. Node events carry their round, so one of an older round is
ignored.

A started node's handler gets its parents' results in its payload as
``payload["parents"] = {key: result}`` (roots run with the payload as given).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict

from events.models import (
    CloudEvent,
    EventType,
    WorkflowCreated,
    WorkflowFinished,
    WorkflowNode,
    WorkflowNodeFinished,
    WorkflowNodeStarted,
    WorkflowRetryRequested,
)

WORKFLOW_TOPIC_SUFFIX: Final = ".workflows"  # workflows live on <topic>.workflows
WORKFLOW_PROJECTION: Final = "workflows"  # name of the projection in projector_offsets
NODE_NS: Final = uuid.UUID("7c4e2b1d-9a3f-4c58-b6e1-2f8d0a5c7e93")  # uuid5 of node tasks
MAX_NODES: Final = 1000  # nodes of one workflow, at most
PARENTS_FIELD: Final = "parents"  # payload field a node's handler finds its parents in
# Bytes of a node's task.created at most: its payload carries the parents' results, and
# a record over Kafka's default limit (1 MiB) would fail the coordinator's transaction
# every time it tried; such a node fails instead, with the reason ``parents_too_large``.
NODE_EVENT_MAX: Final = 900 * 1024
PARENTS_TOO_LARGE: Final = "parents_too_large"
UPSTREAM_FAILED: Final = "upstream_failed"
WORKFLOW_CANCELLED: Final = "workflow_cancelled"

NodeStatus = Literal["WAITING", "STARTED", "DONE", "FAILED", "CANCELLED"]
WorkflowStatus = Literal["RUNNING", "DONE", "FAILED", "CANCELLED"]
NODE_ENDED: Final = frozenset({"DONE", "FAILED", "CANCELLED"})


def workflow_topic(topic: str) -> str:
    """The workflow topic that goes with the task topic ``topic``."""
    return topic + WORKFLOW_TOPIC_SUFFIX


def node_task_id(workflow_id: uuid.UUID, key: str, round: int) -> uuid.UUID:
    """The task id of node ``key`` in ``round``: the same for every coordinator."""
    return uuid.uuid5(NODE_NS, f"{workflow_id}/{round}/{key}")


class BadWorkflow(ValueError):
    """A definition that cannot run: ``loc`` points at the culprit in the body."""

    def __init__(self, message: str, loc: list[str | int], **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.extra = extra

    def __repr__(self) -> str:
        return f"BadWorkflow({self.message!r}, {self.loc!r})"


def check(nodes: list[WorkflowNode]) -> list[str]:
    """The keys in a topological order; ``BadWorkflow`` for a duplicate or unknown key,
    or a cycle (named in ``extra["cycle"]``, first key repeated at the end)."""
    index: dict[str, int] = {}
    for i, n in enumerate(nodes):
        if n.key in index:
            raise BadWorkflow(f"duplicate key {n.key!r}", ["body", "tasks", i, "key"])
        index[n.key] = i
    for i, n in enumerate(nodes):
        for j, d in enumerate(n.depends_on):
            if d not in index:
                raise BadWorkflow(f"task {n.key!r} depends on unknown key {d!r}",
                                  ["body", "tasks", i, "depends_on", j], unknown_key=d)
            if d == n.key:
                raise BadWorkflow(f"cycle: {n.key} -> {n.key}",
                                  ["body", "tasks", i, "depends_on", j], cycle=[d, d])
    # Depth-first search with an explicit stack (1,000 nodes would pass Python's limit).
    color: dict[str, int] = {}  # 1 = on the path, 2 = done
    order: list[str] = []
    parents = {n.key: n.depends_on for n in nodes}
    for root in parents:
        if root in color:
            continue
        path: list[str] = [root]
        stack: list[Iterator[str]] = [iter(parents[root])]
        color[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                done = path.pop()
                stack.pop()
                color[done] = 2
                order.append(done)
                continue
            c = color.get(nxt)
            if c == 1:
                cycle = [*path[path.index(nxt):], nxt][::-1]
                raise BadWorkflow(f"cycle: {' -> '.join(cycle)}",
                                  ["body", "tasks", index[nxt], "depends_on"], cycle=cycle)
            if c is None:
                color[nxt] = 1
                path.append(nxt)
                stack.append(iter(parents[nxt]))
    return order  # parents before children


class NodeState(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    round: int = 0
    task_id: uuid.UUID
    status: NodeStatus = "WAITING"
    result: Any = None
    error: str | None = None
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class WorkflowState(BaseModel):
    """One workflow as its events leave it; also what the ``workflows`` table holds."""

    model_config = ConfigDict(frozen=True)

    workflow_id: uuid.UUID
    tenant: str | None = None
    spec: WorkflowCreated
    order: list[str]  # topological
    nodes: dict[str, NodeState]
    round: int = 0
    status: WorkflowStatus = "RUNNING"
    cancel_requested: bool = False
    finished_round: int | None = None  # the round a workflow.finished was written for
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes.values():
            out[n.status] = out.get(n.status, 0) + 1
        return out


def _outcome(state: WorkflowState, nodes: dict[str, NodeState]) -> WorkflowStatus:
    if any(n.status not in NODE_ENDED for n in nodes.values()):
        return "RUNNING"
    if all(n.status == "DONE" for n in nodes.values()):
        return "DONE"
    return "CANCELLED" if state.cancel_requested else "FAILED"


def _with_nodes(state: WorkflowState, ev: CloudEvent, nodes: dict[str, NodeState],
                **update: Any) -> WorkflowState:
    st = state.model_copy(update={**update, "nodes": nodes, "updated_at": ev.time})
    status = _outcome(st, nodes)
    if status == "RUNNING":
        fin = None
    elif st.status == "RUNNING":
        fin = ev.time  # this event ended it
    else:
        fin = st.finished_at
    return st.model_copy(update={"status": status, "finished_at": fin})


def apply_workflow(state: WorkflowState | None, ev: CloudEvent) -> WorkflowState | None:
    """Fold one workflow event. Total: unknown or out-of-place events change nothing."""
    t, d = ev.type, ev.data
    if t is EventType.WORKFLOW_CREATED:
        if state is not None:
            return state  # a duplicate created (an Idempotency-Key replay): the first wins
        assert isinstance(d, WorkflowCreated)
        try:
            order = check(d.tasks)
        except BadWorkflow:
            return None  # the API refuses these; one from elsewhere creates nothing
        wid = ev.subject
        nodes = {n.key: NodeState(key=n.key, task_id=node_task_id(wid, n.key, 0))
                 for n in d.tasks}
        return WorkflowState(workflow_id=wid, tenant=ev.tenant, spec=d, order=order,
                             nodes=nodes, created_at=ev.time, updated_at=ev.time)
    if state is None:
        return None
    if t is EventType.WORKFLOW_NODE_STARTED:
        assert isinstance(d, WorkflowNodeStarted)
        node = state.nodes.get(d.key)
        if node is None or node.round != d.round or node.status != "WAITING":
            return state
        nodes = {**state.nodes, d.key: node.model_copy(update={
            "status": "STARTED", "started_at": ev.time})}
        return _with_nodes(state, ev, nodes)
    if t is EventType.WORKFLOW_NODE_FINISHED:
        assert isinstance(d, WorkflowNodeFinished)
        node = state.nodes.get(d.key)
        if node is None or node.round != d.round or node.status in NODE_ENDED:
            return state
        nodes = {**state.nodes, d.key: node.model_copy(update={
            "status": d.status, "result": d.result, "error": d.error, "reason": d.reason,
            "finished_at": ev.time})}
        return _with_nodes(state, ev, nodes)
    if t is EventType.WORKFLOW_CANCEL_REQUESTED:
        if state.cancel_requested or state.status != "RUNNING":
            return state
        return _with_nodes(state, ev, state.nodes, cancel_requested=True)
    if t is EventType.WORKFLOW_RETRY_REQUESTED:
        assert isinstance(d, WorkflowRetryRequested)
        if d.round != state.round + 1 or state.status == "RUNNING":
            return state  # a second retry of the same round, or one while running
        redo = descendants(state, {k for k, n in state.nodes.items()
                                   if n.status in ("FAILED", "CANCELLED")})
        nodes = dict(state.nodes)
        for k in redo:
            nodes[k] = NodeState(key=k, round=d.round,
                                 task_id=node_task_id(state.workflow_id, k, d.round))
        return _with_nodes(state, ev, nodes, round=d.round, cancel_requested=False,
                           finished_at=None, status="RUNNING")
    if t is EventType.WORKFLOW_FINISHED:
        assert isinstance(d, WorkflowFinished)
        if d.round != state.round:
            return state  # of a round a retry has replaced since
        return state.model_copy(update={"finished_round": d.round})
    return state


def children(state: WorkflowState) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {n.key: [] for n in state.spec.tasks}
    for n in state.spec.tasks:
        for p in n.depends_on:
            out[p].append(n.key)
    return out


def descendants(state: WorkflowState, keys: set[str]) -> set[str]:
    """``keys`` and every node that depends on one of them, directly or not."""
    kids = children(state)
    seen = set(keys)
    todo = list(keys)
    while todo:
        for c in kids[todo.pop()]:
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


@dataclass
class Plan:
    """What the coordinator writes next for one workflow."""

    start: list[tuple[WorkflowNode, uuid.UUID, int, dict[str, Any]]] = field(
        default_factory=list)  # node, task id, round, payload
    skip: list[tuple[str, int, str]] = field(default_factory=list)  # key, round, reason
    cancel: list[uuid.UUID] = field(default_factory=list)  # task ids to cancel
    finish: bool = False


def plan(state: WorkflowState, issued: set[tuple[str, int]]) -> Plan:
    """The next steps of ``state``. ``issued`` holds the (key, round) of nodes started or
    skipped already, whose events have not been folded in yet: they are left alone."""
    out = Plan()
    if state.status != "RUNNING":
        out.finish = state.finished_round != state.round
        return out
    status = {k: n.status for k, n in state.nodes.items()}
    failed = any(s == "FAILED" for s in status.values())
    fail_fast = state.spec.on_failure == "fail_fast"
    specs = {n.key: n for n in state.spec.tasks}
    for key in state.order:
        node = state.nodes[key]
        if node.status == "STARTED" and state.cancel_requested:
            out.cancel.append(node.task_id)
        if node.status != "WAITING" or (key, node.round) in issued:
            continue
        spec = specs[key]
        reason: str | None = None
        if state.cancel_requested:
            reason = WORKFLOW_CANCELLED
        elif any(status[p] in ("FAILED", "CANCELLED") for p in spec.depends_on) or (
                fail_fast and failed):
            reason = UPSTREAM_FAILED
        if reason is not None:
            out.skip.append((key, node.round, reason))
            status[key] = "CANCELLED"  # its own dependants are skipped in this plan too
            continue
        if all(status[p] == "DONE" for p in spec.depends_on):
            payload = dict(spec.payload)
            if spec.depends_on:
                payload[PARENTS_FIELD] = {p: state.nodes[p].result for p in spec.depends_on}
            out.start.append((spec, node.task_id, node.round, payload))
    return out
