"""The running worker pools, as the API shows them: ``/handlers``' ``pools`` and a
PENDING task's ``waiting_reason`` (events/pool_registry.py holds the rows)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from events import pool_registry


async def with_waiting_reasons(db: AsyncEngine, rows: list[dict[str, Any]]
                               ) -> list[dict[str, Any]]:
    """``rows`` with ``waiting_reason`` set on the PENDING tasks no running pool serves
    (one query, and only when a row is PENDING)."""
    if not any(r.get("status") == "PENDING" for r in rows):
        return rows
    served = await pool_registry.served_types(db)
    return [{**r, "waiting_reason": pool_registry.waiting_reason(r["status"], r["type"], served)}
            for r in rows]
