"""The core of ``POST /tasks`` and ``POST /tasks:batch``: accept tasks into the log.

One implementation for the route (``api/tasks.py``) and for the fast path
(``api/fastpath.py``), which answers unkeyed submits without FastAPI's layers. Both hand
it a validated ``TaskIn`` and the caller's tenant; it checks the task type, appends
``task.created`` and answers 202 once Kafka acknowledged, or 503 naming the task id(s)
the append may still create. ``Idempotency-Key`` submits are handled here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections import Counter, OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from api import erasure, metrics, task_callback
from api.auth import Tenant
from api.problems import BASE, Invalid, Problem, for_log_down
from api.schemas import BatchItemIn, PositionOut, TaskAccepted, TaskIn
from events import chain, constants, guards, ids, queries
from events.errors import LogUnavailable
from events.log import EventProducer
from events.models import CloudEvent, Position, TaskCreated, TaskStatus, new_event
from events.settings import Settings

IDEMPOTENCY_NS = uuid.UUID("6f1c3e52-7d0a-4b8e-9a4f-1d2c3b4a5e6f")  # namespace for uuid5 ids


def check_type(body: TaskIn, settings: Settings, loc: list[str | int]) -> None:
    """422 for a task type this deployment does not run (``TASKFLOW_TASK_TYPES``)."""
    if body.type not in settings.task_type_list:
        raise Invalid(f"unknown task type {body.type!r}",
                      errors=[{"loc": [*loc, "type"], "msg": "unknown task type",
                               "type": "enum", "allowed": settings.task_type_list}])


def created_event(body: TaskIn, task_id: uuid.UUID, tenant: Tenant) -> CloudEvent:
    """The ``task.created`` of a submitted task (delayed: with its ``run_at``)."""
    run_at = body.run_at
    if body.delay_s is not None:
        run_at = datetime.now(UTC) + timedelta(seconds=body.delay_s)
    ev = new_event(
        TaskCreated(title=body.title, type=body.type, payload=body.payload,
                    priority=body.priority, max_attempts=body.max_attempts,
                    timeout_s=body.timeout_s, run_at=run_at,
                    concurrency_key=body.concurrency_key,
                    max_concurrency=(body.max_concurrency or 1) if body.concurrency_key
                    else None),
        task_id=task_id, source=constants.API_SOURCE, tenant=tenant.name, actor=tenant.actor,
    )
    return chain.seal(ev) if chain.enabled() else ev


def initial_status(body: TaskIn) -> TaskStatus:
    """What a new task reads as: DELAYED when it has a start time, else PENDING."""
    delayed = body.run_at is not None or body.delay_s is not None
    return TaskStatus.DELAYED if delayed else TaskStatus.PENDING


def pending(task_id: uuid.UUID, p: Position,
            status: TaskStatus = TaskStatus.PENDING) -> dict[str, Any]:
    """A new task as ``TaskAccepted`` gives it in JSON, without validating and dumping a
    model we just built."""
    return {"task_id": task_id, "status": status.value,
            "position": {"partition": p.partition, "offset": p.offset}}


def accepted_response(task_id: uuid.UUID, p: Position,
                      status: TaskStatus = TaskStatus.PENDING) -> Response:
    """The 202 of a new task, encoded directly."""
    return Response(orjson.dumps(pending(task_id, p, status)), status_code=202,
                    media_type="application/json", headers={"Location": f"/tasks/{task_id}"})


_SPEC = ("title", "type", "payload", "priority", "max_attempts", "timeout_s")
# Keyed submits of the same task are serialised by a lock striped by task id: a fixed
# number of locks, however many keys clients send (one lock per key grew without end).
# Two keys that share a stripe only wait for each other's lookup and append.
# The stripes live on the app's state: a lock belongs to the event loop it first waited in.
KEY_LOCK_STRIPES = 1024


def _key_locks(state: Any) -> tuple[asyncio.Lock, ...]:
    locks: tuple[asyncio.Lock, ...] | None = getattr(state, "key_locks", None)
    if locks is None:
        locks = state.key_locks = tuple(asyncio.Lock() for _ in range(KEY_LOCK_STRIPES))
    return locks


def key_lock(state: Any, task_id: uuid.UUID) -> asyncio.Lock:
    """The lock that serialises keyed submits of ``task_id`` in this process."""
    return _key_locks(state)[task_id.int % KEY_LOCK_STRIPES]


# Keyed tasks this process appended recently, for retries that come before the projector
# has applied the first task.created: (digest of its spec, position of that task.created).
# A digest, not the spec: 10,000 payloads near the body limit would be gigabytes.
_recent_keyed: OrderedDict[uuid.UUID, tuple[bytes, PositionOut]] = OrderedDict()
RECENT_KEYED_MAX = 10_000


# A submit that answered 503 may still have been appended: the producer keeps the record
# and can deliver it after the deadline. The 503 names the task id(s) it would create.
LOG_DOWN_NOTE = ("the write may still be applied: check GET /tasks/{task_id} before "
                 "submitting again; a submit with an Idempotency-Key can be retried with "
                 "the same key, which names the same task")
KEYED_LOG_DOWN_NOTE = ("the write may still be applied: retry with the same "
                       "Idempotency-Key, which names the same task, or check "
                       "GET /tasks/{task_id}")


def _digest(spec: dict[str, Any]) -> bytes:
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).digest()


def keyed_id(tenant: Tenant, key: str) -> uuid.UUID:
    """The task an ``Idempotency-Key`` names: the same (tenant, key), the same task."""
    return uuid.uuid5(IDEMPOTENCY_NS, f"{tenant.name or ''}\n{key}")


def _key_reused(loc: list[str | int] | None = None) -> Invalid:
    # A new one each time: an exception raised again keeps growing its traceback.
    return Invalid("Idempotency-Key was already used with a different body",
                   errors=[{"loc": loc or ["header", "Idempotency-Key"],
                            "msg": "reused with a different body", "type": "idempotency"}])


async def _keyed_known(state: Any, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """The read model's rows of these keyed tasks (one query for a whole batch)."""
    if not task_ids:
        return {}
    db: AsyncEngine = state.engine
    rows = await queries.get_tasks(db, task_ids=task_ids)
    ring = getattr(state, "keyring", None)
    if ring is not None and rows:  # a sealed payload compares as what was submitted
        rows = dict(zip(rows, await erasure.open_rows(ring, list(rows.values())), strict=True))
    return rows


