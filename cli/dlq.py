"""``taskflow dlq``: list dead-lettered tasks and redrive them through the log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import chain, constants, queries
from events.log import EventProducer
from events.redrive import redrive_dead
from events.settings import Settings


async def dead_tasks(settings: Settings, *, type_: str | None = None,
                     since: datetime | None = None) -> list[dict[str, Any]]:
    async with queries.short_engine(settings.database_url) as engine:
        return await queries.dead_tasks(engine, type_=type_, since=since)


async def redrive(settings: Settings, rows: list[dict[str, Any]], *, reason: str,
                  actor: str) -> int:
    chain.configure(settings)
    async with queries.short_engine(settings.database_url) as engine:
        producer = EventProducer(bootstrap=settings.kafka_bootstrap, topic=settings.topic,
                                 timeout_s=settings.produce_timeout_s)
        await producer.start()
        try:
            return len(await redrive_dead(producer, engine, rows, reason=reason,
                                          source=constants.CLI_SOURCE, actor=actor))
        finally:
            await producer.stop()
