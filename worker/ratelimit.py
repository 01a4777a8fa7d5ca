"""Rate limits per task type, honoured across the pool.

``TASKFLOW_TYPE_RATE_LIMITS="email=10"`` means at most 10 ``email`` tasks start per second
across every worker of the pool. A task's partition comes from its random id, so each
worker sees a share of every type in proportion to the partitions it owns: a worker
starts a type at ``rate x its partitions / all partitions``, and the shares add up to the
rate however the partitions are spread. No coordination is needed, and a rebalance
changes each share at once. The limit holds over any stretch of time, give or take one
task per worker (a bucket holds one start, so that no burst goes past the rate).

A task waiting for its turn holds no slot: it takes a start from the bucket first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StartRate:
    """Starts of one type at ``rate()`` per second, one at a time, in arrival order."""

    rate: Callable[[], float]
    _next: float = 0.0  # monotonic time the next start is allowed
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def take(self) -> None:
        async with self._lock:
            while True:
                rate = self.rate()
                now = time.monotonic()
                if rate > 0 and now >= self._next:
                    self._next = max(self._next, now) + 1 / rate
                    return
                await asyncio.sleep(max(self._next - now, 0.001) if rate > 0 else 0.1)
