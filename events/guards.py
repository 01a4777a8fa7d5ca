"""Limits that hold across every API process, kept in Postgres.

* ``take``   a token bucket per key (table ``rate_buckets``): one upsert per request,
  computed by Postgres with its own clock, so every process spends the same tokens.
* ``claim``  the first body each ``Idempotency-Key`` came with (table
  ``idempotency_keys``), its row locked while the caller appends the task: a second
  process with the same key waits, then sees the first body and its position.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncEngine

# Refill, spend and answer in one statement; now() is the statement's own time (each runs
# in its own transaction), and the same clock for every process.
_REFILLED = ("least(CAST(:burst AS float8), b.tokens"
             " + CAST(extract(epoch FROM now() - b.at) AS float8) * CAST(:rate AS float8))")
# Every SET expression reads the row as it was, so the refill is computed from the old one.
_TAKE = text(f"""
INSERT INTO rate_buckets AS b (key, tokens, at, ok)
VALUES (:key, CAST(:burst AS float8) - 1, now(), true)
ON CONFLICT (key) DO UPDATE SET
    tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
    ok = {_REFILLED} >= 1,
    at = now()
RETURNING b.tokens, b.ok
""")


async def take(engine: AsyncEngine, *, key: str, rate_per_s: float, burst: int) -> float:
    """Take one token of ``key``'s bucket: 0 if allowed, else seconds until one is free."""
    async with engine.begin() as conn:
        row = (await conn.execute(_TAKE, {"key": key, "rate": rate_per_s,
                                          "burst": burst})).one()
    if row.ok:
        return 0.0
    return (1 - float(row.tokens)) / rate_per_s


@dataclass(frozen=True)
class Claim:
    """The first body a key came with, and its ``task.created``'s position once known."""

    digest: bytes
    partition: int | None
    offset: int | None


@dataclass
class Claims:
    """The claims of one submit, their rows locked until the ``claim`` block ends."""

    found: dict[uuid.UUID, Claim]
    _settled: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)

    def settle(self, task_id: uuid.UUID, partition: int, offset: int) -> None:
        """Record where the task's ``task.created`` landed (written as the block ends)."""
        self._settled[task_id] = (partition, offset)


_INSERT = text("""
INSERT INTO idempotency_keys (task_id, digest)
SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:digests AS bytea[])) ORDER BY 1
ON CONFLICT (task_id) DO NOTHING
""").bindparams(bindparam("ids", type_=ARRAY(PG_UUID(as_uuid=True))))
_LOCK = text("""
SELECT task_id, digest, partition, "offset" FROM idempotency_keys
WHERE task_id = ANY(:ids) ORDER BY task_id FOR UPDATE
""").bindparams(bindparam("ids", type_=ARRAY(PG_UUID(as_uuid=True))))
_SETTLE = text("""
UPDATE idempotency_keys SET partition = :p, "offset" = :o WHERE task_id = :id
""")


@contextlib.asynccontextmanager
async def claim(engine: AsyncEngine, wanted: dict[uuid.UUID, bytes]) -> AsyncIterator[Claims]:
    """Claim each task id for its digest (a first claim keeps its own), and lock them all
    in task-id order until the block ends; ``found`` holds what each id is claimed for.
    Positions ``settle``d in the block are written with the claims. Raising in the block
    keeps only the claims (each first digest), never a position."""
    ids = sorted(wanted)
    if not ids:
        yield Claims({})
        return
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(_INSERT, {"ids": ids, "digests": [wanted[i] for i in ids]})
        found = {r.task_id: Claim(bytes(r.digest), r.partition, r.offset)
                 for r in await conn.execute(_LOCK, {"ids": ids})}
        claims = Claims(found)
        try:
            yield claims
        finally:
            for task_id, (p, o) in claims._settled.items():
                await conn.execute(_SETTLE, {"id": task_id, "p": p, "o": o})
            await conn.commit()
