"""``taskflow dlq``: list dead-lettered tasks and redrive them through the log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from events import constants, queries
from events.log import EventProducer
from events.models import TaskCreated, TaskRedriven, new_event
from events.settings import Settings


async def dead_tasks(settings: Settings, *, type_: str | None = None,
                     since: datetime | None = None) -> list[dict[str, Any]]:
    async with queries.short_engine(settings.database_url) as engine:
        return await queries.dead_tasks(engine, type_=type_, since=since)


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
