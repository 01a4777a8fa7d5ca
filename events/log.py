"""The Kafka adapter: the only module that imports aiokafka.

Everything above it works with ``CloudEvent``, ``Record`` and ``(topic, partition)``
tuples. Producers are idempotent with ``acks=all``; consumers never auto-commit, because
the projector keeps its offsets in Postgres and the worker commits only up to its lowest
unfinished task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, ProducerFenced, TopicAlreadyExistsError, for_code
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer import sender as _aiokafka_sender

from events import constants
from events.codec import encode
from events.errors import LogUnavailable, ProducerFencedOff
from events.models import CloudEvent, Position

# A transaction that starts right after the previous one commits is refused with
# CONCURRENT_TRANSACTIONS until the broker has written the commit markers (KAFKA-5477),
# usually within a millisecond or two. aiokafka then retries after a fixed 20 ms (its own
# override of the backoff for this case); each worker lane commits back to back under load,
# so that wait was a floor on end-to-end latency.
_aiokafka_sender.BACKOFF_OVERRIDE = constants.TXN_CONFLICT_BACKOFF_S

log = logging.getLogger("taskflow.log")

TP = tuple[str, int]  # (topic, partition)
BATCHED_APPEND_MIN = 16  # from this many events, an append fills record batches itself
_M, _MASK = 0x5BD1E995, 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), as aiokafka computes it.

    The same function as ``aiokafka.partitioner.murmur2``, twice as fast: the words
    are unpacked in one call and the masks that cannot matter are gone. It was a fifth
    of the API's CPU on a batch submit. ``tests/test_partitioner.py`` checks the two agree.
    """
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    for k in struct.unpack_from(f"<{length // 4}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = length & ~3
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


class KeyPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """Kafka's default partitioning of keyed records, with the faster ``murmur2``."""

    @classmethod
    def __call__(cls, key: bytes | None, all_partitions: list[int],
                 available: list[int]) -> int:
        if key is None:
            return int(super().__call__(key, all_partitions, available))
        return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


_PARTITIONER = KeyPartitioner()
AssignedCallback = Callable[[list[TP]], Awaitable[dict[TP, int]]]  # returns offsets to seek
RevokedCallback = Callable[[list[TP]], Awaitable[None]]


@dataclass(slots=True)
class Record:
    """One raw record from the log. Treat it as read-only: it is not frozen only because a
    frozen dataclass takes eight times as long to build, and every consumed record is one."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = field(default=())


def _key(task_id: uuid.UUID) -> bytes:
    return str(task_id).encode()


def _record(msg: Any) -> Record:
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        timestamp_ms=msg.timestamp,
        headers=tuple(msg.headers or ()),
    )


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> bool:
    """Create the event topic (kept forever) if it is missing; True if it was created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        configs = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
        resp = await admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs=configs)], timeout_ms=15_000
        )
        # aiokafka returns the broker's per-topic errors rather than raising them.
        for _name, code, *rest in resp.topic_errors:
            if code == TopicAlreadyExistsError.errno:
                return False
            if code:
                detail = (rest[0] if rest else None) or f"error code {code}"
                raise for_code(code)(f"cannot create topic {topic!r}: {detail}")
        return True
    finally:
        await admin.close()


def dead_letter_topic(topic: str) -> str:
    """Where the worker parks the records of ``topic`` it cannot handle."""
    return topic + constants.DEAD_LETTER_TOPIC_SUFFIX


async def ensure_topics(bootstrap: str, topic: str, partitions: int) -> list[str]:
    """Create the event topic and its dead-letter topic where missing; the names created.

    Both are made wherever one is (``stack up``, ``migrate``, the worker at start), so
    that the first poison record never finds its dead-letter topic missing.
    """
    created = []
    for name, n in ((topic, partitions),
                    (dead_letter_topic(topic), constants.DEAD_LETTER_PARTITIONS)):
        if await ensure_topic(bootstrap, name, n):
            created.append(name)
    return created


