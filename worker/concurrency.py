"""A worker's side of concurrency keys: take a lease before a keyed task takes a slot,
give it back once the task's end is committed (events/leases.py holds the rules).

The lease goes back only after the lane's transaction with the task's terminal (or
retry) event has committed, so in the log no more than ``max_concurrency`` tasks of a
key are ever between their ``task.processing`` and their end. Within one worker, one
waiter per key asks Postgres at a time; the others queue behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field

from events import leases
from events.db import DB_ERRORS

log = logging.getLogger("taskflow.worker")

POLL_S = 0.1  # seconds between two asks for a key whose places are all taken
RETRY_CAP_S = 5.0  # seconds between two asks, at most, while Postgres is away


@dataclass
class Leases:
    """The leases one worker holds, renewed while held.

    :param database_url: the Postgres holding ``concurrency_leases``.
    :param holder: who holds them (the worker's event source).
    """

    database_url: str
    holder: str
    held: dict[uuid.UUID, str] = field(default_factory=dict)  # task -> key
    _pool: leases.Pool | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _waiting: dict[str, int] = field(default_factory=dict)
    _renewer: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _get_pool(self) -> leases.Pool:
        if self._pool is None:  # only once a keyed task shows up
            self._pool = await leases.open_pool(self.database_url)
            self._renewer = asyncio.create_task(self._renew())
        return self._pool

    async def acquire(self, key: str, limit: int, task_id: uuid.UUID) -> None:
        """Return once ``task_id`` holds one of ``limit`` places under ``key``."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with lock:
                delay = POLL_S
                while True:
                    try:
                        if await leases.take(await self._get_pool(), key=key, task_id=task_id,
                                             holder=self.holder, limit=limit):
                            self.held[task_id] = key
                            return
                        delay = POLL_S
                    except DB_ERRORS as exc:
                        log.warning("cannot take a lease on %r, retrying: %r", key, exc)
                        delay = min(RETRY_CAP_S, delay * 2)
                    await asyncio.sleep(delay)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                self._locks.pop(key, None)

    def release_soon(self, task_id: uuid.UUID) -> None:
        """Give back ``task_id``'s lease (call once its end is committed)."""
        key = self.held.pop(task_id, None)
        if key is None or self._pool is None:
            return
        t = asyncio.create_task(self._release(key, task_id))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _release(self, key: str, task_id: uuid.UUID) -> None:
        assert self._pool is not None
        try:
            await leases.release(self._pool, key=key, task_id=task_id)
        except DB_ERRORS as exc:  # it lapses on its own after LEASE_TTL_S
            log.warning("cannot release the lease of %s on %r: %r", task_id, key, exc)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(leases.LEASE_TTL_S / 3)
            if self.held and self._pool is not None:
                try:
                    await leases.renew(self._pool, holder=self.holder)
                except DB_ERRORS as exc:
                    log.warning("cannot renew leases: %r", exc)

    async def close(self) -> None:
        """Give back every lease: none of this worker's tasks runs any more."""
        if self._renewer is not None:
            self._renewer.cancel()
        if self._pool is None:
            return
        with contextlib.suppress(*DB_ERRORS):
            for key, task_id in [(k, t) for t, k in self.held.items()]:
                await leases.release(self._pool, key=key, task_id=task_id)
        self.held.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.close(), 5)
