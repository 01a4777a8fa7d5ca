"""Redrive: a FAILED task runs again, as a ``task.redriven`` event that carries its spec.

The one place that builds those events, for ``POST /tasks/{id}/retry``,
``POST /dead-letters:redrive`` and ``taskflow dlq redrive``. Which tasks may be redriven
is the caller's check.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from events import chain, chain_db, queries
from events.log import EventProducer
from events.models import CloudEvent, Position, TaskCreated, TaskRedriven, new_event

APPEND_CHUNK = 1000  # events per append: one producer flush each


def spec_of(row: Mapping[str, Any]) -> TaskCreated:
    """What a worker needs to run the task again, carried in ``task.redriven`` itself."""
    return TaskCreated(title=row["title"], type=row["type"], payload=row["payload"] or {},
                       priority=row["priority"] or 0, max_attempts=row["max_attempts"],
                       timeout_s=row["timeout_s"])


def redriven(row: Mapping[str, Any], *, reason: str, source: str, actor: str) -> CloudEvent:
    """The ``task.redriven`` of a task's read-model row (``task_id``, ``attempt``,
    ``tenant`` and the spec columns)."""
    return new_event(TaskRedriven(reason=reason, spec=spec_of(row)),
                     task_id=uuid.UUID(str(row["task_id"])), source=source,
                     attempt=int(row["attempt"]), tenant=row.get("tenant"), actor=actor)


async def redrive(producer: EventProducer, rows: Sequence[Mapping[str, Any]], *, reason: str,
                  source: str, actor: str,
                  engine: AsyncEngine | None = None) -> list[Position]:
    """Append a ``task.redriven`` for each row; their positions, in the rows' order.
    With the audit chain on, ``engine`` (the read model) tells each task's latest hash."""
    events = [redriven(r, reason=reason, source=source, actor=actor) for r in rows]
    if chain.enabled() and engine is not None:
        heads = await chain_db.heads(engine, [e.subject for e in events])
        events = [chain.seal(e, heads.get(e.subject, chain.GENESIS)) for e in events]
    # Each to the partition its task lives on (see ``EventProducer.append``).
    placed = [r.get("partition") for r in rows]
    positions: list[Position] = []
    for i in range(0, len(events), APPEND_CHUNK):
        positions += await producer.append(events[i:i + APPEND_CHUNK],
                                           partitions=placed[i:i + APPEND_CHUNK])
    return positions


async def redrive_dead(producer: EventProducer, engine: AsyncEngine,
                       rows: Sequence[Mapping[str, Any]], *, reason: str,
                       source: str, actor: str) -> list[Position]:
    """``redrive`` the rows of ``queries.dead_tasks``, each to its task's partition."""
    parts = await queries.task_partitions(engine, task_ids=[r["task_id"] for r in rows])
    return await redrive(producer, [{**r, "partition": parts.get(r["task_id"])} for r in rows],
                         reason=reason, source=source, actor=actor, engine=engine)
