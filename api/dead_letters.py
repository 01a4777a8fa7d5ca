"""Dead-lettered tasks over HTTP: list them, and redrive them through the log.

The caller's tenant only. ``POST /tasks/{id}/retry`` redrives one task; redriving every
match at once is an operator's act and needs ``admin`` (api/roles.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Tenant, TenantDep
from api.deps import DbDep, LogDep
from api.problems import documented
from api.schemas import TYPE_PATTERN, QueryTime
from events import constants, queries
from events.redrive import redrive_dead

router = APIRouter(tags=["dead-letters"])

REDRIVE_MAX = 1000  # tasks per POST /dead-letters:redrive; call again for more
_SHOWN = ("task_id", "type", "title", "error", "attempt", "finished_at", "priority")


class RedriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, max_length=200, pattern=TYPE_PATTERN)
    since: QueryTime | None = None
    reason: str = Field(default="redriven over the API", min_length=1, max_length=500)


def _scope(tenant: Tenant) -> str | None:
    return tenant.name if tenant.scoped else None


@router.get("/dead-letters", responses=documented(401, 403, 422))
async def dead_letters(
    db: DbDep, tenant: TenantDep,
    type: Annotated[str | None, Query(max_length=200, pattern=TYPE_PATTERN)] = None,
    since: Annotated[QueryTime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=REDRIVE_MAX)] = 100,
) -> dict[str, Any]:
    """The caller's dead-lettered tasks (FAILED, retries spent), oldest first."""
    rows = await queries.dead_tasks(db, type_=type, since=since, limit=limit,
                                    tenant=_scope(tenant))
    return {"items": [{k: r[k] for k in _SHOWN} for r in rows]}


@router.post("/dead-letters:redrive", status_code=202,
             responses=documented(401, 403, 422, 503))
async def redrive_dead_letters(db: DbDep, producer: LogDep, tenant: TenantDep,
                               body: RedriveIn | None = None) -> dict[str, Any]:
    """Redrive the caller's dead-lettered tasks (of ``type``, finished since ``since``),
    at most ``REDRIVE_MAX`` at once: each runs again as a new attempt."""
    body = body or RedriveIn()
    rows = await queries.dead_tasks(db, type_=body.type, since=body.since, limit=REDRIVE_MAX,
                                    tenant=_scope(tenant))
    await redrive_dead(producer, db, rows, reason=body.reason, source=constants.API_SOURCE,
                       actor=tenant.actor)
    return {"redriven": len(rows), "task_ids": [str(r["task_id"]) for r in rows]}