async def _replay(state: Any, task_id: uuid.UUID, spec: dict[str, Any], digest: bytes,
                  existing: dict[str, Any] | None,
                  loc: list[str | int] | None = None, *,
                  initial: TaskStatus = TaskStatus.PENDING) -> TaskAccepted | None:
    """The earlier acceptance of a keyed task, if there was one; ``Invalid`` if that
    task had another body. Call it holding the task's ``key_lock``."""
    recent = _recent_keyed.get(task_id)
    if existing is None and recent is None:
        return None
    if recent is not None:
        same = recent[0] == digest
    else:
        assert existing is not None
        same = {k: existing[k] for k in _SPEC} == spec
    if not same:
        raise _key_reused(loc)
    if recent is not None:
        position = recent[1]
    else:
        db: AsyncEngine = state.engine
        first = (await queries.task_history(db, task_id=task_id) or [{}])[0]
        position = PositionOut(**first.get("position", {"partition": 0, "offset": 0}))
    status = TaskStatus(existing["status"]) if existing else initial
    return TaskAccepted(task_id=task_id, status=status, position=position)


def _claimed(claim: guards.Claim, task_id: uuid.UUID, digest: bytes,
             loc: list[str | int] | None, initial: TaskStatus) -> TaskAccepted | None:
    """What a key's claim in Postgres says: ``Invalid`` if it was first used with another
    body, its acceptance if that one's ``task.created`` is in the log, else None (append
    it: a first claim, or an earlier append that did not answer)."""
    if claim.digest != digest:
        raise _key_reused(loc)
    if claim.partition is None or claim.offset is None:
        return None
    return TaskAccepted(task_id=task_id, status=initial,
                        position=PositionOut(partition=claim.partition, offset=claim.offset))


def _replayed(replay: TaskAccepted) -> Response:
    return Response(replay.model_dump_json(), status_code=200, media_type="application/json",
                    headers={"Location": f"/tasks/{replay.task_id}",
                             "Idempotent-Replayed": "true"})


def _remember(task_id: uuid.UUID, digest: bytes, p: Position) -> None:
    _recent_keyed[task_id] = (digest, PositionOut(partition=p.partition, offset=p.offset))
    while len(_recent_keyed) > RECENT_KEYED_MAX:
        _recent_keyed.popitem(last=False)