async def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Delete scratch topics (the tests' and the bench's own; TaskFlow never deletes its log).

    A broker left with thousands of test partitions gets measurably slower, and a 1M-event
    bench topic is about half a gigabyte. Failures are ignored: a leftover is harmless.
    """
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    try:
        await admin.start()
        await admin.delete_topics(list(topics), timeout_ms=30_000)
    except (KafkaError, OSError):
        pass
    finally:
        await admin.close()


async def group_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """The offsets ``group_id`` has committed on ``topic``, per partition (next to read).

    Every partition is asked for by name: asked for all, aiokafka checks only per-partition
    error codes, and a broker's group-level error (a coordinator still loading, say) came
    back as an empty answer, indistinguishable from a group that committed nothing.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        if described["error_code"]:
            raise for_code(described["error_code"])(f"cannot describe topic {topic!r}")
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        res = await admin.list_consumer_group_offsets(group_id, partitions=tps)
    finally:
        await admin.close()
    missing = sorted(tp.partition for tp in tps if tp not in res)
    if missing:
        raise LogUnavailable(f"group {group_id!r}: no committed offsets answered for "
                             f"{topic} partitions {missing}")
    return {tp.partition: int(m.offset) for tp, m in res.items() if m.offset >= 0}


def fenced(exc: BaseException) -> bool:
    """True if ``exc`` proves that another instance owns this producer's work now."""
    return isinstance(exc, ProducerFenced | ProducerFencedOff)


def log_down(exc: BaseException) -> bool:
    """True if ``exc`` says Kafka cannot be reached or did not answer in time (a broker
    restarting or stalled), rather than that it refused the work for good.

    A fenced producer is not an outage: another instance owns its partitions now.
    """
    if fenced(exc):
        return False
    return isinstance(exc, KafkaError | LogUnavailable | OSError | TimeoutError)


