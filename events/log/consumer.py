"""The Kafka adapter's group consumer: a consumer-group member that never auto-commits.

The projector keeps its offsets in Postgres and the worker commits only up to its lowest
unfinished task, each through this class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from events import constants
from events.log import internals
from events.log.fetch import AdaptiveFetch
from events.log.records import TP, Record, to_record
from events.log.security import client_options

AssignedCallback = Callable[[list[TP]], Awaitable[dict[TP, int]]]  # returns offsets to seek
RevokedCallback = Callable[[list[TP]], Awaitable[None]]


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
        self.fetches: AdaptiveFetch | None = None  # fetch counts, after start()
        self._behind: dict[TopicPartition, int] = {}  # see ``stalled``
        # Called once the seeks returned by ``on_assigned`` are in place.
        self.on_seeked: Callable[[list[TP]], None] | None = None
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, **client_options(),
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
            # fetch the consumer long-polls instead (see ``AdaptiveFetch``).
            fetch_min_bytes=constants.FETCH_MIN_BYTES,
            fetch_max_wait_ms=constants.FETCH_MAX_WAIT_MS,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000,
            metadata_max_age_ms=constants.METADATA_MAX_AGE_MS,
        )

    async def start(self) -> None:
        await self._consumer.start()
        self.fetches = AdaptiveFetch.install(self._consumer)
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
            await internals.close_client(self._consumer)

    async def poll(self, *, timeout_ms: int, max_records: int) -> list[Record]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Record] = []
        for msgs in batches.values():
            out.extend(to_record(m) for m in msgs)
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

    def partition_count(self) -> int:
        """Partitions of the (first) topic, as the last metadata had them; 0 if unknown."""
        return len(self._consumer.partitions_for_topic(self.topics[0]) or ())

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

    def partitions_for(self, topic: str) -> list[int]:
        """The partitions of ``topic`` as this consumer's metadata knows them."""
        return sorted(self._consumer.partitions_for_topic(topic) or ())


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

