"""The notifier service: task events in, signed webhook deliveries out.

How the guarantees are kept:

* **Its own consumer group** over the task topic and the webhook topic (for
  ``:redeliver`` requests). Several instances share the partitions.
* **At least once.** A record's offset is committed only when every delivery it started
  has ended (delivered or dead-lettered) and that end is acknowledged in the webhook
  topic; the group's offset is the lowest record still open. A crash (``kill -9``)
  redelivers what was open, under the same ``webhook-id``: a delivery's id is derived
  from the webhook id and the event id, never drawn at random.
* **Every attempt is an event** (``webhook.delivery_attempted``: attempt number,
  outcome, response code or error), appended before the next attempt is scheduled.
* **A slow endpoint delays only itself.** Each delivery is its own task; requests to one
  webhook wait for a semaphore of ``notifier_endpoint_concurrency`` and for nothing else,
  and every request has bounded connect and read timeouts.
* **Retries** back off exponentially with jitter (``events.retry.backoff``) up to
  ``notifier_max_attempts``; then the delivery is dead-lettered (status
  ``dead_lettered``, listed by ``GET /webhooks/{id}/deliveries``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson

from events import webhooks as wh
from events.codec import decode
from events.db import asyncpg_dsn
from events.errors import LogUnavailable, UndecodableEvent
from events.heartbeat import Heartbeat
from events.log import TP, EventProducer, GroupConsumer, Record, ensure_topic
from events.outbound import OutboundSettings
from events.retry import Outage, backoff
from events.settings import Settings
from notifier import send, store
from notifier.settings import COMMIT_INTERVAL_S, NotifierSettings

log = logging.getLogger("taskflow.notifier")
SOURCE = "taskflow/notifier"


@dataclass
class Job:
    """One delivery to send: a task event for one webhook."""

    delivery_id: uuid.UUID
    target: store.Target
    body: bytes
    tp: TP
    offset: int
    event_id: uuid.UUID | None = None
    event_type: str | None = None
    task_id: uuid.UUID | None = None
    attempts_before: int = 0  # attempts of earlier rounds (a redelivery continues the count)
    made: int = 0  # attempts of this round made before a crash (the log has them)


@dataclass
class Notifier:
    """Delivers the task events of ``settings.topic`` to their tenants' webhooks.

    :param settings: topic, bootstrap and database.
    :param notifier: retries, concurrency and the consumer group.
    :param outbound: what a delivery may connect to, and its timeouts.
    """

    settings: Settings
    notifier: NotifierSettings = field(default_factory=NotifierSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    attempts: int = 0
    delivered: int = 0
    retries: int = 0
    dead_lettered: int = 0
    parked: int = 0
    _pool: asyncpg.Pool | None = field(default=None, repr=False)
    _consumer: GroupConsumer | None = field(default=None, repr=False)
    _producer: EventProducer | None = field(default=None, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _open: dict[TP, dict[int, int]] = field(default_factory=dict, repr=False)
    _read: dict[TP, int] = field(default_factory=dict, repr=False)
    _sems: dict[uuid.UUID, asyncio.Semaphore] = field(default_factory=dict, repr=False)
    _jobs: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _resync: bool = field(default=True, repr=False)  # partitions came: wait for the journal

    def __repr__(self) -> str:
        return (f"Notifier({self.attempts} attempts ◆ {self.delivered} delivered ◆ "
                f"{self.retries} retries ◆ {self.dead_lettered} dead-lettered ◆ "
                f"{self.parked} parked)")

    @property
    def hook_topic(self) -> str:
        return wh.topic_for(self.settings.topic)

    async def start(self) -> None:
        s = self.settings
        await ensure_topic(s.kafka_bootstrap, self.hook_topic, s.partitions,
                           replication_factor=s.replication_factor,
                           min_insync_replicas=s.min_insync_replicas)
        self._pool = await asyncpg.create_pool(asyncpg_dsn(s.database_url), min_size=1,
                                               max_size=4)
        self._producer = EventProducer(bootstrap=s.kafka_bootstrap, topic=self.hook_topic,
                                       timeout_s=s.produce_timeout_s)
        await self._producer.start()
        o = self.outbound
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(o.outbound_read_timeout_s,
                                  connect=o.outbound_connect_timeout_s),
            follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100))
        self._consumer = GroupConsumer(
            bootstrap=s.kafka_bootstrap, topics=[s.topic, self.hook_topic],
            group_id=self.notifier.notifier_group or f"taskflow.notifier.{s.topic}",
            on_assigned=self._on_assigned, on_revoked=self._on_revoked,
            read_committed=True, max_poll_records=500,
            client_id="taskflow-notifier")
        await self._consumer.start()

    async def stop(self) -> None:
        self._stopping.set()
        jobs = list(self._jobs)
        for t in jobs:
            t.cancel()
        for t in jobs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._commit()
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._client is not None:
            await self._client.aclose()
        if self._pool is not None:
            await self._pool.close()
        log.info("shutdown %r", self)

    def request_stop(self) -> None:
        self._stopping.set()

    async def _on_assigned(self, tps: list[TP]) -> dict[TP, int]:
        self._resync = True  # they may hold deliveries a dead owner had begun
        return {}  # no seek: the group's committed offsets are where to go on

    async def _await_projection(self) -> None:
        """Wait (bounded) until the webhook projection has applied every record the
        webhook topic holds now, so each delivery's attempts so far are known: a
        delivery that a killed notifier had begun continues its count and its limit."""
        assert self._consumer is not None and self._pool is not None
        topic = self.hook_topic
        ends = {p: o for (_, p), o in (await self._consumer.end_offsets(
            [(topic, p) for p in self._consumer.partitions_for(topic)])).items()}
        deadline = time.monotonic() + self.notifier.notifier_projection_wait_s
        while True:
            late = await store.behind(self._pool, projection=wh.PROJECTION, topic=topic,
                                      ends=ends)
            if not late:
                return
            if time.monotonic() >= deadline:
                log.warning("webhook projection still behind on partitions %s: attempt "
                            "counts restart from what it has", late)
                return
            await asyncio.sleep(0.1)

    async def _on_revoked(self, tps: list[TP]) -> None:
        with contextlib.suppress(Exception):
            await self._commit(set(tps))
        for tp in tps:
            self._open.pop(tp, None)
            self._read.pop(tp, None)

    def _safe(self) -> dict[TP, int]:
        """Per partition: the lowest offset still open, or the next one to read."""
        return {tp: min(self._open[tp]) if self._open.get(tp) else nxt
                for tp, nxt in self._read.items()}

    async def _commit(self, only: set[TP] | None = None) -> None:
        assert self._consumer is not None
        safe = {tp: o for tp, o in self._safe().items() if only is None or tp in only}
        if safe:
            await self._consumer.commit(safe)

    async def run(self, *, until_idle: bool = False, idle_ms: int = 1500) -> None:
        assert self._consumer is not None
        idle_since = time.monotonic()
        next_commit = time.monotonic() + COMMIT_INTERVAL_S
        heartbeat = Heartbeat(self.settings.heartbeat_file)
        while not self._stopping.is_set():
            heartbeat.beat()
            if time.monotonic() >= next_commit:
                await self._commit()
                next_commit = time.monotonic() + COMMIT_INTERVAL_S
            if len(self._jobs) >= self.notifier.notifier_max_in_flight:
                await self._consumer.keepalive()
                await asyncio.sleep(0.1)
                continue
            records = await self._consumer.poll(timeout_ms=200, max_records=500)
            if records:
                await self._dispatch(records)
                idle_since = time.monotonic()
            elif self._jobs:
                idle_since = time.monotonic()
            elif until_idle and (time.monotonic() - idle_since) * 1000 > idle_ms:
                break
        await self._commit()

    async def _dispatch(self, records: list[Record]) -> None:
        """Start the deliveries of a batch of records."""
        assert self._pool is not None
        decoded: list[tuple[Record, Any]] = []
        tenants: set[str | None] = set()
        for r in records:
            tp = (r.topic, r.partition)
            self._read[tp] = r.offset + 1
            try:
                ev: Any = (decode(r.value) if r.topic == self.settings.topic
                           else wh.decode_hook(r.value))
            except UndecodableEvent as exc:
                await self._park(r, exc.error)
                continue
            decoded.append((r, ev))
            if r.topic == self.settings.topic:
                tenants.add(ev.tenant)
        targets = await store.subscribers(self._pool, tenants) if tenants else []
        if self._resync:
            self._resync = False
            await self._await_projection()
        planned: list[tuple[Record, Any, list[Job]]] = []
        for r, ev in decoded:
            if isinstance(ev, wh.HookEvent):
                job = await self._redelivery(r, ev)
                planned.append((r, ev, [job] if job is not None else []))
            else:
                etype = ev.type.value
                planned.append((r, ev, [
                    Job(wh.delivery_id(t.webhook_id, ev.id), t, r.value or b"",
                        (r.topic, r.partition), r.offset, event_id=ev.id,
                        event_type=etype, task_id=ev.subject)
                    for t in targets if t.wants(ev.tenant, etype, ev.subject)]))
        # A record read again (a crash before its offset was committed) may have begun
        # deliveries: go on from their attempts in the log, and leave ended ones ended.
        fresh = [j.delivery_id for _, ev, jobs in planned if not isinstance(ev, wh.HookEvent)
                 for j in jobs]
        known = await store.progress(self._pool, fresh) if fresh else {}
        for r, ev, jobs in planned:
            if not isinstance(ev, wh.HookEvent):
                jobs = [j for j in jobs if known.get(j.delivery_id, (0, ""))[1]
                        not in ("delivered", "dead_lettered")]
                for j in jobs:
                    j.made = known.get(j.delivery_id, (0, ""))[0]
            if jobs:
                self._open.setdefault((r.topic, r.partition), {})[r.offset] = len(jobs)
            for job in jobs:
                task = asyncio.ensure_future(self._deliver(job))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)

    async def _redelivery(self, r: Record, ev: wh.HookEvent) -> Job | None:
        assert self._pool is not None
        if ev.type is not wh.HookType.REDELIVER_REQUESTED:
            return None
        did = wh.delivery_key(ev)
        target = await store.target(self._pool, ev.subject)
        row = await store.delivery(self._pool, did) if did is not None else None
        if target is None or row is None or row["body"] is None or did is None:
            log.warning("redelivery of %s to %s: nothing to send", did, ev.subject)
            return None
        body = row["body"]
        raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
        return Job(did, target, raw, (r.topic, r.partition), r.offset,
                   event_id=row["event_id"], event_type=row["event_type"],
                   task_id=row["task_id"], attempts_before=row["attempts"])

    async def _park(self, r: Record, error: str) -> None:
        assert self._pool is not None
        self.parked += 1
        log.warning("parked %s partition %d offset %d: %s", r.topic, r.partition, r.offset,
                    error[:200])
        await store.park(self._pool, topic=r.topic, partition=r.partition, offset=r.offset,
                         key=r.key, raw=r.value, error=error)

    def _sem(self, webhook_id: uuid.UUID) -> asyncio.Semaphore:
        sem = self._sems.get(webhook_id)
        if sem is None:
            sem = self._sems[webhook_id] = asyncio.Semaphore(
                self.notifier.notifier_endpoint_concurrency)
        return sem

    async def _deliver(self, job: Job) -> None:
        """Attempt ``job`` until it is delivered or dead-lettered; each attempt an event."""
        assert self._client is not None and self._pool is not None
        ns = self.notifier
        msg_id = wh.message_id(job.delivery_id)
        target: store.Target | None = job.target
        i = job.made
        while target is not None:
            i += 1
            async with self._sem(job.target.webhook_id):
                res = await send.attempt(self._client, url=target.url, secret=target.secret,
                                         msg_id=msg_id, body=job.body,
                                         allow=self.outbound.allowed())
            self.attempts += 1
            outcome: wh.Outcome = ("delivered" if res.ok else
                                   "dead_lettered" if i >= ns.notifier_max_attempts
                                   else "retrying")
            await self._record(job, job.attempts_before + i, outcome, res)
            if outcome != "retrying":
                if outcome == "delivered":
                    self.delivered += 1
                else:
                    self.dead_lettered += 1
                    log.warning("delivery %s to %s dead-lettered after %d attempts: %s",
                                job.delivery_id, target.url, i, res.error)
                break
            self.retries += 1
            await asyncio.sleep(backoff(i, base_s=ns.notifier_retry_base_s,
                                        cap_s=ns.notifier_retry_cap_s))
            # The subscription may have changed meanwhile: a new secret, or deleted.
            target = await store.target(self._pool, job.target.webhook_id)
        self._finish(job)

    async def _record(self, job: Job, n: int, outcome: wh.Outcome, res: send.Attempt) -> None:
        """Append the attempt's event; waits out a Kafka outage (the offset waits too)."""
        assert self._producer is not None
        data: dict[str, Any] = {
            "delivery_id": str(job.delivery_id), "attempt": n, "outcome": outcome,
            "status_code": res.status_code, "error": res.error,
            "event_id": str(job.event_id) if job.event_id else None,
            "event_type": job.event_type,
            "task_id": str(job.task_id) if job.task_id else None,
        }
        if n == 1:  # kept by the projection for :redeliver
            data["body"] = orjson.loads(job.body)
        ev = wh.HookEvent(source=SOURCE, type=wh.HookType.DELIVERY_ATTEMPTED,
                          subject=job.target.webhook_id, tenant=job.target.tenant, data=data)
        outage = Outage("kafka", log)
        while True:
            try:
                await self._producer.append_raw(self.hook_topic, ev.key(), ev.encode())
            except LogUnavailable as exc:
                await outage.wait(exc)
                continue
            outage.over()
            return

    def _finish(self, job: Job) -> None:
        offsets = self._open.get(job.tp)
        if offsets is None or job.offset not in offsets:
            return  # the partition was revoked meanwhile: its new owner delivers again
        offsets[job.offset] -= 1
        if offsets[job.offset] <= 0:
            del offsets[job.offset]

