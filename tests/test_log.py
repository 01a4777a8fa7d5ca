"""The Kafka adapter's consumers, against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from events import constants
from events.errors import LogUnavailable
from events.log import (
    EventProducer,
    GroupConsumer,
    LogReader,
    _AdaptiveFetch,
    _key,
    delete_topics,
    ensure_topic,
    group_offsets,
)
from events.models import TaskCreated, new_event
from tests.helpers import Env, wait_until


def _created() -> Any:
    return new_event(TaskCreated(title="t", type="noop", payload={}), task_id=uuid.uuid4(),
                     source=constants.API_SOURCE)


@contextlib.asynccontextmanager
async def _consumer_and_producer(env: Env, group: str) -> AsyncIterator[
        tuple[GroupConsumer, EventProducer, _AdaptiveFetch]]:
    """A started group consumer of the test's topic, a producer to it, and the consumer's
    adaptive fetch (which must be installed)."""
    consumer = GroupConsumer(bootstrap=env.bootstrap, topics=[env.topic],
                             group_id=f"{env.topic}.{group}")
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await consumer.start()
    await producer.start()
    try:
        assert consumer.fetches is not None, "the adaptive fetch was not installed"
        yield consumer, producer, consumer.fetches
    finally:
        await producer.stop()
        await consumer.stop()


async def test_an_idle_consumer_long_polls_and_gets_the_next_event_at_once(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle, a group consumer asks the broker a few times a second, not a hundred.

    With the fixed gathering fetch (64 KiB or 10 ms) an idle consumer sent about 100
    fetches a second. After an empty fetch it now waits for the first byte, so an event
    after a lull arrives as soon as it is committed, not when a long poll times out.
    """
    async with _consumer_and_producer(env, "idle") as (consumer, producer, adaptive):
        async def assigned() -> bool:
            await consumer.poll(timeout_ms=100, max_records=10)
            return len(consumer.assignment()) == 6

        await wait_until(assigned, timeout=30, what="the partitions")
        await consumer.poll(timeout_ms=500, max_records=10)
        before, t0 = adaptive.fetches, time.monotonic()
        assert await consumer.poll(timeout_ms=2000, max_records=10) == []
        rate = (adaptive.fetches - before) / (time.monotonic() - t0)
        assert rate <= 2 * 1000 / constants.FETCH_IDLE_MAX_WAIT_MS, f"{rate:.0f} fetches/s idle"

        # A long poll that ignored the first byte would answer after its full wait: make
        # that wait long, so that such an answer cannot pass for a prompt one.
        monkeypatch.setattr(constants, "FETCH_IDLE_MAX_WAIT_MS", 2000)
        delays = []
        for _ in range(7):
            await asyncio.sleep(0.3)  # a lull: the consumer is long-polling again
            event = _created()
            t0 = time.monotonic()
            await producer.append([event])
            got: list[Any] = []
            while not got and time.monotonic() - t0 < 5:
                got = await consumer.poll(timeout_ms=50, max_records=10)
            delays.append(time.monotonic() - t0)
            assert [r.key for r in got] == [_key(event.subject)]
        assert statistics.median(delays) < 0.2, delays


class _Records:
    def __init__(self, n: int) -> None:
        self._records = self  # FetchResult._partition_records._records: MemoryRecords
        self.n = n

    def size_in_bytes(self) -> int:
        return self.n


class _Fetcher:
    """Just the attributes of aiokafka's fetcher that the adaptive fetch touches.

    Each answer is (brought events?, seconds the broker took to answer[, bytes]); an
    answer with bytes leaves a result holding that many, as aiokafka's fetcher does.
    """

    def __init__(self) -> None:
        self._fetch_min_bytes = constants.FETCH_MIN_BYTES
        self._fetch_max_wait_ms = constants.FETCH_MAX_WAIT_MS
        self._records: dict[Any, Any] = {}
        self.answers: list[tuple[Any, ...]] = []

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        got, took, *size = self.answers.pop(0)
        await asyncio.sleep(took)
        if size:
            self._records[("t", 0)] = type("FetchResult", (), {
                "_partition_records": _Records(size[0])})()
        return bool(got)


GATHER = (constants.FETCH_MIN_BYTES, constants.FETCH_MAX_WAIT_MS)
EAGER = (1, constants.FETCH_IDLE_MAX_WAIT_MS)


