"""Which partition a task's events go to: Kafka's default partitioning of keyed records.

Every event is keyed by its task id, so a task's events share a partition and stay in
order. A batch submit places records itself (``EventProducer``), so it must agree with
``send`` to the letter; ``tests/test_partitioner.py`` checks that it does.
"""

from __future__ import annotations

import struct
import uuid

from aiokafka.partitioner import DefaultPartitioner

_M, _MASK = 0x5BD1E995, 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), as aiokafka computes it.

    The same function as ``aiokafka.partitioner.murmur2``, made faster because hashing
    every key was a large share of the API's CPU on a batch submit: the words are
    unpacked in one call and the masks that cannot matter are gone.
    ``tests/test_partitioner.py`` checks the two agree.
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


PARTITIONER = KeyPartitioner()


def task_key(task_id: uuid.UUID) -> bytes:
    """The record key of every event of a task."""
    return str(task_id).encode()


def partition_for(task_id: uuid.UUID, partitions: int) -> int:
    """The partition Kafka's default partitioner puts a task's events in (murmur2 of key)."""
    all_parts = list(range(partitions))
    return int(PARTITIONER(task_key(task_id), all_parts, all_parts))
