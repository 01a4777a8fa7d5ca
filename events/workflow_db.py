"""The ``workflows`` read model: the coordinator's writes, the API's reads, and the rows
``projections verify|rebuild`` compare and replace."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from events import owned_db
from events.models import TERMINAL
from events.tables import tasks, workflows
from events.workflows import WORKFLOW_PROJECTION, WorkflowState


def row(st: WorkflowState, partition: int, offset: int) -> dict[str, Any]:
    """The ``workflows`` row of a state."""
    return {
        "workflow_id": st.workflow_id, "tenant": st.tenant, "name": st.spec.name,
        "on_failure": st.spec.on_failure, "status": st.status, "round": st.round,
        "cancel_requested": st.cancel_requested, "finished_round": st.finished_round,
        "digest": st.spec.digest,
        "spec": [n.model_dump(mode="json") for n in st.spec.tasks],
        "nodes": {k: st.nodes[k].model_dump(mode="json", exclude={"key"})
                  for k in st.order},
        "summary": st.summary(),
        "created_at": st.created_at, "updated_at": st.updated_at,
        "finished_at": st.finished_at, "partition": partition, "last_offset": offset,
    }


_UPSERT = owned_db.upsert(workflows, "workflow_id")


async def write(conn: AsyncConnection, *, topic: str, partition: int, offset: int,
                rows: list[dict[str, Any]]) -> None:
    """Upsert ``rows`` and move the partition's checkpoint to ``offset``, in the caller's
    transaction. The checkpoint never moves back."""
    if rows:
        await conn.execute(_UPSERT, rows)
    await owned_db.move_checkpoint(conn, projection=WORKFLOW_PROJECTION, topic=topic,
                                   partition=partition, offset=offset)


async def replace_all(conn: AsyncConnection, *, topic: str, rows: list[dict[str, Any]],
                      checkpoints: dict[int, int]) -> None:
    """``projections rebuild``: the whole table and its checkpoints, in one transaction."""
    await owned_db.replace_all(conn, table=workflows, projection=WORKFLOW_PROJECTION,
                               topic=topic, rows=rows, checkpoints=checkpoints, chunk=500)


_COLS = [c for c in workflows.c if c.name not in ("partition", "last_offset", "digest",
                                                   "finished_round")]


async def get(engine: AsyncEngine, *, workflow_id: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        r = (await conn.execute(select(*_COLS, workflows.c.digest).where(
            workflows.c.workflow_id == workflow_id))).mappings().first()
    return _plain(r) if r is not None else None


def _plain(r: Any) -> dict[str, Any]:
    # Plain str keys: SQLAlchemy's are a str subclass, which orjson refuses as a key.
    return {str(k): v for k, v in r.items()}


async def listing(engine: AsyncEngine, *, tenant: object, any_tenant: object,
                  status: str | None, name: str | None,
                  after: tuple[datetime, uuid.UUID] | None,
                  limit: int) -> list[dict[str, Any]]:
    """Workflows newest first (keyset on ``created_at, workflow_id``), without their
    nodes' details."""
    conds: list[ColumnElement[bool]] = []
    if tenant is not any_tenant:
        conds.append(workflows.c.tenant.is_(None) if tenant is None
                     else workflows.c.tenant == tenant)
    if status is not None:
        conds.append(workflows.c.status == status)
    if name is not None:
        conds.append(workflows.c.name == name)
    if after is not None:
        t, wid = after
        conds.append(or_(workflows.c.created_at < t,
                         and_(workflows.c.created_at == t, workflows.c.workflow_id < wid)))
    cols = [c for c in _COLS if c.name not in ("spec", "nodes")]
    q = (select(*cols).where(and_(*conds))
         .order_by(workflows.c.created_at.desc(), workflows.c.workflow_id.desc())
         .limit(limit))
    async with engine.connect() as conn:
        return [_plain(r) for r in (await conn.execute(q)).mappings()]


async def finished_tasks(engine: AsyncEngine, task_ids: Iterable[uuid.UUID]
                         ) -> dict[uuid.UUID, tuple[str, Any, str | None]]:
    """Those of ``task_ids`` that are finished: status, result and error."""
    ids = list(set(task_ids))
    if not ids:
        return {}
    q = select(tasks.c.task_id, tasks.c.status, tasks.c.result, tasks.c.error).where(
        tasks.c.task_id.in_(ids), tasks.c.status.in_([s.value for s in TERMINAL]))
    async with engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in await conn.execute(q)}


async def task_statuses(engine: AsyncEngine, task_ids: Iterable[uuid.UUID]
                        ) -> dict[uuid.UUID, str]:
    ids = list(set(task_ids))
    if not ids:
        return {}
    q = select(tasks.c.task_id, tasks.c.status).where(tasks.c.task_id.in_(ids))
    async with engine.connect() as conn:
        return {r[0]: r[1] for r in await conn.execute(q)}
