"""The webhook projection: ``<topic>.webhooks`` folded into ``webhooks`` and
``webhook_deliveries``.

Same rules as the task projection: one transaction writes a batch's rows and its
checkpoints (``projector_offsets``, projection ``webhooks``); a redelivered record is a
no-op; a record that is not a webhook event is parked in ``dead_letters`` and skipped.
It runs in the projector process beside the task projection (``WithWebhooks``), under its
own consumer group. ``verify`` and ``rebuild`` fold the topic afresh with the same
functions (``events.webhooks``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import orjson

from events import webhooks as wh
from events.db import asyncpg_dsn
from events.errors import UndecodableEvent
from events.log import TP, GroupConsumer, Record, ensure_topic
from events.settings import Settings
from projector import connections, store
from projector.replay import read_records

log = logging.getLogger("taskflow.projector.webhooks")

PROJECTION: Final = wh.PROJECTION
_HOOK_COLS = ("webhook_id", "tenant", "url", "events", "description", "secret", "task_id",
              "deleted", "created_at", "updated_at")
_DELIVERY_COLS = ("delivery_id", "webhook_id", "tenant", "event_id", "event_type", "task_id",
                  "status", "attempts", "last_status_code", "last_error", "body",
                  "created_at", "updated_at")


def _upsert(table: str, cols: tuple[str, ...]) -> str:
    names = ", ".join(cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[1:])
    return (f"INSERT INTO {{schema}}.{table} ({names}) VALUES ({params}) "
            f"ON CONFLICT ({cols[0]}) DO UPDATE SET {sets}")


_UPSERT_HOOK = _upsert("webhooks", _HOOK_COLS)
_UPSERT_DELIVERY = _upsert("webhook_deliveries", _DELIVERY_COLS)


@dataclass
class Folded:
    hooks: dict[uuid.UUID, wh.Webhook] = field(default_factory=dict)
    deliveries: dict[uuid.UUID, wh.Delivery] = field(default_factory=dict)
    parked: list[store.ParkedRow] = field(default_factory=list)
    journal: list[tuple[int, int, uuid.UUID, str, Any, bytes]] = field(default_factory=list)
    applied: int = 0

    def fold(self, r: Record) -> None:
        try:
            ev = wh.decode_hook(r.value)
        except UndecodableEvent as exc:
            self.parked.append(store.ParkedRow(r.partition, r.offset, r.key, r.value,
                                               exc.error[:2000], "decode"))
            return
        self.applied += 1
        self.journal.append((r.partition, r.offset, ev.subject, ev.type.value, ev.time,
                             r.value or b""))
        hook = wh.apply_webhook(self.hooks.get(ev.subject), ev)
        if hook is not None:
            self.hooks[ev.subject] = hook
        did = wh.delivery_key(ev)
        if did is not None:
            d = wh.apply_delivery(self.deliveries.get(did), ev)
            if d is not None:
                self.deliveries[did] = d


async def _load(conn: asyncpg.Connection, schema: str, records: list[Record]) -> Folded:
    """The current rows of every webhook and delivery the records are about."""
    hook_ids: set[uuid.UUID] = set()
    delivery_ids: set[uuid.UUID] = set()
    for r in records:
        try:
            ev = wh.decode_hook(r.value)
        except UndecodableEvent:
            continue
        hook_ids.add(ev.subject)
        did = wh.delivery_key(ev)
        if did is not None:
            delivery_ids.add(did)
    out = Folded()
    for row in await conn.fetch(f"SELECT * FROM {schema}.webhooks "
                                "WHERE webhook_id = ANY($1::uuid[])", list(hook_ids)):
        out.hooks[row["webhook_id"]] = wh.Webhook.model_validate(dict(row))
    for row in await conn.fetch(f"SELECT * FROM {schema}.webhook_deliveries "
                                "WHERE delivery_id = ANY($1::uuid[])", list(delivery_ids)):
        out.deliveries[row["delivery_id"]] = wh.Delivery.model_validate(dict(row))
    return out


async def _write(conn: asyncpg.Connection, schema: str, folded: Folded) -> None:
    if folded.journal:
        await conn.executemany(
            f"INSERT INTO {schema}.webhook_events (partition, \"offset\", webhook_id, type, "
            "time, event) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            folded.journal)
    if folded.hooks:
        await conn.executemany(_UPSERT_HOOK.format(schema=schema), [
            tuple(getattr(h, c) for c in _HOOK_COLS) for h in folded.hooks.values()])
    if folded.deliveries:
        await conn.executemany(_UPSERT_DELIVERY.format(schema=schema), [
            tuple(getattr(d, c) for c in _DELIVERY_COLS) for d in folded.deliveries.values()])


async def _park(conn: asyncpg.Connection, schema: str, topic: str,
                parked: list[store.ParkedRow]) -> None:
    for p in parked:
        log.warning("parked %s partition %d offset %d (%s): %s", topic, p.partition, p.offset,
                    p.reason, p.error)
    if parked:
        await conn.executemany(
            f"INSERT INTO {schema}.dead_letters (projection, topic, partition, \"offset\", "
            "key, raw, error, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [(PROJECTION, topic, p.partition, p.offset, p.key, p.raw, p.error, p.reason)
             for p in parked])


async def apply_records(conn: asyncpg.Connection, records: list[Record], *, topic: str,
                        schema: str = "public") -> int:
    """Fold ``records`` into the tables in one transaction; returns events applied."""
    async with conn.transaction():
        cps = await store.lock_checkpoints(conn, schema=schema, projection=PROJECTION,
                                           topic=topic,
                                           partitions=sorted({r.partition for r in records}))
        fresh = sorted((r for r in records if r.offset > cps[r.partition]),
                       key=lambda r: (r.partition, r.offset))
        if not fresh:
            return 0
        folded = await _load(conn, schema, fresh)
        for r in fresh:
            folded.fold(r)
        await _write(conn, schema, folded)
        await _park(conn, schema, topic, folded.parked)
        last: dict[int, int] = {}
        for r in fresh:
            last[r.partition] = r.offset
        await conn.executemany(
            f"UPDATE {schema}.projector_offsets SET \"offset\" = $4, updated_at = now() "
            "WHERE projection = $1 AND topic = $2 AND partition = $3",
            [(PROJECTION, topic, p, o) for p, o in last.items()])
        return folded.applied


@dataclass
class WebhookProjector:
    """Folds the webhook topic of ``settings.topic``; one member of its own group."""

    settings: Settings
    events_applied: int = 0
    batches: int = 0
    _pool: asyncpg.Pool | None = field(default=None, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __repr__(self) -> str:
        return f"WebhookProjector({self.events_applied} events ◆ {self.batches} batches)"

    @property
    def topic(self) -> str:
        return wh.topic_for(self.settings.topic)

    async def start(self) -> None:
        s = self.settings
        await ensure_topic(s.kafka_bootstrap, self.topic, s.partitions,
                           replication_factor=s.replication_factor,
                           min_insync_replicas=s.min_insync_replicas)
        self._pool = await connections.create_pool(asyncpg_dsn(s.database_url), min_size=1,
                                                   max_size=2)
        self._consumer = GroupConsumer(
            bootstrap=s.kafka_bootstrap, topics=[self.topic],
            group_id=f"taskflow.projector.{PROJECTION}.{s.topic}",
            on_assigned=self._on_assigned, read_committed=True, max_poll_records=1000,
            client_id="taskflow-projector-webhooks")
        await self._consumer.start()

    async def _on_assigned(self, tps: list[TP]) -> dict[TP, int]:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            cps = await store.read_checkpoints(conn, schema="public", projection=PROJECTION,
                                               topic=self.topic)
        return {(t, p): cps.get(p, -1) + 1 for t, p in tps}

    async def run(self, *, until_idle: bool = False) -> None:
        assert self._consumer is not None and self._pool is not None
        idle = 0
        while not self._stopping.is_set():
            records = await self._consumer.poll(timeout_ms=200, max_records=1000)
            if not records:
                idle += 1
                if until_idle and idle > 5:
                    return
                continue
            idle = 0
            async with self._pool.acquire() as conn:
                self.events_applied += await apply_records(conn, records, topic=self.topic)
            self.batches += 1

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._pool is not None:
            await self._pool.close()
        log.info("shutdown %r", self)

    def request_stop(self) -> None:
        self._stopping.set()


@dataclass
class WithWebhooks:
    """The task projector and the webhook projector as one service: started, run and
    stopped together, so that one failing restarts both from their checkpoints."""

    main: Any
    hooks: WebhookProjector

    async def start(self) -> None:
        await self.main.start()
        await self.hooks.start()

    async def run(self, *, until_idle: bool = False) -> None:
        tasks = [asyncio.ensure_future(self.main.run(until_idle=until_idle)),
                 asyncio.ensure_future(self.hooks.run(until_idle=until_idle))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def stop(self) -> None:
        try:
            await self.hooks.stop()
        finally:
            await self.main.stop()

    def request_stop(self) -> None:
        self.main.request_stop()
        self.hooks.request_stop()


def _row_dict(model: wh.Webhook | wh.Delivery, cols: tuple[str, ...]) -> dict[str, Any]:
    return {c: getattr(model, c) for c in cols}


async def _fold_log(settings: Settings, upto: dict[int, int],
                    parked: set[tuple[int, int]]) -> Folded:
    folded = Folded()
    async for r in read_records(bootstrap=settings.kafka_bootstrap,
                                topic=wh.topic_for(settings.topic), upto=upto):
        if (r.partition, r.offset) not in parked:
            folded.fold(r)
    return folded


async def verify(settings: Settings) -> list[str]:
    """Differences between the webhook tables and a fresh fold of the webhook topic."""
    topic = wh.topic_for(settings.topic)
    conn = await connections.connect(asyncpg_dsn(settings.database_url))
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cps = await store.read_checkpoints(conn, schema="public", projection=PROJECTION,
                                               topic=topic)
            hooks = {r["webhook_id"]: wh.Webhook.model_validate(dict(r))
                     for r in await conn.fetch("SELECT * FROM webhooks")}
            dels = {r["delivery_id"]: wh.Delivery.model_validate(dict(r))
                    for r in await conn.fetch("SELECT * FROM webhook_deliveries")}
            parked = {(r["partition"], r["offset"]) for r in await conn.fetch(
                'SELECT partition, "offset" FROM dead_letters WHERE projection = $1 '
                "AND topic = $2", PROJECTION, topic)}
            journal = {(r["partition"], r["offset"]): r for r in await conn.fetch(
                'SELECT partition, "offset", webhook_id, type, time, event '
                "FROM webhook_events")}
    finally:
        await conn.close()
    folded = await _fold_log(settings, cps, parked)
    diffs = _journal_diffs(journal, folded)
    for name, live, want, cols in (("webhook", hooks, folded.hooks, _HOOK_COLS),
                                   ("delivery", dels, folded.deliveries, _DELIVERY_COLS)):
        live_d: dict[uuid.UUID, Any] = dict(live)
        want_d: dict[uuid.UUID, Any] = dict(want)
        for key in sorted(set(live_d) | set(want_d), key=str):
            a, b = live_d.get(key), want_d.get(key)
            if a is None or b is None:
                diffs.append(f"{name} {key}: read model={'absent' if a is None else 'present'}"
                             f" log={'absent' if b is None else 'present'}")
                continue
            ra, rb = _row_dict(a, cols), _row_dict(b, cols)
            diffs.extend(f"{name} {key} {c}: read model={ra[c]!r} log={rb[c]!r}"
                         for c in cols if ra[c] != rb[c])
    return diffs


def _journal_diffs(journal: dict[tuple[int, int], Any], folded: Folded) -> list[str]:
    """``webhook_events`` (what ``?as_of=`` folds) against the records it journals."""
    diffs: list[str] = []
    want = {(p, o): (hid, t, at, raw) for p, o, hid, t, at, raw in folded.journal}
    for pos in sorted(set(journal) | set(want)):
        row, rec = journal.get(pos), want.get(pos)
        where = f"journal {pos[0]}:{pos[1]}"
        if row is None or rec is None:
            diffs.append(f"{where}: read model={'absent' if row is None else 'present'} "
                         f"log={'absent' if rec is None else 'present'}")
            continue
        live = (row["webhook_id"], row["type"], row["time"], row["event"])
        logged = (rec[0], rec[1], rec[2], orjson.loads(rec[3]))
        diffs.extend(f"{where} {name}: read model={a!r} log={b!r}"
                     for name, a, b in zip(("webhook_id", "type", "time", "event"),
                                           live, logged, strict=True) if a != b)
    return diffs


SWAPPED: Final = ("webhooks", "webhook_deliveries", "webhook_events")
REBUILD_BATCH = 5000  # records per shadow transaction


async def rebuild(settings: Settings) -> int:
    """Refold the webhook topic into a shadow schema and swap its tables in; returns the
    webhook and delivery rows swapped in.

    As the task projection's rebuild (``projector.maintenance``): the fold runs while the
    live webhook projector goes on, never past its checkpoints; then one transaction
    holds the live checkpoints (the live projector waits), folds what it applied
    meanwhile, and swaps the tables. Readers see the old tables or the new ones, and wait
    only for the swap itself.
    """
    from projector.maintenance import RebuildIncomplete, _create_shadow

    topic = wh.topic_for(settings.topic)
    await ensure_topic(settings.kafka_bootstrap, topic, settings.partitions)
    shadow = f"rebuild_hooks_{int(time.time())}"
    conn = await connections.connect(asyncpg_dsn(settings.database_url))
    live_conn = await connections.connect(asyncpg_dsn(settings.database_url))
    try:
        await _create_shadow(conn, shadow, (*SWAPPED, "projector_offsets", "dead_letters"))

        async def checkpoints(c: asyncpg.Connection, schema: str) -> dict[int, int]:
            return await store.read_checkpoints(c, schema=schema, projection=PROJECTION,
                                                topic=topic)

        async def catch_up(upto: dict[int, int]) -> None:
            mine = await checkpoints(conn, shadow)
            if all(mine.get(p, -1) >= o for p, o in upto.items()):
                return
            chunk: list[Record] = []
            async for r in read_records(bootstrap=settings.kafka_bootstrap, topic=topic,
                                        from_position={p: o + 1 for p, o in mine.items()},
                                        upto=upto):
                chunk.append(r)
                if len(chunk) >= REBUILD_BATCH:
                    await apply_records(conn, chunk, topic=topic, schema=shadow)
                    chunk = []
            if chunk:
                await apply_records(conn, chunk, topic=topic, schema=shadow)
            short = {p: o for p, o in upto.items()
                     if (await checkpoints(conn, shadow)).get(p, -1) < o}
            if short:
                raise RebuildIncomplete(f"the webhook topic ends before the read model "
                                        f"(partitions {sorted(short)}); nothing was swapped")

        # Phase 1: fold up to the live checkpoints while the live projector goes on.
        await catch_up(await checkpoints(live_conn, "public"))
        # Phase 2: hold the live checkpoints, fold the rest, swap, in one transaction.
        async with live_conn.transaction():
            # As the task rebuild does: no projection moves a checkpoint (or adds one)
            # until the swap commits.
            await live_conn.execute(
                "LOCK TABLE public.projector_offsets IN SHARE ROW EXCLUSIVE MODE")
            await catch_up(await checkpoints(live_conn, "public"))
            for t in SWAPPED:
                await live_conn.execute(f"LOCK TABLE public.{t} IN ACCESS EXCLUSIVE MODE")
            for t in SWAPPED:
                await live_conn.execute(f"DROP TABLE public.{t}")
                await live_conn.execute(f"ALTER TABLE {shadow}.{t} SET SCHEMA public")
            rows = await live_conn.fetchval(
                "SELECT (SELECT count(*) FROM public.webhooks) "
                "+ (SELECT count(*) FROM public.webhook_deliveries)")
        return int(rows)
    finally:
        with contextlib.suppress(Exception):
            await conn.execute(f"DROP SCHEMA IF EXISTS {shadow} CASCADE")
        await conn.close()
        await live_conn.close()
