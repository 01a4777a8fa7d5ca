"""Talking to the cluster rather than reading or writing records: the topics, a group's
committed offsets, whether Kafka answers, and telling an outage from a refusal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError, ProducerFenced, TopicAlreadyExistsError, for_code

from events import constants
from events.errors import LogUnavailable, ProducerFencedOff
from events.log.security import client_options


async def ensure_topic(bootstrap: str, topic: str, partitions: int, *,
                       replication_factor: int = 1, min_insync_replicas: int = 1) -> bool:
    """Create the event topic (kept forever) if it is missing; True if it was created.

    On a cluster, ``replication_factor`` 3 with ``min_insync_replicas`` 2 keeps every
    acknowledged write (acks=all) through the loss of any one broker.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000,
                                **client_options())
    await admin.start()
    try:
        configs = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete",
                   "min.insync.replicas": str(min_insync_replicas)}
        resp = await admin.create_topics(
            [NewTopic(topic, partitions, replication_factor, topic_configs=configs)],
            timeout_ms=15_000,
        )
        # aiokafka returns the broker's per-topic errors rather than raising them.
        for _name, code, *rest in resp.topic_errors:
            if code == TopicAlreadyExistsError.errno:
                # Another process may have created it a moment ago.
                await _until_led(admin, topic, partitions)
                return False
            if code:
                detail = (rest[0] if rest else None) or f"error code {code}"
                raise for_code(code)(f"cannot create topic {topic!r}: {detail}")
        await _until_led(admin, topic, partitions)
        return True
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, topic: str, partitions: int,
                     timeout_s: float = 15.0) -> None:
    """Wait (bounded) until the metadata shows every partition of a new topic with a
    leader. A consumer group that subscribes before that sees no partitions, assigns
    none, and only looks again at its next metadata refresh, minutes later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [meta] = await admin.describe_topics([topic])
        parts = meta.get("partitions") or []
        if (not meta.get("error_code") and len(parts) >= partitions
                and all(p.get("leader", -1) >= 0 for p in parts)):
            return
        await asyncio.sleep(0.1)


def dead_letter_topic(topic: str) -> str:
    """Where the worker parks the records of ``topic`` it cannot handle."""
    return topic + constants.DEAD_LETTER_TOPIC_SUFFIX


async def ensure_topics(bootstrap: str, topic: str, partitions: int, *,
                        replication_factor: int = 1, min_insync_replicas: int = 1,
                        also: Sequence[str] = ()) -> list[str]:
    """Create the event topic, its dead-letter topic and the topics ``also`` names (with
    the event topic's partitions) where missing; the names created.

    They are made wherever one is (``stack up``, ``migrate``, the worker at start), so
    that the first poison record never finds its dead-letter topic missing, and each is
    replicated as the event topic is.
    """
    created = []
    for name, n in ((topic, partitions),
                    (dead_letter_topic(topic), constants.DEAD_LETTER_PARTITIONS),
                    *((name, partitions) for name in also)):
        if await ensure_topic(bootstrap, name, n, replication_factor=replication_factor,
                              min_insync_replicas=min_insync_replicas):
            created.append(name)
    return created


async def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Delete scratch topics (the tests' and the bench's own; TaskFlow never deletes its log).

    A broker left with every test's partitions gets slower, and a bench topic holds a large
    share of the disk. Failures are ignored: a leftover is harmless.
    """
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000,
                                **client_options())
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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000,
                                **client_options())
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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options(),
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        raise LogUnavailable(f"kafka at {bootstrap}: {exc!r}") from None
    finally:
        await admin.close()


async def describe_partitions(bootstrap: str, topic: str) -> dict[int, dict[str, Any]]:
    """Each partition of ``topic``: its ``leader`` (a broker id, -1 if none), ``replicas``
    and in-sync replicas (``isr``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000,
                                **client_options())
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
        if desc["error_code"]:
            raise for_code(desc["error_code"])(f"cannot describe topic {topic!r}")
        return {p["partition"]: {"leader": p["leader"], "replicas": list(p["replicas"]),
                                 "isr": list(p["isr"])} for p in desc["partitions"]}
    finally:
        await admin.close()


async def grow_partitions(bootstrap: str, topic: str, partitions: int) -> int:
    """Give ``topic`` ``partitions`` partitions in all; the count it had before.

    Kafka only ever adds partitions. Tasks already in the log keep theirs: their later
    events are appended to the partition their read-model row records
    (``EventProducer.append``), not to where their key hashes on the new count.
    """
    before = len(await describe_partitions(bootstrap, topic))
    if partitions < before:
        raise ValueError(f"topic {topic!r} has {before} partitions; Kafka cannot remove any")
    if partitions == before:
        return before
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000,
                                **client_options())
    await admin.start()
    try:
        resp = await admin.create_partitions({topic: NewPartitions(total_count=partitions)},
                                             timeout_ms=30_000)
        for _name, code, *rest in resp.topic_errors:
            if code:
                detail = (rest[0] if rest else None) or f"error code {code}"
                raise for_code(code)(f"cannot grow topic {topic!r}: {detail}")
        return before
    finally:
        await admin.close()


async def delete_records_before(bootstrap: str, topic: str, offsets: dict[int, int]) -> None:
    """Delete each partition's records below the offset given, as Kafka's retention does
    (what an archived topic may then lose; the tests use it to stand in for retention)."""
    from aiokafka.admin.records_to_delete import RecordsToDelete

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000,
                                **client_options())
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, p): RecordsToDelete(before_offset=o)
                                    for p, o in offsets.items()}, timeout_ms=30_000)
    finally:
        await admin.close()
