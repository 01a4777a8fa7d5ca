"""The worker's slots: who runs next when one frees up.

A worker runs at most ``worker_concurrency`` tasks at once. Every task it has read and
that may start (its partitions' whole backlog, up to ``worker_queue_max``) waits here for
a slot, so the order of the log does not decide the order of work:

1. **Priority first.** The highest waiting ``priority`` gets the next slot, whatever
   partition it came from and however long the backlog in front of it in the log.
2. **Then fair share between tenants.** Among the waiters of that priority, the tenant
   holding the fewest slots for its weight goes first (weights default to 1, settable
   with ``TASKFLOW_TENANT_WEIGHTS``); a tie goes to the tenant served least so far, so
   two tenants of equal weight alternate. One tenant's flood therefore takes every slot
   only while nobody else waits.
3. **Then arrival order** within one tenant and priority.

Waiting costs a future and a place in a deque, never a slot: a task waiting for its
``not_before`` (a delayed task, a retry's backoff) does not even get here until it is due.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

Tenant = str | None


@dataclass
class Gate:
    """``slots`` slots, granted by priority, then by weighted fair share, then in order.

    :param slots: how many tasks may hold a slot at once.
    :param weights: a tenant's share relative to others (default ``default_weight``).
    """

    slots: int
    weights: dict[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    free: int = 0
    held: dict[Tenant, int] = field(default_factory=dict)  # slots each tenant holds
    served: dict[Tenant, float] = field(default_factory=dict)  # grants / weight, so far
    queued: dict[Tenant, int] = field(default_factory=dict)  # waiters each tenant has
    waiting: int = 0  # futures waiting, across every priority and tenant
    _levels: dict[int, dict[Tenant, deque[asyncio.Future[None]]]] = field(
        default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.free = self.slots

    def weight(self, tenant: Tenant) -> float:
        return self.weights.get(tenant or "", self.default_weight)

    @contextlib.asynccontextmanager
    async def slot(self, priority: int, tenant: Tenant) -> AsyncIterator[None]:
        await self.acquire(priority, tenant)
        try:
            yield
        finally:
            self.release(tenant)

    async def acquire(self, priority: int, tenant: Tenant) -> None:
        if self.free > 0 and not self.waiting:  # the common case when work keeps up
            self._grant(tenant)
            return
        if not self.queued.get(tenant) and not self.held.get(tenant):
            # A tenant coming back is not owed the turns it skipped while away: it starts
            # level with the least-served active tenant, or it would take every slot.
            active = [self.served.get(t, 0.0) for t in self.queued.keys() | self.held.keys()
                      if self.queued.get(t) or self.held.get(t)]
            if active:
                self.served[tenant] = max(self.served.get(tenant, 0.0), min(active))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._levels.setdefault(priority, {}).setdefault(tenant, deque()).append(fut)
        self.waiting += 1
        self.queued[tenant] = self.queued.get(tenant, 0) + 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(tenant)  # granted just as it was cancelled: pass it on
            else:
                fut.cancel()  # left in its deque; _next skips it
                self.waiting -= 1
                self.queued[tenant] -= 1
            raise

    def release(self, tenant: Tenant) -> None:
        self.free += 1
        self.held[tenant] -= 1
        self._dispatch()

    def _grant(self, tenant: Tenant) -> None:
        self.free -= 1
        self.held[tenant] = self.held.get(tenant, 0) + 1
        self.served[tenant] = self.served.get(tenant, 0.0) + 1.0 / self.weight(tenant)

    def _dispatch(self) -> None:
        while self.free > 0 and self.waiting:
            tenant, fut = self._next()
            self.waiting -= 1
            self.queued[tenant] -= 1
            self._grant(tenant)
            fut.set_result(None)

    def _next(self) -> tuple[Tenant, asyncio.Future[None]]:
        """The next live waiter; drops cancelled ones and emptied levels on the way."""
        while True:
            priority = max(self._levels)
            tenants = self._levels[priority]
            tenant = min(tenants, key=lambda t: (self.held.get(t, 0) / self.weight(t),
                                                 self.served.get(t, 0.0)))
            q = tenants[tenant]
            fut = q.popleft()
            if not q:
                del tenants[tenant]
                if not tenants:
                    del self._levels[priority]
            if not fut.done():
                return tenant, fut
