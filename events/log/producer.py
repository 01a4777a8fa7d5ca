"""Appending to the log: the API's ``EventProducer`` and the worker lanes'
``TransactionalProducer``. Both are idempotent with ``acks=all``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from events import constants
from events.codec import encode
from events.errors import LogUnavailable, ProducerFencedOff
from events.log import internals
from events.log.partition import PARTITIONER, task_key
from events.log.records import TP, RawMessage
from events.log.security import client_options
from events.models import CloudEvent, Position

BATCHED_APPEND_MIN = 16  # from this many events, an append fills record batches itself


async def send_batches(producer: AIOKafkaProducer, topic: str, partition: int,
                        records: Sequence[tuple[bytes, bytes]],
                        ) -> list[tuple[asyncio.Future[Any], list[int]]]:
    """(key, value) records for one partition, queued as whole record batches.

    ``send`` per record costs a coroutine, a metadata check, a partitioner call and a
    future each. Returns each batch's acknowledgement and, in order, the offset of each
    of its records within it.
    """
    out: list[tuple[asyncio.Future[Any], list[int]]] = []
    builder = producer.create_batch()
    offsets: list[int] = []
    for key, value in records:
        meta = builder.append(timestamp=None, key=key, value=value)
        if meta is None:  # the batch is full: queue it, start the next
            out.append((await producer.send_batch(builder, topic, partition=partition),
                        offsets))
            builder, offsets = producer.create_batch(), []
            meta = builder.append(timestamp=None, key=key, value=value)
        offsets.append(meta.offset)
    if records:
        out.append((await producer.send_batch(builder, topic, partition=partition), offsets))
    return out


class EventProducer:
    """Appends events to the log. A return means the broker acknowledged with acks=all."""

    def __init__(self, *, bootstrap: str, topic: str, timeout_s: float) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self._bootstrap = bootstrap
        self._producer = self._new_producer()
        self._started = False
        self._start_lock = asyncio.Lock()
        self._batch_lock = asyncio.Lock()
        # Rewrites events just before they are appended (None: none).
        self.before_append: Callable[[Sequence[CloudEvent]],
                                     Awaitable[Sequence[CloudEvent]]] | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, **client_options(),
            acks="all",
            enable_idempotence=True,
            # No linger: under load, submits that arrive while a partition's request is
            # in flight share the next one anyway, so a linger bought no throughput and
            # added its whole length to every task's wait for a worker.
            linger_ms=0,
            max_batch_size=256 * 1024,
            partitioner=PARTITIONER,
            request_timeout_ms=int(self.timeout_s * 1000),
            metadata_max_age_ms=constants.METADATA_MAX_AGE_MS,
        )

    async def start(self) -> None:
        """Connect; ``LogUnavailable`` if Kafka does not answer within the timeout.

        A producer that could not start is replaced by a fresh one, which the next
        ``append`` starts: an API that came up while Kafka was away answers 503 to writes
        until Kafka is back, then writes again without a restart.
        """
        async with self._start_lock:
            if self._started:
                return
            try:
                await asyncio.wait_for(self._producer.start(), self.timeout_s)
            except (TimeoutError, KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await self._producer.stop()
                self._producer = self._new_producer()
                raise LogUnavailable(f"cannot connect: {exc!r}") from None
            self._started = True

    async def stop(self) -> None:
        await self._producer.stop()

    async def append(self, events: Sequence[CloudEvent],
                     partitions: Sequence[int | None] | None = None) -> list[Position]:
        """Append events (each keyed by its task id) and wait for every acknowledgement.

        ``partitions``, one per event, is where each task's ``task.created`` landed (its
        read-model row's ``partition``): a later event of an existing task goes there,
        not where the key hashes today, so that growing the topic (``taskflow topics
        grow``) never splits a task's events across two partitions. ``None``: by key.
        """
        if not self._started:
            await self.start()
        if self.before_append is not None:  # e.g. the API's payload sealing
            events = await self.before_append(events)
        placed = list(partitions) if partitions is not None else [None] * len(events)

        async def _send_all() -> list[Position]:
            if len(events) >= BATCHED_APPEND_MIN:
                return await self._send_batched(events, placed)
            futures = [
                await self._producer.send(self.topic, encode(ev), key=task_key(ev.subject),
                                          partition=p)
                for ev, p in zip(events, placed, strict=True)
            ]
            metas = await asyncio.gather(*futures)
            return [Position(partition=m.partition, offset=m.offset) for m in metas]

        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                return await _send_all()
        except TimeoutError:
            raise LogUnavailable(f"no acknowledgement within {self.timeout_s}s") from None
        except KafkaError as exc:
            raise LogUnavailable(repr(exc)) from None

    async def _send_batched(self, events: Sequence[CloudEvent],
                            where: Sequence[int | None]) -> list[Position]:
        """Many events: one record batch per partition, filled directly.

        ``send`` per record costs a coroutine, a metadata check and a batch lookup each
        time; for a large batch submit that was the API's largest cost. Partitions are the
        ones ``send`` would pick (the default partitioner on the task id), so a task's
        later events still land next to its ``task.created``.
        """
        parts = sorted(await self._producer.partitions_for(self.topic))
        groups: dict[int, list[int]] = {}
        records: list[tuple[bytes, bytes]] = []
        for i, ev in enumerate(events):
            key = task_key(ev.subject)
            at = where[i]
            groups.setdefault(PARTITIONER(key, parts, parts) if at is None else at,
                              []).append(i)
            records.append((key, encode(ev)))
        sent: list[tuple[asyncio.Future[Any], int, list[tuple[int, int]]]] = []
        # aiokafka queues one whole batch per partition at a time: a second one waits
        # for the first to go out, and concurrent waiters can run out its timeout. So
        # appends take turns here; the acknowledgements are awaited outside the lock.
        async with self._batch_lock:
            await self._queue_batches(groups, records, sent)
        positions: list[Position] = [Position(partition=-1, offset=-1)] * len(events)
        for fut, p, placed in sent:
            base = (await fut).offset
            for i, rel in placed:
                positions[i] = Position(partition=p, offset=base + rel)
        return positions

    async def _queue_batches(
        self, groups: dict[int, list[int]], records: list[tuple[bytes, bytes]],
        sent: list[tuple[asyncio.Future[Any], int, list[tuple[int, int]]]],
    ) -> None:
        for p, members in groups.items():
            rest = iter(members)
            for fut, offsets in await send_batches(self._producer, self.topic, p,
                                                    [records[i] for i in members]):
                sent.append((fut, p, [(next(rest), rel) for rel in offsets]))

    async def append_raw(self, topic: str, key: bytes | None, value: bytes | None,
                         headers: Sequence[tuple[str, bytes]] = ()) -> Position:
        """Append bytes as they are: dead-letter topics and test fixtures (golden logs)."""
        if not self._started:
            await self.start()
        meta = await asyncio.wait_for(
            self._producer.send_and_wait(topic, value, key=key, headers=list(headers)),
            self.timeout_s,
        )
        return Position(partition=meta.partition, offset=meta.offset)


class TransactionalProducer:
    """A producer with a ``transactional_id``: events and consumer offsets commit atomically.

    A new instance with the same id fences the old one (a zombie after a rebalance), so
    its later commits fail instead of writing a second terminal event.
    """

    def __init__(self, *, bootstrap: str, transactional_id: str, timeout_s: float) -> None:
        self.transactional_id = transactional_id
        self.timeout_s = timeout_s
        internals.set_txn_conflict_backoff(constants.TXN_CONFLICT_BACKOFF_S)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, **client_options(),
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            # A lane's sends in one transaction gather into fewer record batches, which
            # end-to-end throughput needs; the latency it adds is at most the linger, once
            # per transaction. The linger that cost latency was the API producer's, now
            # none (``EventProducer``).
            linger_ms=1,
            max_batch_size=256 * 1024,
            # The same KAFKA-5477 window hits AddOffsetsToTxn and EndTxn, which retry
            # after this backoff; aiokafka's default is far longer than the window, and a
            # transaction that hit it waited all of it.
            retry_backoff_ms=constants.TXN_RETRY_BACKOFF_MS,
            request_timeout_ms=int(timeout_s * 1000),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def commit(
        self,
        *,
        topic: str,
        events: Sequence[CloudEvent],
        offsets: dict[TP, int],
        group_id: str,
        raw: Sequence[RawMessage] = (),
        partition: int | None = None,
    ) -> None:
        """Append ``events`` (and ``raw`` messages) and commit ``offsets`` in one transaction.

        ``offsets`` are the next offsets to read, as Kafka commits them. ``partition``, if
        given, is where every event goes (a worker lane writes a task's events where its
        ``task.created`` is); otherwise each goes where its task id's key hashes to.
        """
        async with self._producer.transaction():
            if partition is not None:  # a worker lane: all to its own partition
                futures = [fut for fut, _ in await send_batches(
                    self._producer, topic, partition,
                    [(task_key(ev.subject), encode(ev)) for ev in events])]
            else:
                futures = [
                    await self._producer.send(topic, encode(ev), key=task_key(ev.subject))
                    for ev in events]
            for m in raw:
                futures.append(
                    await self._producer.send(m.topic, m.value, key=m.key, headers=list(m.headers))
                )
            if offsets:
                await self._producer.send_offsets_to_transaction(
                    {TopicPartition(t, p): o for (t, p), o in offsets.items()}, group_id
                )
        await asyncio.gather(*futures)

    async def safe_commit(self, **kwargs: Any) -> None:
        try:
            await self.commit(**kwargs)
        except ProducerFenced as exc:
            raise ProducerFencedOff(self.transactional_id) from exc

