"""Read-your-writes for the routes, and who may see a task.

A task accepted a moment ago, on this API instance or another, may not be projected
yet: these wait (bounded) for the projection instead of answering 404, woken by the
change feed rather than polling Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from api.auth import Tenant
from api.deps import DbDep
from api.feed import ChangeFeed, Filter
from api.problems import Unavailable
from events import queries
from events.settings import Settings


def visible(owner: str | None, tenant: Tenant) -> bool:
    """Another tenant's task is not found, not forbidden: its existence is not leaked."""
    return not tenant.scoped or owner == tenant.name


async def reach(db: DbDep, feed: ChangeFeed, settings: Settings,
                min_position: str | None) -> None:
    """Read-your-writes across API instances: wait until the projection has applied it.

    The checkpoints are read again only when the feed wakes up (the projector notified a
    commit, or the feed's poll came round), and once per wake-up for every waiting
    request of this process, never on a timer per request.
    """
    if min_position is None:
        return
    p, o = (int(x) for x in min_position.split(":"))
    deadline = time.monotonic() + settings.read_wait_s

    async def read() -> dict[int, int]:
        return await queries.checkpoints(db, projection=settings.projection,
                                         topic=settings.topic)

    while True:
        tick, cps = await feed.applied(read)
        if cps.get(p, 0) > o:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unavailable(f"the projection has not reached {min_position} yet",
                              retry_after=1)
        await feed.next_tick(tick, remaining)


async def wait_for_task(db: DbDep, feed: ChangeFeed, task_id: uuid.UUID,
                        wait_s: float, *, tenant: Tenant | None = None
                        ) -> dict[str, Any] | None:
    """Read-your-writes: a task accepted a moment ago may not be projected yet.

    Waits for the feed to see a change of this task (its row commits with it), then
    reads once; no query on a timer. With ``tenant``, a task it may not see counts as
    missing and is waited for just as long: answering another tenant's task at once and a
    missing one after the wait would tell a caller which ids exist.
    """
    def seen(row: dict[str, Any] | None) -> bool:
        return row is not None and (tenant is None or visible(row["tenant"], tenant))

    row = await queries.get_task(db, task_id=task_id)
    if seen(row) or wait_s <= 0:
        return row if seen(row) else None
    deadline = time.monotonic() + wait_s
    # Watching starts before the second read: a change committed after the read reaches
    # the watcher, one committed before it is in what the read sees.
    with feed.watch(Filter(task_ids=frozenset({task_id}))) as sub:
        row = await queries.get_task(db, task_id=task_id)
        while not seen(row):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), remaining)
            sub.wake.clear()
            sub.pending.clear()
            row = await queries.get_task(db, task_id=task_id)
    return row