async def accept_task(request: Request, body: TaskIn, tenant: Tenant, *,
                      idempotency_key: str | None = None,
                      task_id: uuid.UUID | None = None) -> Response:
    """Append ``task.created`` and answer once Kafka acknowledged: 202, the 200 replay of
    a keyed task already accepted, or 503 naming the task id. Raises ``Problem``s (an
    unknown type, a key reused with another body)."""
    # The app's state directly, not as dependencies: each one FastAPI solves per request
    # costs CPU on the busiest route.
    state = request.app.state
    settings: Settings = state.settings
    producer: EventProducer = state.producer
    check_type(body, settings, ["body"])
    if body.callback_url is not None:
        # The task's own webhook is in the log before the task, so no event of the task
        # can come before it.
        task_id = (ids.uuid4() if idempotency_key is None else
                   keyed_id(tenant, idempotency_key))
        sub = await task_callback.subscribe(request, body.callback_url, tenant, task_id)
        resp = await accept_task(request, body.model_copy(update={"callback_url": None}),
                                 tenant, idempotency_key=idempotency_key, task_id=task_id)
        return task_callback.with_callback(resp, sub)
    if idempotency_key is None:
        # A fresh random id: nothing to look up, nothing to serialise against.
        task_id = task_id or ids.uuid4()
        try:
            [p] = await producer.append([created_event(body, task_id, tenant)])
        except LogUnavailable as exc:
            return for_log_down(request, exc, task_id=str(task_id), note=LOG_DOWN_NOTE)
        metrics.SUBMITTED.labels(body.type).inc()
        return accepted_response(task_id, p, initial_status(body))
    # Derived id: the same (tenant, key) always names the same task, with no key store.
    task_id = keyed_id(tenant, idempotency_key)
    async with key_lock(state, task_id):
        spec = body.model_dump(include=set(_SPEC))
        digest = _digest(spec)
        known = await _keyed_known(state, [task_id])
        replay = await _replay(state, task_id, spec, digest, known.get(task_id),
                              initial=initial_status(body))
        if replay is not None:
            return _replayed(replay)
        # Another API process may have taken this key a moment ago: the claim in Postgres
        # is what every process agrees on (the lock above only orders this one's).
        async with guards.claim(state.engine, {task_id: digest}) as claims:
            replay = _claimed(claims.found[task_id], task_id, digest, None,
                              initial_status(body))
            if replay is not None:
                return _replayed(replay)
            try:
                [p] = await producer.append([created_event(body, task_id, tenant)])
            except LogUnavailable as exc:
                return for_log_down(request, exc, task_id=str(task_id),
                                   note=KEYED_LOG_DOWN_NOTE)
            claims.settle(task_id, p.partition, p.offset)
        _remember(task_id, digest, p)
    metrics.SUBMITTED.labels(body.type).inc()
    return accepted_response(task_id, p, initial_status(body))


