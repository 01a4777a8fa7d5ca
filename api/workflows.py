"""Workflow routes: submit a DAG, read, list, cancel, retry from the point of failure,
and a workflow's live stream.

Every change is an event on the workflow topic (``events.workflows``); the coordinator
folds them into the ``workflows`` table, which the reads serve, and starts the nodes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import Tenant, TenantDep
from api.dashboard import CSP, STATIC
from api.deps import DbDep, SettingsDep
from api.problems import BadRequest, Conflict, Invalid, NotFound, documented, for_log_down
from api.reads import visible
from api.schemas import TaskIn
from api.submit import check_type
from api.tasks import parse_as_of
from events import constants, workflow_db
from events.codec import decode, encode
from events.errors import LogUnavailable, UndecodableEvent
from events.log import EventProducer, LogReader, ensure_topic, partition_for, task_key
from events.models import (
    EventData,
    WorkflowCancelRequested,
    WorkflowCreated,
    WorkflowNode,
    WorkflowRetryRequested,
    new_event,
)
from events.queries import decode_cursor, encode_cursor
from events.settings import Settings
from events.workflows import (
    MAX_NODES,
    BadWorkflow,
    WorkflowState,
    apply_workflow,
    check,
    node_task_id,
    workflow_topic,
)

router = APIRouter()

KEY_PATTERN = r"^[A-Za-z0-9_.:-]+$"
WORKFLOW_IDEMPOTENCY_NS = uuid.UUID("5d0b8e4a-1f6c-4a92-9e37-b8c2d4f61a07")
_recent_keyed: OrderedDict[uuid.UUID, str] = OrderedDict()  # id -> digest, not projected yet
RECENT_KEYED_MAX = 1000
STREAM_POLL_S = 0.25  # seconds between two looks at a streamed workflow
_ANY = object()  # "any tenant" in a listing


class WorkflowTaskIn(TaskIn):
    """A node: a task body with its ``key`` and the keys it depends on."""

    key: str = Field(min_length=1, max_length=100, pattern=KEY_PATTERN)
    depends_on: list[str] = Field(default_factory=list, max_length=MAX_NODES)

    @model_validator(mode="after")
    def _plain(self) -> WorkflowTaskIn:
        if self.run_at is not None or self.delay_s is not None or self.callback_url:
            raise ValueError("a workflow's task takes no run_at, delay_s or callback_url")
        return self


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "diamond", "on_failure": "fail_fast", "tasks": [
            {"key": "a", "title": "A", "payload": {"message": "a"}},
            {"key": "b", "title": "B", "payload": {"message": "b"}, "depends_on": ["a"]},
            {"key": "c", "title": "C", "payload": {"message": "c"}, "depends_on": ["a"]},
            {"key": "d", "title": "D", "payload": {"message": "d"},
             "depends_on": ["b", "c"]}]}]})

    name: str = Field(min_length=1, max_length=200)
    tasks: list[WorkflowTaskIn] = Field(min_length=1, max_length=MAX_NODES)
    on_failure: Literal["fail_fast", "continue"] = "fail_fast"


def _json(body: Any) -> bytes:
    return orjson.dumps(body, default=str)


def _digest(body: WorkflowIn) -> str:
    return hashlib.sha256(orjson.dumps(body.model_dump(mode="json"),
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()


async def _append(request: Request, data: EventData, wid: uuid.UUID,
                  tenant: str | None, *, actor: str) -> None:
    """Append a workflow event (``LogUnavailable`` if Kafka did not ack)."""
    state = request.app.state
    settings: Settings = state.settings
    producer: EventProducer = state.producer
    topic = workflow_topic(settings.topic)
    if not getattr(state, "workflow_topic_ready", False):
        await ensure_topic(settings.kafka_bootstrap, topic, settings.partitions)
        state.workflow_topic_ready = True
    ev = new_event(data, task_id=wid, source=constants.API_SOURCE, tenant=tenant,
                   actor=actor)
    try:
        await producer.append_raw(topic, task_key(wid), encode(ev))
    except LogUnavailable:
        raise
    except Exception as exc:  # a timeout or a Kafka error: the write may still land
        raise LogUnavailable(repr(exc)) from None


async def _row(db: DbDep, wid: uuid.UUID, tenant: Tenant, wait_s: float) -> dict[str, Any]:
    """The workflow, waiting (bounded) for one submitted a moment ago to be projected.
    Another tenant's workflow waits as long as a missing one, so neither tells a caller
    which ids exist."""
    deadline = time.monotonic() + wait_s
    while True:
        row = await workflow_db.get(db, workflow_id=wid)
        if row is not None and visible(row["tenant"], tenant):
            return row
        if time.monotonic() >= deadline:
            raise NotFound(f"no workflow {wid}")
        await asyncio.sleep(0.05)


async def _out(db: DbDep, row: dict[str, Any]) -> dict[str, Any]:
    """A workflow as ``GET /workflows/{id}`` shows it: each started node with its task's
    current status (``task_status``) next to the node's own."""
    out = {k: v for k, v in row.items() if k not in ("digest", "spec")}
    nodes = row["nodes"]
    live = await workflow_db.task_statuses(
        db, [uuid.UUID(n["task_id"]) for n in nodes.values() if n["status"] == "STARTED"])
    view = []
    for s in row["spec"]:  # in the order submitted (JSONB keeps no key order)
        n = nodes[s["key"]]
        task_status = (live.get(uuid.UUID(n["task_id"])) if n["status"] == "STARTED"
                       else None)
        view.append({"key": s["key"], **n, "task_status": task_status,
                     "title": s["title"], "depends_on": s["depends_on"]})
    out["nodes"] = view
    return out


