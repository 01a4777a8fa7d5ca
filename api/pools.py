"""The running worker pools, as the API shows them: ``/handlers``' ``pools`` and a
PENDING task's ``waiting_reason`` (events/pool_registry.py holds the rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from events import pool_registry


class PoolOut(BaseModel):
    pool: str = Field(description="default, or the types of a `taskflow worker --types` pool")
    types: list[str] = Field(description="the types its running workers have handlers for")
    workers: int = Field(description="its live workers")
    seen_at: datetime = Field(description="when one of them last wrote its row")


class HandlersOut(BaseModel):
    types: list[str] = Field(description="the task types POST /tasks accepts")
    pools: list[PoolOut] = Field(description="the worker pools running now")
    unserved: list[str] = Field(description="accepted types no running pool serves: their "
                                "tasks wait as PENDING, with a waiting_reason")


async def with_waiting_reasons(db: AsyncEngine, rows: list[dict[str, Any]]
                               ) -> list[dict[str, Any]]:
    """``rows`` with ``waiting_reason`` set on the PENDING tasks no running pool serves
    (one query, and only when a row is PENDING)."""
    if not any(r.get("status") == "PENDING" for r in rows):
        return rows
    served = await pool_registry.served_types(db)
    return [{**r, "waiting_reason": pool_registry.waiting_reason(r["status"], r["type"], served)}
            for r in rows]
