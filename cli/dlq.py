"""``taskflow dlq``: list dead-lettered tasks and redrive them through the log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select

from events import constants
from events.db import make_engine
from events.log import EventProducer
from events.models import TaskCreated, TaskRedriven, TaskStatus, new_event
from events.settings import Settings
from events.tables import tasks


async def dead_tasks(settings: Settings, *, type_: str | None = None,
                     since: datetime | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        q = select(tasks.c.task_id, tasks.c.tenant, tasks.c.type, tasks.c.title, tasks.c.error,
                   tasks.c.attempt, tasks.c.finished_at, tasks.c.payload, tasks.c.priority,
                   tasks.c.max_attempts, tasks.c.timeout_s).where(
            tasks.c.status == TaskStatus.FAILED.value, tasks.c.dead_lettered.is_(True))
        if type_:
            q = q.where(tasks.c.type == type_)
        if since:
            q = q.where(tasks.c.finished_at >= since)
        q = q.order_by(tasks.c.finished_at, tasks.c.task_id).limit(limit)
        async with engine.connect() as conn:
            return [{str(k): v for k, v in r._mapping.items()} for r in await conn.execute(q)]
    finally:
        await engine.dispose()


def spec_of(row: dict[str, Any]) -> TaskCreated:
    """What a worker needs to run the task again, carried in ``task.redriven`` itself."""
    return TaskCreated(title=row["title"], type=row["type"], payload=row["payload"] or {},
                       priority=row["priority"] or 0, max_attempts=row["max_attempts"],
                       timeout_s=row["timeout_s"])


async def redrive(settings: Settings, rows: list[dict[str, Any]], *, reason: str) -> int:
    producer = EventProducer(bootstrap=settings.kafka_bootstrap, topic=settings.topic,
                             timeout_s=settings.produce_timeout_s)
    await producer.start()
    try:
        events = [new_event(TaskRedriven(reason=reason, spec=spec_of(r)),
                            task_id=uuid.UUID(str(r["task_id"])),
                            source=constants.CLI_SOURCE, attempt=int(r["attempt"]),
                            tenant=r["tenant"]) for r in rows]
        for i in range(0, len(events), 1000):
            await producer.append(events[i:i + 1000])
        return len(events)
    finally:
        await producer.stop()