@router.post("/workflows", status_code=202, tags=["workflows"],
             responses=documented(401, 422, 503))
async def submit_workflow(
    body: WorkflowIn, request: Request, db: DbDep, settings: SettingsDep, tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="the same key (per tenant) names the same workflow")] = None,
) -> Response:
    """Submit a DAG of tasks; answers ``202 {workflow_id, tasks: {key: task_id}}``.

    A node starts once every node in its ``depends_on`` is DONE, and finds their results
    in ``payload.parents`` (``{key: result}``). A cycle or an unknown key is a 422 that
    names it (``cycle``, ``unknown_key``)."""
    for i, t in enumerate(body.tasks):
        check_type(t, settings, ["body", "tasks", i])
    nodes = [WorkflowNode(**t.model_dump(include={
        "key", "title", "type", "payload", "priority", "max_attempts", "timeout_s",
        "depends_on"})) for t in body.tasks]
    try:
        check(nodes)
    except BadWorkflow as exc:
        raise Invalid(exc.message, errors=[{"loc": exc.loc, "msg": exc.message,
                                            "type": "workflow", **exc.extra}],
                      **exc.extra) from None
    digest = _digest(body)
    headers: dict[str, str] = {}
    if idempotency_key is None:
        wid = uuid.uuid4()
    else:
        wid = uuid.uuid5(WORKFLOW_IDEMPOTENCY_NS, f"{tenant.name or ''}\n{idempotency_key}")
        row = await workflow_db.get(db, workflow_id=wid)
        known = row["digest"] if row is not None else _recent_keyed.get(wid)
        if known is not None:
            if known != digest:
                raise Invalid("Idempotency-Key was already used with a different body",
                              errors=[{"loc": ["header", "Idempotency-Key"],
                                       "msg": "reused with a different body",
                                       "type": "idempotency"}])
            headers["Idempotent-Replayed"] = "true"
    tasks = {n.key: str(node_task_id(wid, n.key, 0)) for n in nodes}
    if not headers:
        try:
            await _append(request, WorkflowCreated(name=body.name, on_failure=body.on_failure,
                                                   tasks=nodes, digest=digest),
                          wid, tenant.name, actor=tenant.actor)
        except LogUnavailable as exc:
            return for_log_down(request, exc, workflow_id=str(wid))
        if idempotency_key is not None:
            _recent_keyed[wid] = digest
            while len(_recent_keyed) > RECENT_KEYED_MAX:
                _recent_keyed.popitem(last=False)
    # A replay answers 200, as a keyed task submit does.
    return Response(_json({"workflow_id": str(wid), "tasks": tasks}),
                    status_code=200 if headers else 202,
                    media_type="application/json",
                    headers={"Location": f"/workflows/{wid}", **headers})