async def test_the_next_fetch_gathers_only_while_events_come_close_together() -> None:
    fetcher = _Fetcher()
    adaptive = _AdaptiveFetch(fetcher)
    slow = 3 * constants.FETCH_MAX_WAIT_MS / 1000
    fetcher.answers = [(False, 0), (True, 0), (False, 0), (True, slow), (True, 0), (True, slow)]

    def mode() -> tuple[int, int]:
        return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms

    assert await adaptive._proc_fetch_request(None, 0, None) is False
    assert mode() == EAGER  # nothing came: wait for the first byte
    assert await adaptive._proc_fetch_request(None, 0, None) is True
    assert mode() == GATHER  # events were there at once: gather
    assert await adaptive._proc_fetch_request(None, 0, None) is False
    assert mode() == EAGER
    assert await adaptive._proc_fetch_request(None, 0, None) is True
    assert mode() == EAGER  # the event came after longer than a gathering wait: stay eager
    assert await adaptive._proc_fetch_request(None, 0, None) is True
    assert mode() == GATHER
    assert await adaptive._proc_fetch_request(None, 0, None) is True
    assert mode() == GATHER  # a gathering fetch that brought events keeps gathering
    assert (adaptive.fetches, adaptive.empty) == (6, 2)


async def test_ensure_topic_says_whether_it_created_and_raises_what_the_broker_refused(
        env: Env) -> None:
    """aiokafka hands back the broker's per-topic errors instead of raising them, so
    ``taskflow stack up`` said it created the topic on every start, and a refused topic
    (here: zero partitions) would have passed for a created one."""
    topic = f"{env.topic}.ensure"
    try:
        assert await ensure_topic(env.bootstrap, topic, 2) is True
        assert await ensure_topic(env.bootstrap, topic, 2) is False
        with pytest.raises(KafkaError, match="cannot create topic"):
            await ensure_topic(env.bootstrap, f"{env.topic}.none", 0)
    finally:
        await delete_topics(env.bootstrap, [topic])


async def test_a_missing_topic_is_an_error_not_an_empty_log(env: Env) -> None:
    """Reading or asking about a topic that does not exist raises. It used to pass for an
    empty log: a replay printed nothing, a rebuild read nothing, and a group's offsets
    came back as none committed."""
    missing = f"{env.topic}.missing"
    reader = LogReader(bootstrap=env.bootstrap, topic=missing)
    with pytest.raises(LogUnavailable, match="does not exist"):
        await reader.start()
    with pytest.raises(KafkaError):
        await group_offsets(env.bootstrap, "taskflow.worker", missing)
    assert await group_offsets(env.bootstrap, f"{env.name}.nobody", env.topic) == {}


async def test_a_fast_flow_gathers_longer_and_a_calm_one_goes_back() -> None:
    """Each fetch round costs the worker a transaction per partition and the projector a
    Postgres transaction, so while events flow fast a gathering fetch waits longer; a
    calm flow goes back to the short wait, and a lull to the long poll."""
    fetcher = _Fetcher()
    adaptive = _AdaptiveFetch(fetcher)
    wait = constants.FETCH_MAX_WAIT_MS / 1000
    fast = int(constants.FETCH_BUSY_BYTES_PER_MS * constants.FETCH_MAX_WAIT_MS * 1.5)
    between = int(constants.FETCH_CALM_BYTES_PER_MS * constants.FETCH_MAX_WAIT_MS * 1.5)
    slow = int(constants.FETCH_CALM_BYTES_PER_MS * constants.FETCH_MAX_WAIT_MS * 0.3)
    busy = (constants.FETCH_BUSY_MIN_BYTES, constants.FETCH_BUSY_MAX_WAIT_MS)

    def mode() -> tuple[int, int]:
        return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms

    steps = [((True, wait, between), GATHER),  # under the fast mark: the short wait
             ((True, wait, fast), busy),  # fast: gather longer
             ((True, wait, between), busy),  # still above the calm mark: stay
             ((True, wait, slow), GATHER),  # calm: back to the short wait
             ((True, wait, fast), busy),
             ((False, 0), EAGER),  # a lull: the long poll for the first byte
             ((True, 0, fast * 10), GATHER)]  # a quick eager answer says nothing of the flow
    for answer, expected in steps:
        fetcher.answers = [answer]
        await adaptive._proc_fetch_request(None, 0, None)
        assert mode() == expected, (answer, mode())
        assert adaptive.busy == (expected == busy)
    assert adaptive.busy_fetches == 3


async def test_a_burst_on_the_real_broker_reads_as_a_fast_flow(env: Env) -> None:
    """The flow is measured from aiokafka's own fetch results: a burst of 3,000 events is
    a fast flow, and a trickle afterwards is not."""
    async with _consumer_and_producer(env, "burst") as (consumer, producer, adaptive):
        await producer.append([_created() for _ in range(3000)])
        seen = 0
        while seen < 3000:
            seen += len(await consumer.poll(timeout_ms=500, max_records=1000))
        assert adaptive.busy_fetches > 0
        calm = adaptive.busy_fetches
        for _ in range(20):  # 20 events a second
            await producer.append([_created()])
            await consumer.poll(timeout_ms=50, max_records=10)
        await asyncio.sleep(0.3)
        await consumer.poll(timeout_ms=300, max_records=10)
        assert adaptive.busy_fetches == calm
        assert not adaptive.busy
