"""The change feed: one Postgres reader per API process, fanned out in memory.

A single connection LISTENs on ``taskflow_changes``. A notification is only a wake-up:
the feed then re-reads ``task_changes`` after the last position it delivered, so a lost
or coalesced notification costs latency, never a change (it also polls once a second).
Each subscriber has a bounded buffer (``queue_max`` changes); one that falls behind is
dropped and can resume with ``Last-Event-ID`` without loss. A read's changes reach each
subscriber as one append and one wake-up, and the subscriber sends everything it has
pending in one write, so the cost per subscriber follows reads, not changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from events.constants import CHANGES_CHANNEL
from events.db import asyncpg_dsn
from events.retry import Outage

log = logging.getLogger("taskflow.api.feed")

_SELECT = ("SELECT position, task_id, tenant, type, status, attempt, progress, summary, time "
           "FROM task_changes WHERE position > $1 ORDER BY position LIMIT $2")
_TOP = "SELECT coalesce(max(position), 0) FROM task_changes"
# The last change recorded before a moment (Postgres's clock stamps ``recorded_at``), or
# the retention watermark if that change was trimmed.
_BEFORE = ("SELECT greatest((SELECT coalesce(max(position), 0) FROM task_changes "
           "WHERE recorded_at < $1), "
           "(SELECT coalesce(max(trimmed_upto), 0) FROM change_retention))")
PAGE = 1000
FEED_APP_NAME = "taskflow-feed"  # application_name of the one reader per API process
CONNECT_TIMEOUT_S = 5.0  # seconds a (re)connection of the feed may take
FEED_RETRY_CAP_S = 2.0  # seconds, the longest wait between two reconnections
# What a read on the feed's connection raises when Postgres is away or restarting (or
# refuses a read: the feed then reconnects, as after a restart).
_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Change:
    position: int
    task_id: uuid.UUID
    tenant: str | None
    type: str
    status: str
    attempt: int
    progress: int
    summary: str | None
    time: datetime
    sse: bytes = b""  # the SSE frame, encoded once and shared by every subscriber

    def data(self) -> dict[str, Any]:
        return {"task_id": str(self.task_id), "status": self.status, "type": self.type,
                "attempt": self.attempt, "progress": self.progress, "summary": self.summary,
                "time": self.time.isoformat(), "position": self.position}


@dataclass(frozen=True)
class Filter:
    task_ids: frozenset[uuid.UUID] = frozenset()
    statuses: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    tenant: str | None = None
    any_tenant: bool = True

    @property
    def everything(self) -> bool:
        """True when every change matches (no filter, any tenant): no per-change test."""
        return (not self.task_ids and not self.statuses and not self.types
                and self.any_tenant)

    def match(self, c: Change) -> bool:
        return ((not self.task_ids or c.task_id in self.task_ids)
                and (not self.statuses or c.status in self.statuses)
                and (not self.types or c.type in self.types)
                and (self.any_tenant or c.tenant == self.tenant))


@dataclass(frozen=True, slots=True)
class Reset:
    """The client's position was trimmed by retention: it must refetch its state.

    ``position`` is where the stream continues from (sent as the event id, so that the
    client's Last-Event-ID moves past the trimmed range).
    """

    trimmed_upto: int
    position: int


class SubscriberDropped(Exception):
    """The subscriber's buffer overflowed; it must reconnect with Last-Event-ID."""


@dataclass(eq=False)
class Subscriber:
    """A subscriber's pending changes: appended a batch at a time, taken all at once."""

    filter: Filter
    everything: bool = False
    pending: list[Change] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False
    closed: bool = False


def _row(r: asyncpg.Record) -> Change:
    position, task_id, tenant, type_, status, attempt, progress, summary, time = r
    data = orjson.dumps({"task_id": str(task_id), "status": status, "type": type_,
                         "attempt": attempt, "progress": progress, "summary": summary,
                         "time": time.isoformat(), "position": position})
    frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (position, type_.encode(), data)
    return Change(position, task_id, tenant, type_, status, attempt, progress, summary,
                  time, frame)


@dataclass
class ChangeFeed:
    database_url: str
    queue_max: int = 1000
    poll_s: float = 1.0
    last: int = 0
    delivered: int = 0
    dropped: int = 0
    subscribers: set[Subscriber] = field(default_factory=set)
    _conn: asyncpg.Connection | None = None
    _positioned: bool = False  # ``last`` has been read from Postgres once
    _origin: int = 0  # where the feed started handing on changes
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _outage: Outage = field(default_factory=lambda: Outage("postgres (change feed)", log,
                                                           cap_s=FEED_RETRY_CAP_S))
    # Wake-ups of the pump (a notification or the poll), for reads that wait for the
    # projector: they re-read on a wake-up instead of polling Postgres on a timer.
    ticks: int = 0
    _ticked: asyncio.Event = field(default_factory=asyncio.Event)
    _applied: tuple[int, dict[int, int]] | None = None
    _applied_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __repr__(self) -> str:
        return (f"ChangeFeed(last={self.last} ◆ {len(self.subscribers)} subscribers ◆ "
                f"{self.delivered} delivered ◆ {self.dropped} dropped)")

    async def _connect(self) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url),
                                     timeout=CONNECT_TIMEOUT_S,
                                     server_settings={"application_name": FEED_APP_NAME})
        try:
            await conn.add_listener(CHANGES_CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # no goodbye: the server may be gone

    def _live(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise ConnectionError("the change feed is reconnecting to Postgres")
        return self._conn

    async def _position(self) -> None:
        """Start at the newest change: the feed hands on what is committed from now on
        (a client resuming from older positions reads those itself)."""
        self.last = self._origin = int(await self._live().fetchval(_TOP))
        self._positioned = True
        for sub in list(self.subscribers):  # anyone who joined while Postgres was away
            sub.wake.set()

    async def start(self) -> None:
        """Connect and LISTEN; if Postgres is away, start anyway and keep reconnecting."""
        try:
            await self._connect()
            await self._position()
        except _DOWN as exc:
            self._outage.failed(exc)
            await self._disconnect()
        self._task = asyncio.create_task(self._pump())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in list(self.subscribers):
            sub.closed = True
            sub.wake.set()
        if self._conn is not None:
            with contextlib.suppress(*_DOWN):
                await self._conn.close()

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _pump(self) -> None:
        """Read new changes on every wake-up (and every ``poll_s``).

        If Postgres goes away (a restart cuts the connection and its LISTEN), the feed
        reconnects with backoff, logging the outage once when it starts and once when it
        ends. It then reads on from the last position it delivered, so the subscribers
        miss nothing that was committed meanwhile.
        """
        while True:
            if self._outage.down:  # the backoff has been waited out: try again now
                self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            self._tick()
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._disconnect()
                    await self._connect()
                if not self._positioned:  # started while Postgres was away
                    await self._position()
                await self._read_new()
            except _DOWN as exc:
                await self._disconnect()
                await self._outage.wait(exc)
                continue
            self._outage.over()

    def _tick(self) -> None:
        self.ticks += 1
        ticked, self._ticked = self._ticked, asyncio.Event()
        ticked.set()

    async def next_tick(self, seen: int, timeout: float) -> None:
        """Return once the feed has woken after tick ``seen`` (a commit of the projector
        was notified, or the poll came round), or after ``timeout`` seconds."""
        if self.ticks != seen or timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ticked.wait(), timeout)

    async def applied(self, read: Callable[[], Awaitable[dict[int, int]]]
                      ) -> tuple[int, dict[int, int]]:
        """``read()`` (the projection's checkpoints) as of the current tick, and that tick.

        Read at most once per wake-up however many requests wait: a tick that comes
        during the read leaves the result stale, and the next caller reads again.
        """
        async with self._applied_lock:
            tick = self.ticks
            if self._applied is None or self._applied[0] != tick:
                self._applied = (tick, await read())
            return self._applied

    @contextlib.contextmanager
    def watch(self, flt: Filter) -> Iterator[Subscriber]:
        """A subscriber whose ``wake`` is set by each matching change from now on (its
        ``pending`` is not read: a waiter only needs to know that it may look again)."""
        sub = Subscriber(flt, everything=flt.everything)
        self.subscribers.add(sub)
        try:
            yield sub
        finally:
            self.subscribers.discard(sub)

    async def _read_new(self) -> None:
        conn = self._live()
        if not self.subscribers:
            # Nobody to hand changes to: only move the position on, so that a subscriber
            # who joins later reads its backlog from the right place.
            async with self._lock:
                top = await conn.fetchval(_TOP)
            if not self.subscribers:
                self.last = max(self.last, int(top))
                return
            # Someone joined during that read, at the old position: deliver from there.
        while True:
            async with self._lock:
                rows = await conn.fetch(_SELECT, self.last, PAGE)
            if not rows:
                return
            self._publish([_row(r) for r in rows])
            if len(rows) < PAGE:
                return

    def _publish(self, changes: list[Change]) -> None:
        """Hand one read's changes to every subscriber: one append and one wake-up each,
        however many changes the read brought."""
        self.last = changes[-1].position
        for sub in list(self.subscribers):
            if sub.dropped:
                continue
            matched = changes if sub.everything else [c for c in changes if sub.filter.match(c)]
            if not matched:
                continue
            if len(sub.pending) + len(matched) > self.queue_max:
                sub.dropped = True  # too far behind: it resumes with Last-Event-ID
                self.dropped += 1
                self.subscribers.discard(sub)
                sub.wake.set()
                continue
            sub.pending.extend(matched)
            self.delivered += len(matched)
            sub.wake.set()

    async def backlog(self, after: int, upto: int) -> list[Change]:
        """Changes in (after, upto], read on the feed's own connection."""
        async with self._lock:
            rows = await self._live().fetch(
                "SELECT position, task_id, tenant, type, status, attempt, progress, summary, "
                "time FROM task_changes WHERE position > $1 AND position <= $2 "
                "ORDER BY position LIMIT $3", after, upto, PAGE)
        return [_row(r) for r in rows]

    async def _recorded_before(self, moment: datetime) -> int:
        async with self._lock:
            return int(await self._live().fetchval(_BEFORE, moment))

    async def trimmed_upto(self) -> int:
        async with self._lock:
            v = await self._live().fetchval(
                "SELECT trimmed_upto FROM change_retention WHERE id = 1")
        return int(v or 0)

    async def subscribe(self, flt: Filter,
                        after: int | None) -> AsyncIterator[list[Change | Reset]]:
        """Every matching change after ``after`` exactly once, in order, then live ones.

        Changes come in batches: everything a subscriber has pending goes out in one write,
        so a subscriber that is behind catches up in few, large writes.

        The subscriber joins the live fan-out first and only then reads the backlog up to
        the position the feed had reached when it joined, so nothing falls between the
        two and nothing is sent twice.

        A subscriber that joins while the feed has not yet reached Postgres (the API
        started during an outage) waits for it. It then reads its backlog up to where the
        feed started; without ``after``, "from now on" means the changes Postgres recorded
        after the subscriber joined.
        """
        sub = Subscriber(flt, everything=flt.everything)
        self.subscribers.add(sub)
        try:
            since = datetime.now(UTC)
            waited = not self._positioned
            while not self._positioned:
                await sub.wake.wait()
                sub.wake.clear()
                if sub.closed:
                    return
            joined_at = self._origin if waited else self.last
            if after is not None:
                cursor = after
            elif waited:
                cursor = await self._recorded_before(since)
            else:
                cursor = joined_at
            while cursor < joined_at:
                page = await self.backlog(cursor, joined_at)
                # Checked after each read: retention may trim while we page.
                watermark = await self.trimmed_upto()
                if watermark > cursor:
                    yield [Reset(trimmed_upto=watermark, position=joined_at)]
                    cursor = joined_at
                    break
                if not page:
                    break
                cursor = page[-1].position
                matched: list[Change | Reset] = [c for c in page if flt.match(c)]
                if matched:
                    yield matched
            while True:
                await sub.wake.wait()
                sub.wake.clear()
                if sub.dropped:
                    raise SubscriberDropped()
                taken, sub.pending = sub.pending, []
                # Changes at or below the cursor were already sent from the backlog.
                batch: list[Change | Reset] = [c for c in taken if c.position > cursor]
                if batch:
                    cursor = batch[-1].position
                    yield batch
                if sub.closed:
                    return
        finally:
            self.subscribers.discard(sub)
