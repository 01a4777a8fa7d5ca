"""Erasure by crypto-shredding at the API (events/crypto.py).

* Sealing: with ``TASKFLOW_ENCRYPTION_KEY`` set, the producer's ``before_append`` hook
  seals each ``task.created`` payload with a new data key for its task, before the event
  is appended (and re-links it on the audit chain, which covers the ciphertext).
* Reading: ``reveal_rows`` and ``reveal_events`` show the plaintext while the key
  exists, and ``{"$erased": true}`` once it is gone.
* ``DELETE /tasks/{id}/data`` deletes the task's key and appends ``task.erased`` with
  its actor.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request

from api.auth import TenantDep
from api.deps import DbDep, FeedDep, LogDep, SettingsDep
from api.problems import NotFound, documented
from api.reads import wait_for_task
from events import chain, chain_db, constants, crypto, keystore, queries
from events.models import CloudEvent, EventType, TaskCreated, TaskErased, new_event

router = APIRouter()


def sealer(keyring: keystore.Keyring) -> Any:
    """The producer hook that seals payloads of ``task.created`` events."""

    async def seal(events: Sequence[CloudEvent]) -> Sequence[CloudEvent]:
        todo = {e.subject: e.tenant for e in events if e.type is EventType.CREATED
                and not crypto.is_sealed(e.data.payload)}  # type: ignore[attr-defined]
        if not todo:
            return events
        keys = await keyring.create(todo)
        out = []
        for e in events:
            if e.subject in todo and e.type is EventType.CREATED:
                d = e.data
                assert isinstance(d, TaskCreated)
                data = d.model_copy(update={
                    "payload": crypto.seal_value(keys[e.subject], e.subject, "payload",
                                                 d.payload)})
                sealed = e.model_copy(update={"data": data})
                if e.chainhash is not None:  # the chain covers the ciphertext
                    sealed = chain.seal(sealed, e.chainprev or chain.GENESIS)
                e = sealed
            out.append(e)
        return out

    return seal


def _keyring(request: Request) -> keystore.Keyring | None:
    return getattr(request.app.state, "keyring", None)


async def reveal_rows(request: Request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Task rows with sealed ``payload``/``result`` opened, or marked erased."""
    return await open_rows(_keyring(request), rows)


async def open_rows(ring: keystore.Keyring | None,
                    rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sealed = [r for r in rows if crypto.is_sealed(r.get("payload"))
              or crypto.is_sealed(r.get("result"))]
    if not sealed:
        return rows
    keys = await ring.keys([r["task_id"] for r in sealed]) if ring is not None else {}
    out = []
    for r in rows:
        tid = r["task_id"]
        if crypto.is_sealed(r.get("payload")) or crypto.is_sealed(r.get("result")):
            key = keys.get(tid)
            r = {**r, "payload": crypto.reveal(r["payload"], key, tid, "payload"),
                 "result": crypto.reveal(r.get("result"), key, tid, "result")}
        out.append(r)
    return out


async def reveal_events(request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History items (CloudEvents) with their sealed fields opened, or marked erased."""
    ring = _keyring(request)
    if ring is None or not items:
        return [crypto.reveal_event(it, {}) for it in items]
    keys = await ring.keys(list({uuid.UUID(str(it["subject"])) for it in items}))
    return [crypto.reveal_event(it, keys) for it in items]


@router.delete("/tasks/{task_id}/data", status_code=202, tags=["tasks"],
               responses=documented(404, 503))
async def erase_task_data(task_id: uuid.UUID, producer: LogDep, db: DbDep, feed: FeedDep,
                          settings: SettingsDep, tenant: TenantDep) -> dict[str, Any]:
    """Erase the task's payload and result for good (its data key is deleted) and
    record it as a ``task.erased`` event; type, status and times stay."""
    row = await wait_for_task(db, feed, task_id, settings.read_wait_s, tenant=tenant)
    if row is None:
        raise NotFound(f"no task {task_id}")
    [pos] = await append_erased(producer, db, [task_id], actor=_actor(tenant.name, tenant.key_id),
                                tenants={task_id: row["tenant"]}, by=tenant.actor)
    return {"task_id": str(task_id), "erased": True,
            "position": {"partition": pos.partition, "offset": pos.offset}}


def _actor(name: str | None, key_id: str | None) -> str:
    who = f"tenant:{name}" if name else "api"
    return f"{who} key:{key_id}" if key_id else who


async def append_erased(producer: Any, db: Any, task_ids: list[uuid.UUID], *, actor: str,
                        tenants: dict[uuid.UUID, str | None], by: str,
                        source: str = constants.API_SOURCE) -> list[Any]:
    """Delete each task's key, then append its ``task.erased`` (where the task lives).
    ``actor`` is the data's description of who asked; ``by`` the envelope's ``actor``."""
    for t in task_ids:
        await keystore.erase(db, task_id=t)
    heads = await chain_db.heads(db, task_ids) if chain.enabled() else {}
    events = [chain.seal(new_event(TaskErased(actor=actor), task_id=t, source=source,
                                   tenant=tenants.get(t), actor=by),
                         heads.get(t, chain.GENESIS))
              for t in task_ids]
    parts = await queries.task_partitions(db, task_ids=task_ids)
    return list(await producer.append(events, partitions=[parts.get(t) for t in task_ids]))
