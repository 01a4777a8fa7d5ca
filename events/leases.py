"""Concurrency leases: at most ``max_concurrency`` tasks of one ``concurrency_key`` run at
once, across every worker.

A lease is a row of ``concurrency_leases`` (key, task, holder, expiry). Taking one locks
the key (a transaction-scoped advisory lock), drops the key's expired leases, and inserts
only while fewer than the limit are held, so two workers never both take the last place.
A holder renews its leases while their tasks run; a worker that dies stops renewing, and
its leases lapse after ``LEASE_TTL_S``. This is coordination, not a projection of the log:
nothing here is rebuilt from it.
"""

from __future__ import annotations

import uuid
from typing import Final, TypeAlias

import asyncpg

from events.db import asyncpg_dsn

Pool: TypeAlias = asyncpg.Pool
LEASE_TTL_S: Final = 30.0  # seconds a lease lasts unless renewed (the holder died)

# Two statements: under READ COMMITTED each statement takes its snapshot when it starts,
# so the count must come after the lock is held, or it could miss a place just taken.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))"
_TAKE = """
INSERT INTO concurrency_leases (key, task_id, holder, expires_at)
SELECT $1, $2, $3, now() + make_interval(secs => $5)
WHERE (SELECT count(*) FROM concurrency_leases
       WHERE key = $1 AND task_id <> $2 AND expires_at >= now()) < $4
ON CONFLICT (key, task_id) DO UPDATE SET holder = EXCLUDED.holder,
                                         expires_at = EXCLUDED.expires_at
RETURNING 1
"""


async def open_pool(database_url: str) -> Pool:
    pool: Pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=4)
    return pool


async def take(pool: asyncpg.Pool, *, key: str, task_id: uuid.UUID, holder: str,
               limit: int, ttl_s: float = LEASE_TTL_S) -> bool:
    """Take a place under ``key`` for ``task_id`` if fewer than ``limit`` are held."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK, key)
        await conn.execute("DELETE FROM concurrency_leases WHERE key = $1 AND expires_at < now()",
                           key)
        return await conn.fetchval(_TAKE, key, task_id, holder, limit, ttl_s) is not None


async def release(pool: asyncpg.Pool, *, key: str, task_id: uuid.UUID) -> None:
    await pool.execute("DELETE FROM concurrency_leases WHERE key = $1 AND task_id = $2",
                       key, task_id)


async def renew(pool: asyncpg.Pool, *, holder: str, ttl_s: float = LEASE_TTL_S) -> None:
    await pool.execute("UPDATE concurrency_leases SET expires_at = now() + "
                       "make_interval(secs => $2) WHERE holder = $1", holder, ttl_s)
