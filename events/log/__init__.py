"""The Kafka adapter: the only package that imports aiokafka.

Everything above it works with ``CloudEvent``, ``Record`` and ``(topic, partition)``
tuples. Producers are idempotent with ``acks=all``; consumers never auto-commit, because
the projector keeps its offsets in Postgres and the worker commits only up to its lowest
unfinished task.

- ``records``: ``Record``, ``RawMessage`` and the ``TP`` alias.
- ``partition``: which partition a task's events go to (Kafka's murmur2 partitioning).
- ``producer``: ``EventProducer`` (the API's appends), ``TransactionalProducer`` (a
  worker lane's events and offsets in one transaction).
- ``consumer``: ``GroupConsumer``, a consumer-group member, with ``fetch``, its policy of
  gathering while events flow and long-polling while idle.
- ``readers``: ``LogReader``, partitions read outside any group.
- ``admin``: topics, a group's committed offsets, ``ping``, and telling an outage
  (``log_down``) from a fenced producer (``fenced``).
- ``internals``: every use of aiokafka's private internals, and nothing else.
"""

from events.log.admin import (
    dead_letter_topic,
    delete_topics,
    describe_partitions,
    ensure_topic,
    ensure_topics,
    fenced,
    group_offsets,
    grow_partitions,
    log_down,
    ping,
)
from events.log.consumer import AssignedCallback, GroupConsumer, RevokedCallback
from events.log.fetch import AdaptiveFetch
from events.log.partition import KeyPartitioner, murmur2, partition_for, task_key
from events.log.producer import (
    BATCHED_APPEND_MIN,
    EventProducer,
    TransactionalProducer,
    send_batches,
)
from events.log.readers import LogReader
from events.log.records import TP, RawMessage, Record

# The names the tests have always imported these by.
_AdaptiveFetch = AdaptiveFetch
_key = task_key
_send_batches = send_batches

__all__ = [
    "BATCHED_APPEND_MIN",
    "TP",
    "AdaptiveFetch",
    "AssignedCallback",
    "EventProducer",
    "GroupConsumer",
    "KeyPartitioner",
    "LogReader",
    "RawMessage",
    "Record",
    "RevokedCallback",
    "TransactionalProducer",
    "_AdaptiveFetch",
    "_key",
    "_send_batches",
    "dead_letter_topic",
    "delete_topics",
    "describe_partitions",
    "ensure_topic",
    "ensure_topics",
    "fenced",
    "group_offsets",
    "grow_partitions",
    "log_down",
    "murmur2",
    "partition_for",
    "ping",
    "send_batches",
    "task_key",
]
