"""The notifier's reads of the webhook projection (asyncpg)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Target:
    """Where, and with which secret, a delivery goes."""

    webhook_id: uuid.UUID
    tenant: str | None
    url: str
    secret: str
    events: tuple[str, ...]
    task_id: uuid.UUID | None = None  # a task's callback: that task's events only

    def wants(self, tenant: str | None, etype: str, task_id: uuid.UUID) -> bool:
        return (self.tenant == tenant and etype in self.events
                and (self.task_id is None or self.task_id == task_id))


_COLS = "webhook_id, tenant, url, secret, events, task_id"


def _target(r: asyncpg.Record) -> Target:
    return Target(r["webhook_id"], r["tenant"], r["url"], r["secret"], tuple(r["events"]),
                  r["task_id"])


async def subscribers(pool: asyncpg.Pool, tenants: set[str | None]) -> list[Target]:
    """Every live webhook of these tenants (``None``: the unscoped one)."""
    named = [t for t in tenants if t is not None]
    rows = await pool.fetch(
        f"SELECT {_COLS} FROM webhooks WHERE NOT deleted "
        "AND (tenant = ANY($1::text[]) OR ($2 AND tenant IS NULL))", named, None in tenants)
    return [_target(r) for r in rows]


async def target(pool: asyncpg.Pool, webhook_id: uuid.UUID) -> Target | None:
    r = await pool.fetchrow(f"SELECT {_COLS} FROM webhooks "
                            "WHERE webhook_id = $1 AND NOT deleted", webhook_id)
    return _target(r) if r is not None else None


async def delivery(pool: asyncpg.Pool, delivery_id: uuid.UUID) -> dict[str, Any] | None:
    r = await pool.fetchrow("SELECT * FROM webhook_deliveries WHERE delivery_id = $1",
                            delivery_id)
    return dict(r) if r is not None else None


async def park(pool: asyncpg.Pool, *, topic: str, partition: int, offset: int,
               key: bytes | None, raw: bytes | None, error: str) -> None:
    await pool.execute(
        'INSERT INTO dead_letters (projection, topic, partition, "offset", key, raw, error, '
        "reason) VALUES ('notifier', $1, $2, $3, $4, $5, $6, 'decode')",
        topic, partition, offset, key, raw, error[:2000])


async def progress(pool: asyncpg.Pool, delivery_ids: list[uuid.UUID]
                   ) -> dict[uuid.UUID, tuple[int, str]]:
    """(attempts, status) of those deliveries the projection knows."""
    rows = await pool.fetch("SELECT delivery_id, attempts, status FROM webhook_deliveries "
                            "WHERE delivery_id = ANY($1::uuid[])", delivery_ids)
    return {r["delivery_id"]: (r["attempts"], r["status"]) for r in rows}


async def behind(pool: asyncpg.Pool, *, projection: str, topic: str,
                 ends: dict[int, int]) -> list[int]:
    """The partitions of ``topic`` whose records up to ``ends`` (exclusive) the
    projection has not all applied yet."""
    rows = await pool.fetch('SELECT partition, "offset" FROM projector_offsets '
                            "WHERE projection = $1 AND topic = $2", projection, topic)
    done = {r["partition"]: r["offset"] for r in rows}
    return [p for p, end in ends.items() if end > 0 and done.get(p, -1) < end - 1]
