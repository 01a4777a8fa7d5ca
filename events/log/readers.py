"""Reading partitions directly, outside any consumer group: replay, verify, rebuild."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from events.errors import LogUnavailable
from events.log import internals
from events.log.records import Record, to_record
from events.log.security import client_options


class LogReader:
    """Reads partitions directly (no group), e.g. for replay, verify and rebuild."""

    def __init__(self, *, bootstrap: str, topic: str, read_committed: bool = True) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, **client_options(),
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
            await internals.refresh_metadata(self._consumer)
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
            out.extend(to_record(m) for m in msgs)
        return out