async def ping(bootstrap: str, timeout_s: float = 2.0) -> None:
    """Raise ``LogUnavailable`` unless the cluster answers a metadata request in time."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise LogUnavailable(f"kafka at {bootstrap}: {exc!r}") from None
    finally:
        await admin.close()


async def _send_batches(producer: AIOKafkaProducer, topic: str, partition: int,
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

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=True,
            # No linger: under load, submits that arrive while a partition's request is
            # in flight share the next one anyway, and at 200 tasks/s a 2 ms linger was
            # 2 ms of every task's wait for a worker (worker hop 11.0-11.3 -> 9.0-9.1 ms,
            # three interleaved pairs; end to end, single and batch, the same within the
            # noise in three pairs).
            linger_ms=0,
            max_batch_size=256 * 1024,
            partitioner=_PARTITIONER,
            request_timeout_ms=int(self.timeout_s * 1000),
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

    async def append(self, events: Sequence[CloudEvent]) -> list[Position]:
        """Append events (each keyed by its task id) and wait for every acknowledgement."""
        if not self._started:
            await self.start()

        async def _send_all() -> list[Position]:
            if len(events) >= BATCHED_APPEND_MIN:
                return await self._send_batched(events)
            futures = [
                await self._producer.send(self.topic, encode(ev), key=_key(ev.subject))
                for ev in events
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

    async def _send_batched(self, events: Sequence[CloudEvent]) -> list[Position]:
        """Many events: one record batch per partition, filled directly.

        ``send`` per record costs a coroutine, a metadata check and a batch lookup each
        time; for a 1,000-task submit that was the API's largest cost. Partitions are the
        ones ``send`` would pick (the default partitioner on the task id), so a task's
        later events still land next to its ``task.created``.
        """
        parts = sorted(await self._producer.partitions_for(self.topic))
        groups: dict[int, list[int]] = {}
        records: list[tuple[bytes, bytes]] = []
        for i, ev in enumerate(events):
            key = _key(ev.subject)
            groups.setdefault(_PARTITIONER(key, parts, parts), []).append(i)
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
            for fut, offsets in await _send_batches(self._producer, self.topic, p,
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
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=transactional_id,
            enable_idempotence=True,
            acks="all",
            # Without this 1 ms batch end to end was slower in three interleaved pairs,
            # by 0.1, 13 and 4 % (3,903 / 4,109 / 4,030 against 3,908 / 4,719 / 4,182
            # tasks/s); at 200 tasks/s it is at most 1 ms of latency. The linger that
            # cost latency was the API producer's, now none (``EventProducer``).
            linger_ms=1,
            max_batch_size=256 * 1024,
            # The same KAFKA-5477 window hits AddOffsetsToTxn and EndTxn, which retry
            # after this backoff (default 100 ms: one transaction in ten took > 100 ms).
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
                futures = [fut for fut, _ in await _send_batches(
                    self._producer, topic, partition,
                    [(_key(ev.subject), encode(ev)) for ev in events])]
            else:
                futures = [await self._producer.send(topic, encode(ev), key=_key(ev.subject))
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


@dataclass(frozen=True, slots=True)
class RawMessage:
    """Bytes to append as they are (dead-letter copies of poison records)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: GroupConsumer) -> None:
        self._c = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self._c.on_revoked is not None:
            await self._c.on_revoked([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        tps = [(tp.topic, tp.partition) for tp in assigned]
        if self._c.on_assigned is None:
            return
        seeks = await self._c.on_assigned(tps)
        for (t, p), off in seeks.items():
            self._c._consumer.seek(TopicPartition(t, p), off)
        if self._c.on_seeked is not None:
            self._c.on_seeked(tps)


class _AdaptiveFetch:
    """Gather while events flow, long-poll while idle.

    A fetch that waits for ``FETCH_MIN_BYTES`` or ``FETCH_MAX_WAIT_MS`` batches a busy
    partition, but an idle consumer then asks the broker a hundred times a second: an
    idle worker, projector and broker spent about a quarter of this 2-core machine on
    empty fetches. So after a fetch that brought nothing the next one asks for the
    first byte, waiting up to ``FETCH_IDLE_MAX_WAIT_MS``: the broker answers it the
    moment an event is committed, so the first event after a lull is also delivered
    sooner. If that answer came quickly, events are flowing and the next fetch gathers
    again; if it took longer than a gathering wait, events are further apart than
    gathering could batch, and the next fetch asks for the first byte too (at 20
    tasks/s a task's ``task.done`` then reaches the projector without waiting out the
    window that its ``task.created`` opened).

    While events flow fast (``FETCH_BUSY_BYTES_PER_MS`` and more), a gathering fetch
    asks for ``FETCH_BUSY_MIN_BYTES`` or ``FETCH_BUSY_MAX_WAIT_MS`` instead, until the
    flow falls below ``FETCH_CALM_BYTES_PER_MS``. Every fetch round costs the worker a
    Kafka transaction per partition that brought tasks, and the projector a Postgres
    transaction: with single POSTs end to end, rounds of up to 50 ms instead of 10 took
    the broker's CPU per task from about 320-390 to 100-150 µs, and throughput up by
    half. At 200 tasks/s the flow stays calm, so its latency is unchanged.

    aiokafka has no setting for this. Its fetcher builds each request from
    ``_fetch_min_bytes`` and ``_fetch_max_wait_ms`` after the previous one answered
    (``_proc_fetch_request``), so wrapping that method on the instance switches the
    next request. If a future aiokafka lacks them, the consumer keeps the fixed
    settings and says so.
    """

    def __init__(self, fetcher: Any) -> None:
        self.fetcher = fetcher
        self.fetches = 0
        self.empty = 0
        self.busy = False
        self.busy_fetches = 0  # gathering fetches that found events flowing fast
        self._proc = fetcher._proc_fetch_request

    @classmethod
    def install(cls, consumer: AIOKafkaConsumer) -> _AdaptiveFetch | None:
        fetcher: Any = getattr(consumer, "_fetcher", None)
        if fetcher is None or not all(hasattr(fetcher, a) for a in
                   ("_proc_fetch_request", "_fetch_min_bytes", "_fetch_max_wait_ms")):
            log.warning("aiokafka's fetcher changed: idle consumers poll every %d ms",
                        constants.FETCH_MAX_WAIT_MS)
            return None
        adaptive = cls(fetcher)
        fetcher._proc_fetch_request = adaptive._proc_fetch_request
        return adaptive

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        # This request's own minimum (with several brokers, fetches to each run at once).
        eager = getattr(request, "_min_bytes", self.fetcher._fetch_min_bytes) == 1
        # The answers already held, to tell this fetch's apart; only a gathering fetch's
        # size is read.
        held = {} if eager else dict(getattr(self.fetcher, "_records", {}))
        t0 = time.monotonic()
        got = bool(await self._proc(assignment, node_id, request))
        took_ms = (time.monotonic() - t0) * 1000
        self.fetches += 1
        if got:
            if eager:
                if took_ms >= constants.FETCH_MAX_WAIT_MS:
                    return got  # events further apart than a gathering wait: stay eager
                self.busy = False  # one quick answer says nothing about the flow
            else:
                rate = self._new_bytes(held) / max(took_ms, 1.0)
                self.busy = rate >= (constants.FETCH_CALM_BYTES_PER_MS if self.busy
                                     else constants.FETCH_BUSY_BYTES_PER_MS)
                self.busy_fetches += self.busy
            if self.busy:
                self.fetcher._fetch_min_bytes = constants.FETCH_BUSY_MIN_BYTES
                self.fetcher._fetch_max_wait_ms = constants.FETCH_BUSY_MAX_WAIT_MS
            else:
                self.fetcher._fetch_min_bytes = constants.FETCH_MIN_BYTES
                self.fetcher._fetch_max_wait_ms = constants.FETCH_MAX_WAIT_MS
        else:
            self.empty += 1
            self.busy = False
            self.fetcher._fetch_min_bytes = 1
            self.fetcher._fetch_max_wait_ms = constants.FETCH_IDLE_MAX_WAIT_MS
        return got

    def _new_bytes(self, held: dict[Any, Any]) -> int:
        """Bytes of the record sets this fetch added: aiokafka keeps a partition's answer
        as a ``FetchResult`` over the response's ``MemoryRecords`` until it is consumed."""
        n = 0
        for tp, result in getattr(self.fetcher, "_records", {}).items():
            if held.get(tp) is not result:
                records = getattr(getattr(result, "_partition_records", None), "_records", None)
                n += records.size_in_bytes() if records is not None else 0
        return n


class GroupConsumer:
    """A consumer-group member that never auto-commits.

    ``on_assigned`` returns the offsets to seek to (the projector's checkpoint + 1);
    partitions it leaves out resume from the group's committed offset.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Iterable[str],
        group_id: str,
        on_assigned: AssignedCallback | None = None,
        on_revoked: RevokedCallback | None = None,
        read_committed: bool = True,
        max_poll_records: int = 1000,
        client_id: str = "taskflow",
    ) -> None:
        self.group_id = group_id
        self.topics = list(topics)
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.fetches: _AdaptiveFetch | None = None  # fetch counts, after start()
        self._behind: dict[TopicPartition, int] = {}  # see ``stalled``
        # Called once the seeks returned by ``on_assigned`` are in place.
        self.on_seeked: Callable[[list[TP]], None] | None = None
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            max_poll_records=max_poll_records,
            # The broker answers a fetch once it has this much, or after this wait. With
            # a minimum of one byte a trickle of events became a fetch per record or two,
            # each a round of broker and client work; a few milliseconds of gathering
            # costs less latency than that load does on a busy machine. After an empty
            # fetch the consumer long-polls instead (see ``_AdaptiveFetch``).
            fetch_min_bytes=constants.FETCH_MIN_BYTES,
            fetch_max_wait_ms=constants.FETCH_MAX_WAIT_MS,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000,
        )

    async def start(self) -> None:
        await self._consumer.start()
        self.fetches = _AdaptiveFetch.install(self._consumer)
        self._consumer.subscribe(self.topics, listener=_Listener(self))

    async def stop(self) -> None:
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's fetcher cancels its fetch tasks on close and awaits them; one
            # cancelled in its error backoff (the broker away) re-raises the cancellation.
            # By then the group is left, so only the client is still to be closed.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            await self._consumer._client.close()

    async def poll(self, *, timeout_ms: int, max_records: int) -> list[Record]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Record] = []
        for msgs in batches.values():
            out.extend(_record(m) for m in msgs)
        return out

    async def keepalive(self) -> None:
        """Count as a poll without taking any records: for a consumer holding back.

        aiokafka leaves the group when ``getmany`` goes unused for ``max_poll_interval_ms``.
        Asking for a partition that does not exist resets that clock (and raises any
        coordination error) while every fetched record stays where it is.
        """
        await self._consumer.getmany(TopicPartition(self.topics[0], -1), timeout_ms=0)

    def assignment(self) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    async def stalled(self, timeout_s: float) -> list[TP]:
        """Partitions whose position was below the log's end at the previous call and has
        not moved since, although the log's end is still past it.

        Call it only after a poll that returned nothing. After a broker restart aiokafka
        has been seen to stop fetching one partition for good, with no error, while the
        others flowed; a consumer stalled like that must be rebuilt. If Kafka does not
        answer, nothing is reported (the outage itself is handled elsewhere).
        """
        tps = list(self._consumer.assignment())
        try:
            async with asyncio.timeout(timeout_s):
                ends = await self._consumer.end_offsets(tps)
                now = {tp: int(await self._consumer.position(tp)) for tp in tps}
        except (TimeoutError, KafkaError, OSError):
            self._behind = {}
            return []
        before, self._behind = self._behind, {tp: pos for tp, pos in now.items()
                                              if pos < int(ends[tp])}
        return sorted((tp.topic, tp.partition) for tp, pos in self._behind.items()
                      if before.get(tp) == pos)

    def highwater(self, tp: TP) -> int | None:
        """The end offset of ``tp`` as of the last fetch (None before the first fetch)."""
        hw = self._consumer.highwater(TopicPartition(*tp))
        return int(hw) if hw is not None else None

    async def commit(self, offsets: dict[TP, int]) -> None:
        await self._consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    async def committed(self, tp: TP) -> int | None:
        off = await self._consumer.committed(TopicPartition(*tp))
        return int(off) if off is not None else None

    async def position(self, tp: TP) -> int:
        return int(await self._consumer.position(TopicPartition(*tp)))

    async def beginning_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        res = await self._consumer.beginning_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): int(o) for tp, o in res.items()}

    async def end_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        res = await self._consumer.end_offsets([TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): int(o) for tp, o in res.items()}


class LogReader:
    """Reads partitions directly (no group), e.g. for replay, verify and rebuild."""

    def __init__(self, *, bootstrap: str, topic: str, read_committed: bool = True) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            max_poll_records=5000,
            fetch_max_wait_ms=100,
        )

    async def start(self) -> list[int]:
        """Connect and assign every partition of the topic; returns the partition ids."""
        await self._consumer.start()
        parts = self._consumer.partitions_for_topic(self.topic)
        if parts is None:
            await self._consumer._client.force_metadata_update()
            parts = self._consumer.partitions_for_topic(self.topic)
        if not parts:  # not an empty log: a replay or rebuild of it would pass for one
            await self._consumer.stop()
            raise LogUnavailable(f"topic {self.topic!r} does not exist")
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
        return sorted(parts)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def bounds(self) -> dict[int, tuple[int, int]]:
        """(first offset, end offset) per partition, at the time of the call."""
        tps = list(self._consumer.assignment())
        begin = await self._consumer.beginning_offsets(tps)
        end = await self._consumer.end_offsets(tps)
        return {tp.partition: (int(begin[tp]), int(end[tp])) for tp in tps}

    async def offsets_for_time(self, ts_ms: int) -> dict[int, int | None]:
        tps = list(self._consumer.assignment())
        res = await self._consumer.offsets_for_times({tp: ts_ms for tp in tps})
        return {tp.partition: (int(o.offset) if o is not None else None) for tp, o in res.items()}

    def seek(self, partition: int, offset: int) -> None:
        self._consumer.seek(TopicPartition(self.topic, partition), offset)

    def pause(self, partition: int) -> None:
        self._consumer.pause(TopicPartition(self.topic, partition))

    async def position(self, partition: int) -> int:
        return int(await self._consumer.position(TopicPartition(self.topic, partition)))

    async def poll(self, *, timeout_ms: int, max_records: int = 5000) -> list[Record]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Record] = []
        for msgs in batches.values():
            out.extend(_record(m) for m in msgs)
        return out


async def log_ends(holder: Any, settings: Any) -> dict[int, int]:
    """End offset per partition of ``settings.topic``, through a reader cached on ``holder.state``.

    Raises ``LogUnavailable`` if Kafka does not answer within the produce timeout.
    """
    reader: LogReader | None = getattr(holder.state, "log_reader", None)
    try:
        if reader is None:
            reader = LogReader(bootstrap=settings.kafka_bootstrap, topic=settings.topic)
            await asyncio.wait_for(reader.start(), settings.produce_timeout_s)
            holder.state.log_reader = reader
        bounds = await asyncio.wait_for(reader.bounds(), settings.produce_timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise LogUnavailable(f"cannot read log ends: {exc!r}") from None
    return {p: end for p, (_, end) in bounds.items()}


def partition_for(task_id: uuid.UUID, partitions: int) -> int:
    """The partition Kafka's default partitioner puts a task's events in (murmur2 of key)."""
    all_parts = list(range(partitions))
    return int(_PARTITIONER(_key(task_id), all_parts, all_parts))