@router.get("/workflows", tags=["workflows"], responses=documented(400, 401, 422))
async def list_workflows(
    db: DbDep, settings: SettingsDep, tenant: TenantDep,
    status: Annotated[Literal["RUNNING", "DONE", "FAILED", "CANCELLED"] | None,
                      Query()] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Workflows newest first, with a status summary; ``next_cursor`` pages like tasks."""
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ValueError:
            raise BadRequest("cursor is not valid") from None
    lim = min(limit, settings.list_limit_max)
    rows = await workflow_db.listing(db, tenant=tenant.name if tenant.scoped else _ANY,
                                     any_tenant=_ANY, status=status, name=name,
                                     after=after, limit=lim + 1)
    nxt = None
    if len(rows) > lim:
        rows = rows[:lim]
        nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["workflow_id"])
    return Response(_json({"items": rows, "next_cursor": nxt}),
                    media_type="application/json")


async def _state_at(settings: Settings, wid: uuid.UUID, point: datetime | tuple[int, int]
                    ) -> WorkflowState | None:
    """The workflow as its events up to ``point`` (a time or a position) leave it, folded
    from its partition of the workflow topic."""
    reader = LogReader(bootstrap=settings.kafka_bootstrap, topic=workflow_topic(settings.topic))
    try:
        parts = await reader.start()
    except LogUnavailable:
        return None
    key = task_key(wid)
    state: WorkflowState | None = None
    try:
        p = partition_for(wid, len(parts))
        bounds = await reader.bounds()
        for q in parts:
            if q != p:
                reader.pause(q)
        first, end = bounds[p]
        reader.seek(p, first)
        while await reader.position(p) < end:
            for r in await reader.poll(timeout_ms=200):
                if r.partition != p or r.offset >= end or r.key != key:
                    continue
                try:
                    ev = decode(r.value)
                except UndecodableEvent:
                    continue
                if (r.partition, r.offset) > point if isinstance(point, tuple) \
                        else ev.time > point:
                    return state
                state = apply_workflow(state, ev)
    finally:
        await reader.stop()
    return state


@router.get("/workflows/{workflow_id}", tags=["workflows"], responses=documented(404, 422))
async def get_workflow(
    workflow_id: uuid.UUID, db: DbDep, settings: SettingsDep, tenant: TenantDep,
    as_of: Annotated[str | None, Query(
        max_length=64, description="RFC 3339 time, or PARTITION:OFFSET: the workflow then",
        examples=["2026-11-22T10:00:00Z", "3:41"])] = None,
) -> Response:
    """A workflow: its status, round, summary, and every node with its status, task id,
    result, error and ``reason`` (``upstream_failed`` for a skipped node). With
    ``as_of``, as it was then (folded from the workflow topic)."""
    if as_of is not None:
        point = parse_as_of(as_of)
        st = await _state_at(settings, workflow_id, point)
        if st is None or not visible(st.tenant, tenant):
            raise NotFound(f"workflow {workflow_id} did not exist at {as_of}")
        row = workflow_db.row(st, 0, 0)
        del row["partition"], row["last_offset"], row["finished_round"]
        out = await _out(db, row)
        for n in out["nodes"]:
            n["task_status"] = None  # the task's status now would not be "then"
        return Response(_json(out), media_type="application/json")
    row = await _row(db, workflow_id, tenant, settings.read_wait_s)
    return Response(_json(await _out(db, row)), media_type="application/json")


@router.post("/workflows/{workflow_id}/cancel", status_code=202, tags=["workflows"],
             responses=documented(404, 409, 503))
async def cancel_workflow(workflow_id: uuid.UUID, request: Request, db: DbDep,
                          settings: SettingsDep, tenant: TenantDep) -> Response:
    """Cancel: nodes not started end CANCELLED, running ones are asked to cancel."""
    row = await _row(db, workflow_id, tenant, settings.read_wait_s)
    if row["status"] != "RUNNING":
        raise Conflict(f"workflow {workflow_id} is already {row['status']}")
    try:
        await _append(request, WorkflowCancelRequested(reason="cancel requested"),
                      workflow_id, row["tenant"], actor=tenant.actor)
    except LogUnavailable as exc:
        return for_log_down(request, exc, workflow_id=str(workflow_id))
    return Response(_json({"workflow_id": str(workflow_id), "status": "RUNNING",
                           "cancel_requested": True}), status_code=202,
                    media_type="application/json")


@router.post("/workflows/{workflow_id}/retry", status_code=202, tags=["workflows"],
             responses=documented(404, 409, 503))
async def retry_workflow(workflow_id: uuid.UUID, request: Request, db: DbDep,
                         settings: SettingsDep, tenant: TenantDep) -> Response:
    """Redrive from the point of failure: the FAILED and CANCELLED nodes, and every node
    that depends on one, run again as a new round (new task ids); DONE nodes keep their
    result. Answers ``{workflow_id, round, tasks: {key: task_id}}`` for the nodes rerun."""
    row = await _row(db, workflow_id, tenant, settings.read_wait_s)
    if row["status"] not in ("FAILED", "CANCELLED"):
        raise Conflict(f"workflow {workflow_id} is {row['status']}: only a FAILED or "
                       f"CANCELLED workflow is retried")
    rnd = row["round"] + 1
    bad = {k for k, n in row["nodes"].items() if n["status"] in ("FAILED", "CANCELLED")}
    kids: dict[str, list[str]] = {s["key"]: [] for s in row["spec"]}
    for s in row["spec"]:
        for p in s["depends_on"]:
            kids[p].append(s["key"])
    redo, todo = set(bad), list(bad)
    while todo:
        for c in kids[todo.pop()]:
            if c not in redo:
                redo.add(c)
                todo.append(c)
    try:
        await _append(request, WorkflowRetryRequested(round=rnd), workflow_id, row["tenant"],
                      actor=tenant.actor)
    except LogUnavailable as exc:
        return for_log_down(request, exc, workflow_id=str(workflow_id))
    tasks = {k: str(node_task_id(workflow_id, k, rnd)) for k in row["nodes"] if k in redo}
    return Response(_json({"workflow_id": str(workflow_id), "round": rnd, "tasks": tasks}),
                    status_code=202, media_type="application/json")


@functools.cache
def _page() -> str:
    return (STATIC / "workflow.html").read_text(encoding="utf-8")


@router.get("/ui/workflows/{workflow_id}", response_class=HTMLResponse,
            include_in_schema=False)
async def workflow_page(workflow_id: uuid.UUID) -> HTMLResponse:
    """The dashboard's workflow page: the DAG, with live node statuses."""
    return HTMLResponse(_page().replace("__WORKFLOW_ID__", str(workflow_id)),
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff"})


RETRY_HORIZON = 10  # rounds past the current one whose node tasks /events?workflow_id= keeps


async def stream_task_ids(db: DbDep, wid: uuid.UUID, tenant: Tenant,
                          wait_s: float) -> list[uuid.UUID]:
    """The node tasks ``/events?workflow_id=`` follows: every node's, in every round up
    to ``RETRY_HORIZON`` retries past the current one (their ids are known already)."""
    row = await _row(db, wid, tenant, wait_s)
    return [node_task_id(wid, s["key"], r) for r in range(row["round"] + RETRY_HORIZON + 1)
            for s in row["spec"]]


def _node_view(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["key"]: n for n in out["nodes"]}


@router.get("/workflows/{workflow_id}/stream", tags=["workflows", "stream"],
            response_class=EventSourceResponse, responses=documented(404))
async def stream_workflow(workflow_id: uuid.UUID, db: DbDep, settings: SettingsDep,
                          tenant: TenantDep) -> EventSourceResponse:
    """Server-Sent Events: a ``snapshot`` of the workflow, then a ``node`` event for each
    node change and a ``workflow`` event for each change of its status; the stream ends
    after the workflow reached DONE, FAILED or CANCELLED."""
    first = await _out(db, await _row(db, workflow_id, tenant, settings.read_wait_s))

    async def events() -> AsyncIterator[ServerSentEvent]:
        cur = first
        yield ServerSentEvent(_json(cur).decode(), event="snapshot")
        while cur["status"] == "RUNNING":
            await asyncio.sleep(STREAM_POLL_S)
            row = await workflow_db.get(db, workflow_id=workflow_id)
            if row is None:
                continue
            new = await _out(db, row)
            old_nodes = _node_view(cur)
            for key, n in _node_view(new).items():
                if n != old_nodes.get(key):
                    yield ServerSentEvent(_json({"workflow_id": str(workflow_id), **n}).decode(),
                                          event="node")
            if new["status"] != cur["status"] or new["round"] != cur["round"]:
                yield ServerSentEvent(_json({k: v for k, v in new.items()
                                             if k != "nodes"}).decode(), event="workflow")
            cur = new

    return EventSourceResponse(events(), ping=int(settings.sse_heartbeat_s))
