"""Which worker pools are running now, and which task types each serves (``worker_pools``).

Each worker writes one row (``worker/registry.py``): its id, its pool (``events/pools.py``),
the types it serves, and until when the row holds. A worker of a dedicated pool serves
the types of its ``--types`` it has a handler for; a default-pool worker serves the types
it has a handler for minus ``TASKFLOW_POOLED_TYPES``. It writes the row again every
``TASKFLOW_WORKER_POOL_REFRESH_S`` seconds, each time for ``LAPSE_INTERVALS`` of them, and
deletes it at a clean stop; the row of a worker killed outright lapses on its own.

The API reads it: ``/handlers`` lists the pools, and a PENDING task whose type no live
row serves shows why it waits (``waiting_reason``). This is live state, not a projection
of the log: nothing here is rebuilt from it, and ``projections rebuild``/``verify`` leave
it alone. Times are Postgres's ``now()``, so clocks of the hosts do not matter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

LAPSE_INTERVALS: Final = 3  # a row holds for this many refresh intervals
FORGET_S: Final = 3600.0  # rows lapsed this long ago are deleted by the next write

_UPSERT = text("""
INSERT INTO worker_pools (worker_id, pool, types, seen_at, expires_at)
VALUES (:worker_id, :pool, :types, now(), now() + make_interval(secs => :ttl))
ON CONFLICT (worker_id) DO UPDATE SET pool = EXCLUDED.pool, types = EXCLUDED.types,
    seen_at = EXCLUDED.seen_at, expires_at = EXCLUDED.expires_at
""")
_FORGET = text("DELETE FROM worker_pools WHERE expires_at < now() - make_interval(secs => :s)")
_LIVE = text("SELECT worker_id, pool, types, seen_at FROM worker_pools "
             "WHERE expires_at > now() ORDER BY pool, worker_id")
_SERVED = text("SELECT DISTINCT unnest(types) FROM worker_pools WHERE expires_at > now()")


async def register(engine: AsyncEngine, *, worker_id: str, pool: str, types: Iterable[str],
                   ttl_s: float) -> None:
    """Say that ``worker_id`` runs, in ``pool``, serving ``types``, for ``ttl_s`` more."""
    async with engine.begin() as conn:
        await conn.execute(_UPSERT, {"worker_id": worker_id, "pool": pool,
                                     "types": sorted(set(types)), "ttl": ttl_s})
        await conn.execute(_FORGET, {"s": FORGET_S})


async def unregister(engine: AsyncEngine, *, worker_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM worker_pools WHERE worker_id = :w"),
                           {"w": worker_id})


async def live_pools(engine: AsyncEngine) -> list[dict[str, Any]]:
    """``[{pool, types, workers, seen_at}]``: each pool with a live worker, the types its
    workers serve (together), how many workers, and when one last wrote its row."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_LIVE)).all()
    pools: dict[str, dict[str, Any]] = {}
    for _, pool, types, seen_at in rows:
        p = pools.setdefault(pool, {"pool": pool, "types": set(), "workers": 0,
                                    "seen_at": seen_at})
        p["types"].update(types)
        p["workers"] += 1
        p["seen_at"] = max(p["seen_at"], seen_at)
    return [{**p, "types": sorted(p["types"])} for p in pools.values()]


async def served_types(engine: AsyncEngine) -> set[str]:
    """The types some live worker serves."""
    async with engine.connect() as conn:
        return {r[0] for r in (await conn.execute(_SERVED)).all()}


def waiting_reason(status: str, type_: str, served: set[str]) -> str | None:
    """Why a task is not running, when the reason is that nothing would run it."""
    if status == "PENDING" and type_ not in served:
        return f"no running worker pool serves type '{type_}'"
    return None

