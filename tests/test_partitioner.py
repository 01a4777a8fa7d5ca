"""TaskFlow's murmur2 must place every key where Kafka's default partitioner would: a
task's later events (cancel, retry) are keyed sends and must land next to its
``task.created``, which a batch submit places with this function."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from events.codec import encode
from events.log import KeyPartitioner, murmur2
from events.models import TaskCreated, TaskDone, new_event


def test_murmur2_agrees_with_aiokafka_on_every_length_and_byte() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        data = rng.randbytes(rng.randrange(0, 80))
        assert murmur2(data) == aiokafka_murmur2(data), data


def test_task_keys_get_the_default_partitioners_partition() -> None:
    ours, theirs = KeyPartitioner(), DefaultPartitioner()
    for n in (1, 3, 6, 12, 64):
        parts = list(range(n))
        for _ in range(2000):
            key = str(uuid.uuid4()).encode()
            assert ours(key, parts, parts) == theirs(key, parts, parts)


def test_encode_is_the_json_of_the_events_dump() -> None:
    """``encode`` uses pydantic's serializer; it must write what model_dump describes."""
    import orjson

    for ev in (new_event(TaskCreated(title="t", payload={"n": [1, 2.5, None, "é"]}),
                         task_id=uuid.uuid4(), source="api", tenant="acme"),
               new_event(TaskDone(result={"k": 10**18}), task_id=uuid.uuid4(), source="w",
                         attempt=2)):
        assert orjson.loads(encode(ev)) == ev.model_dump(mode="json")
        assert encode(ev) == orjson.dumps(ev.model_dump(mode="json"))
