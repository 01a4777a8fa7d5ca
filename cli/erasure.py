"""``taskflow erase`` and the replay's view of sealed fields (events/crypto.py)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from events import chain, chain_db, constants, crypto, keystore, queries
from events.db import make_engine
from events.log import EventProducer
from events.models import TaskErased, new_event
from events.settings import Settings
from events.tables import tasks

Reveal = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def revealer(settings: Settings) -> Reveal:
    """Opens sealed fields while their key exists (``TASKFLOW_ENCRYPTION_KEY`` set), and
    marks them erased once it is gone; without the master key, sealed fields stay as
    they are in the log."""
    if not settings.encryption_key:
        async def as_is(doc: dict[str, Any]) -> dict[str, Any]:
            return doc
        return as_is
    ring = keystore.Keyring(crypto.master_key(settings.encryption_key),
                            make_engine(settings.database_url, pool_size=1))
    known: dict[uuid.UUID, bytes | None] = {}

    async def reveal(doc: dict[str, Any]) -> dict[str, Any]:
        tid = uuid.UUID(str(doc["subject"]))
        if tid not in known:
            known[tid] = (await ring.keys([tid])).get(tid)
        key = known[tid]
        return crypto.reveal_event(doc, {tid: key} if key is not None else {})

    return reveal


async def erase(settings: Settings, *, task_id: uuid.UUID | None, tenant: str | None,
                actor: str) -> int:
    """Delete the keys, then append one ``task.erased`` per task; how many tasks."""
    chain.configure(settings)
    async with queries.short_engine(settings.database_url) as engine:
        erased = await keystore.erase(engine, task_id=task_id, tenant=tenant)
        q = select(tasks.c.task_id, tasks.c.tenant)
        q = q.where(tasks.c.task_id == task_id) if task_id is not None else q.where(
            tasks.c.tenant == tenant)
        async with engine.connect() as conn:
            owners = {t: o for t, o in (await conn.execute(q)).all()}
        for t in erased:
            owners.setdefault(t, tenant)
        ids = sorted(owners, key=str)
        if not ids:
            return 0
        heads = await chain_db.heads(engine, ids) if chain.enabled() else {}
        parts = await queries.task_partitions(engine, task_ids=ids)
        events = [chain.seal(new_event(TaskErased(actor=actor), task_id=t,
                                       source=constants.CLI_SOURCE, tenant=owners[t],
                                       actor=actor),
                             heads.get(t, chain.GENESIS)) for t in ids]
        producer = EventProducer(bootstrap=settings.kafka_bootstrap, topic=settings.topic,
                                 timeout_s=settings.produce_timeout_s)
        await producer.start()
        try:
            await producer.append(events, partitions=[parts.get(t) for t in ids])
        finally:
            await producer.stop()
    return len(ids)
