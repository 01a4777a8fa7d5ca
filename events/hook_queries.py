"""Reads of the webhook tables (``webhooks``, ``webhook_deliveries``) for the API.

A tenant of ``None`` (auth off) sees every row; otherwise only its own.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_PUBLIC = ("webhook_id, tenant, url, events, description, task_id, deleted, created_at, "
           "updated_at")
_SCOPE = "(CAST(:scoped AS boolean) IS FALSE OR tenant IS NOT DISTINCT FROM :tenant)"


async def list_webhooks(engine: AsyncEngine, *, scoped: bool, tenant: str | None,
                        limit: int) -> list[dict[str, Any]]:
    q = text(f"SELECT {_PUBLIC} FROM webhooks WHERE NOT deleted AND task_id IS NULL "
             f"AND {_SCOPE} ORDER BY created_at, webhook_id LIMIT :limit")
    async with engine.connect() as conn:
        rows = await conn.execute(q, {"scoped": scoped, "tenant": tenant, "limit": limit})
        return [dict(r._mapping) for r in rows]


async def get_webhook(engine: AsyncEngine, *, webhook_id: uuid.UUID, scoped: bool,
                      tenant: str | None, deleted: bool = False) -> dict[str, Any] | None:
    """The subscription, if the tenant may see it; a deleted one only with ``deleted``."""
    live = "" if deleted else "AND NOT deleted "
    q = text(f"SELECT {_PUBLIC} FROM webhooks WHERE webhook_id = :id {live}AND {_SCOPE}")
    async with engine.connect() as conn:
        row = (await conn.execute(q, {"id": webhook_id, "scoped": scoped,
                                      "tenant": tenant})).first()
        return dict(row._mapping) if row is not None else None


async def list_deliveries(engine: AsyncEngine, *, webhook_id: uuid.UUID,
                          limit: int) -> list[dict[str, Any]]:
    q = text("SELECT delivery_id, webhook_id, event_id, event_type, task_id, status, "
             "attempts, last_status_code, last_error, created_at, updated_at "
             "FROM webhook_deliveries WHERE webhook_id = :id "
             "ORDER BY created_at DESC, delivery_id LIMIT :limit")
    async with engine.connect() as conn:
        rows = await conn.execute(q, {"id": webhook_id, "limit": limit})
        return [dict(r._mapping) for r in rows]


async def get_delivery(engine: AsyncEngine, *, webhook_id: uuid.UUID,
                       delivery_id: uuid.UUID) -> dict[str, Any] | None:
    q = text("SELECT * FROM webhook_deliveries WHERE webhook_id = :w AND delivery_id = :d")
    async with engine.connect() as conn:
        row = (await conn.execute(q, {"w": webhook_id, "d": delivery_id})).first()
        return dict(row._mapping) if row is not None else None


async def applied(engine: AsyncEngine, *, projection: str, topic: str, partition: int,
                  offset: int) -> bool:
    """True once the projection's checkpoint of ``partition`` is at ``offset`` or past."""
    q = text('SELECT "offset" FROM projector_offsets WHERE projection = :p AND topic = :t '
             "AND partition = :n")
    async with engine.connect() as conn:
        got = (await conn.execute(q, {"p": projection, "t": topic, "n": partition})).scalar()
        return got is not None and int(got) >= offset


async def webhook_history(engine: AsyncEngine, *,
                          webhook_id: uuid.UUID) -> list[tuple[int, int, Any]]:
    """(partition, offset, event) of the webhook's subscription changes, in log order."""
    q = text('SELECT partition, "offset", event FROM webhook_events WHERE webhook_id = :id '
             "AND type <> 'webhook.delivery_attempted' ORDER BY partition, \"offset\"")
    async with engine.connect() as conn:
        rows = await conn.execute(q, {"id": webhook_id})
        return [(int(p), int(o), e) for p, o, e in rows.all()]
