"""The read model's view of the audit chain: each task's latest hash, from its journal.

Producers that act on a task they only know from the read model (the API's cancel and
retry, ``taskflow dlq redrive``) link their event after the newest journal entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from events.tables import task_events


async def heads(engine: AsyncEngine, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The ``chainhash`` of each task's latest chained event in ``task_events``."""
    if not task_ids:
        return {}
    h = task_events.c.event["chainhash"].astext
    q = (select(task_events.c.task_id, h)
         .where(task_events.c.task_id.in_(list(task_ids)), h.is_not(None))
         .order_by(task_events.c.task_id, task_events.c.partition.desc(),
                   task_events.c.offset.desc())
         .distinct(task_events.c.task_id))
    async with engine.connect() as conn:
        return {uuid.UUID(str(t)): str(v) for t, v in (await conn.execute(q)).all()}
