"""A worker's row in ``worker_pools`` (events/pool_registry.py): written when it starts,
again every ``TASKFLOW_WORKER_POOL_REFRESH_S`` from its main loop, deleted at a clean stop.

The write runs beside the loop, never inside it: a slow or absent Postgres delays the
row, not the tasks. While Postgres is away the worker runs on, and its row lapses; the
API then says that no pool serves its types, which is what it can tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from events import pool_registry
from events.db import DB_ERRORS, make_engine

log = logging.getLogger("taskflow.worker")

CLOSE_TIMEOUT_S = 5.0  # seconds the delete of the row gets at a clean stop
_CLOSE_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, TimeoutError)


@dataclass
class Registration:
    """Keeps ``worker_id``'s row of ``pool`` serving ``types`` alive.

    :param interval_s: seconds between two writes; the row holds for
        ``pool_registry.LAPSE_INTERVALS`` of them.
    """

    database_url: str
    worker_id: str
    pool: str
    types: tuple[str, ...]
    interval_s: float
    _engine: AsyncEngine | None = field(default=None, repr=False)
    _next: float = 0.0
    _writing: asyncio.Task[None] | None = field(default=None, repr=False)
    _failing: bool = False

    def tick(self) -> None:
        """Call from the worker's loop: writes the row when it is due (in the background)."""
        now = time.monotonic()
        if now < self._next or (self._writing is not None and not self._writing.done()):
            return
        self._next = now + self.interval_s
        self._writing = asyncio.create_task(self._write())

    async def _write(self) -> None:
        if self._engine is None:
            self._engine = make_engine(self.database_url, pool_size=1)
        try:
            await pool_registry.register(
                self._engine, worker_id=self.worker_id, pool=self.pool, types=self.types,
                ttl_s=self.interval_s * pool_registry.LAPSE_INTERVALS)
            if self._failing:
                log.info("the worker pool %s is registered again", self.pool)
            self._failing = False
        except Exception as exc:  # Postgres away, or not migrated yet: try again later
            if not self._failing:
                log.warning("cannot register the worker pool %s, retrying: %r", self.pool, exc)
            self._failing = True

    async def close(self) -> None:
        """Delete the row: this worker serves nothing any more."""
        if self._writing is not None:
            if self._failing:  # Postgres is away: the row lapses on its own
                self._writing.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._writing, CLOSE_TIMEOUT_S)
        if self._engine is None:
            return
        if self._failing:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._engine.dispose(), CLOSE_TIMEOUT_S)
            return
        try:
            await asyncio.wait_for(
                pool_registry.unregister(self._engine, worker_id=self.worker_id),
                CLOSE_TIMEOUT_S)
        except _CLOSE_ERRORS as exc:  # it lapses on its own
            log.warning("cannot unregister the worker pool %s: %r", self.pool, exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._engine.dispose(), CLOSE_TIMEOUT_S)
