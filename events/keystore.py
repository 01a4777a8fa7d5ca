"""Data keys of tasks (``task_keys``), wrapped with the master key (events/crypto.py).

Not a read model: the log cannot hold a key that must be deletable, so the processes
that seal or read sealed fields (API, worker, ``taskflow replay``/``erase``) keep keys
here. Keys are never cached across requests: an erasure takes effect at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from events import crypto
from events.tables import task_keys


@dataclass
class Keyring:
    """The master key and where the wrapped data keys are."""

    master: bytes
    engine: AsyncEngine
    _queue: list[tuple[Mapping[uuid.UUID, str | None], asyncio.Future[dict[uuid.UUID, bytes]]]] = (
        field(default_factory=list, repr=False))
    _flusher: asyncio.Task[None] | None = field(default=None, repr=False)

    async def create(self, tasks: Mapping[uuid.UUID, str | None]) -> dict[uuid.UUID, bytes]:
        """A data key for each task (tenant given): a new one, or the one it already has
        (a resubmit with the same Idempotency-Key names the same task).

        Group commit: each insert waits for its WAL flush, so the keys of submits that
        arrive while one insert is under way go together in the next one."""
        if not tasks:
            return {}
        fut: asyncio.Future[dict[uuid.UUID, bytes]] = asyncio.get_running_loop().create_future()
        self._queue.append((tasks, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            merged: dict[uuid.UUID, str | None] = {}
            for tasks, _ in batch:
                merged.update(tasks)
            try:
                keys = await self._insert(merged)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for tasks, fut in batch:
                if not fut.done():
                    fut.set_result({t: keys[t] for t in tasks})

    async def _insert(self, tasks: Mapping[uuid.UUID, str | None]) -> dict[uuid.UUID, bytes]:
        rows = [{"task_id": t, "tenant": tenant,
                 "wrapped": crypto.wrap(self.master, t, crypto.new_key())}
                for t, tenant in tasks.items()]
        q = insert(task_keys).values(rows)
        q = q.on_conflict_do_update(index_elements=["task_id"],
                                    set_={"task_id": q.excluded.task_id})
        async with self.engine.begin() as conn:
            res = await conn.execute(q.returning(task_keys.c.task_id, task_keys.c.wrapped))
            return {t: crypto.unwrap(self.master, t, bytes(w)) for t, w in res.all()}

    async def keys(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        """The data keys that still exist, of these tasks."""
        if not task_ids:
            return {}
        q = select(task_keys.c.task_id, task_keys.c.wrapped).where(
            task_keys.c.task_id.in_(list(set(task_ids))))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {t: crypto.unwrap(self.master, t, bytes(w)) for t, w in rows}


async def erase(engine: AsyncEngine, *, task_id: uuid.UUID | None = None,
                tenant: str | None = None) -> list[uuid.UUID]:
    """Delete the data key of one task, or of every task of a tenant; the tasks whose
    key this deleted."""
    q = delete(task_keys)
    q = q.where(task_keys.c.task_id == task_id) if task_id is not None else q.where(
        task_keys.c.tenant == tenant)
    async with engine.begin() as conn:
        return [r[0] for r in (await conn.execute(q.returning(task_keys.c.task_id))).all()]
