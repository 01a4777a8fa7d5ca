"""The read model's retention, as ``/stats`` reports it (the rule: projector/retention.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.tables import retention


async def status(engine: AsyncEngine, *, projection: str, days: float | None) -> dict[str, Any]:
    """The setting, the cutoff last applied, and how many finished tasks left in all."""
    q = select(retention.c.cutoff, retention.c.expired, retention.c.swept_at).where(
        retention.c.projection == projection)
    async with engine.connect() as conn:
        row = (await conn.execute(q)).first()
    return {"days": days,
            "cutoff": row.cutoff.isoformat() if row else None,
            "expired": int(row.expired) if row else 0,
            "swept_at": row.swept_at.isoformat() if row else None}
