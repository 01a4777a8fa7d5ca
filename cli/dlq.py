"""``taskflow dlq``: list dead-lettered tasks and redrive them through the log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import chain, constants, queries
from events.log import EventProducer
from events.redrive import redrive as redrive_rows
from events.settings import Settings


async def dead_tasks(settings: Settings, *, type_: str | None = None,
                     since: datetime | None = None) -> list[dict[str, Any]]:
    async with queries.short_engine(settings.database_url) as engine:
        return await queries.dead_tasks(engine, type_=type_, since=since)


async def redrive(settings: Settings, rows: list[dict[str, Any]], *, reason: str,
                  actor: str) -> int:
    chain.configure(settings)
    async with queries.short_engine(settings.database_url) as engine:
        parts = await queries.task_partitions(engine, task_ids=[r["task_id"] for r in rows])
        rows = [{**r, "partition": parts.get(r["task_id"])} for r in rows]
        producer = EventProducer(bootstrap=settings.kafka_bootstrap, topic=settings.topic,
                                 timeout_s=settings.produce_timeout_s)
        await producer.start()
        try:
            return len(await redrive_rows(producer, rows, reason=reason,
                                          source=constants.CLI_SOURCE, actor=actor,
                                          engine=engine))
        finally:
            await producer.stop()