def validation_errors(exc: ValidationError, prefix: list[str | int]) -> list[dict[str, Any]]:
    """pydantic's errors as the API's problem+json lists them (``api/problems.py``)."""
    return [{"loc": [*prefix, *(p if isinstance(p, int) else str(p) for p in e["loc"])],
             "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


async def accept_batch(request: Request, raw: Sequence[Any], tenant: Tenant) -> Response:
    """All of ``raw`` in one append, or none: 202 with each id and position, or 503
    naming every id the append may still create; any invalid task refuses the batch."""
    try:
        tasks = _TASKS.validate_python(raw)
    except ValidationError as exc:
        raise RequestValidationError(validation_errors(exc, ["body", "tasks"])) from None
    settings: Settings = request.app.state.settings
    producer: EventProducer = request.app.state.producer
    for i, t in enumerate(tasks):
        check_type(t, settings, ["body", "tasks", i])
        task_callback.refuse_in_batch(t, i)
    task_ids = [ids.uuid4() for _ in tasks]
    try:
        positions = await producer.append([created_event(t, i, tenant)
                                           for t, i in zip(tasks, task_ids, strict=True)])
    except LogUnavailable as exc:
        return for_log_down(request, exc, task_ids=[str(i) for i in task_ids],
                            note=LOG_DOWN_NOTE)
    for type_, n in Counter(t.type for t in tasks).items():
        metrics.SUBMITTED.labels(type_).inc(n)
    # The documented BatchAccepted, encoded directly: validating and dumping a model per
    # task again would be a good part of a batch's time.
    return Response(orjson.dumps({"items": [
        pending(i, p, initial_status(t))
        for i, p, t in zip(task_ids, positions, tasks, strict=True)]}),
        status_code=202, media_type="application/json")


_TASKS = TypeAdapter(list[TaskIn])


def _item_problem(request: Request, exc: Problem) -> dict[str, Any]:
    return {"type": BASE + exc.kind, "title": exc.title, "status": exc.status,
            "detail": exc.detail, "instance": request.url.path, **exc.extra}


async def accept_batch_partial(request: Request, raw: Sequence[Any],
                               tenant: Tenant) -> Response:
    """Each task of ``raw`` on its own: 207 with, per task, its id and position or its
    problem. Items may carry an ``idempotency_key`` with ``POST /tasks``' meaning: the
    same key names the same task, whether it came alone or in a batch. The accepted ones
    go in one append; if the log does not acknowledge it, 503 names their ids."""
    state = request.app.state
    settings: Settings = state.settings
    producer: EventProducer = state.producer
    out: list[dict[str, Any] | None] = [None] * len(raw)
    todo: list[tuple[int, BatchItemIn, uuid.UUID, bytes | None]] = []
    for i, item in enumerate(raw):
        try:
            t = BatchItemIn.model_validate(item)
            check_type(t, settings, ["body", "tasks", i])
            task_callback.refuse_in_batch(t, i)
        except ValidationError as exc:
            out[i] = {"problem": _item_problem(request, Invalid(
                "the task is not valid",
                errors=validation_errors(exc, ["body", "tasks", i])))}
            continue
        except Problem as exc:
            out[i] = {"problem": _item_problem(request, exc)}
            continue
        if t.idempotency_key is None:
            todo.append((i, t, ids.uuid4(), None))
        else:
            todo.append((i, t, keyed_id(tenant, t.idempotency_key),
                         _digest(t.model_dump(include=set(_SPEC)))))
    locks = sorted({key_lock(state, tid) for _, _, tid, d in todo if d is not None}, key=id)
    async with contextlib.AsyncExitStack() as stack:
        for lock in locks:
            await stack.enter_async_context(lock)
        new: list[tuple[int, BatchItemIn, uuid.UUID, bytes | None]] = []
        first: dict[uuid.UUID, tuple[int, bytes]] = {}  # keyed tasks new in this batch
        known = await _keyed_known(state, [tid for _, _, tid, d in todo if d is not None])
        for i, t, tid, digest in todo:
            if digest is None:
                new.append((i, t, tid, None))
                continue
            seen = first.get(tid)
            if seen is not None:
                if seen[1] != digest:
                    out[i] = {"problem": _item_problem(request, _key_reused(
                        ["body", "tasks", i, "idempotency_key"]))}
                else:
                    out[i] = {"same_as": seen[0]}
                continue
            try:
                replay = await _replay(state, tid, t.model_dump(include=set(_SPEC)), digest,
                                       known.get(tid), ["body", "tasks", i, "idempotency_key"],
                                       initial=initial_status(t))
            except Problem as exc:
                out[i] = {"problem": _item_problem(request, exc)}
                continue
            if replay is not None:
                out[i] = {**replay.model_dump(mode="json"), "replayed": True}
                continue
            first[tid] = (i, digest)
            new.append((i, t, tid, digest))
        keyed = {tid: digest for _, _, tid, digest in new if digest is not None}
        async with guards.claim(state.engine, keyed) as claims:
            fresh = []
            for i, t, tid, digest in new:
                if digest is not None:
                    try:
                        replay = _claimed(claims.found[tid], tid, digest,
                                          ["body", "tasks", i, "idempotency_key"],
                                          initial_status(t))
                    except Problem as exc:
                        out[i] = {"problem": _item_problem(request, exc)}
                        continue
                    if replay is not None:
                        out[i] = {**replay.model_dump(mode="json"), "replayed": True}
                        continue
                fresh.append((i, t, tid, digest))
            new = fresh
            if new:
                try:
                    positions = await producer.append([created_event(t, tid, tenant)
                                                       for _, t, tid, _ in new])
                except LogUnavailable as exc:
                    return for_log_down(request, exc,
                                        task_ids=[str(tid) for _, _, tid, _ in new],
                                        note=KEYED_LOG_DOWN_NOTE)
                for (i, t, tid, digest), p in zip(new, positions, strict=True):
                    out[i] = pending(tid, p, initial_status(t))
                    if digest is not None:
                        _remember(tid, digest, p)
                        claims.settle(tid, p.partition, p.offset)
    for type_, n in Counter(t.type for _, t, _, _ in new).items():
        metrics.SUBMITTED.labels(type_).inc(n)
    for i, o in enumerate(out):
        if o is not None and "same_as" in o:
            out[i] = {**(out[o["same_as"]] or {}), "replayed": True}
    return Response(orjson.dumps({"items": out}), status_code=207,
                    media_type="application/json")
