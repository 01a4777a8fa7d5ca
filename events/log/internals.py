"""Every use of aiokafka's private internals, and nothing else.

aiokafka has no public setting for what these do. Each one is named here, and
``tests/test_aiokafka_internals.py`` checks against the installed aiokafka that it still
exists with the shape used below, so that an upgrade which changes one fails that test by
name instead of quietly switching a behaviour off:

- ``aiokafka.producer.sender.BACKOFF_OVERRIDE``: the wait before retrying a transaction
  the broker refused as concurrent (``set_txn_conflict_backoff``).
- ``AIOKafkaConsumer._fetcher``, the ``Fetcher``: its ``_proc_fetch_request(assignment,
  node_id, request)``, which runs one fetch and is looked up on the instance for every
  request; ``_fetch_min_bytes`` and ``_fetch_max_wait_ms``, read when the next request is
  built; ``_records``, the answers held per partition, each a ``FetchResult`` whose
  ``_partition_records._records`` is the response's ``MemoryRecords``; and a fetch
  request's ``_min_bytes`` (the fetch-policy helpers below).
- ``AIOKafkaConsumer._client``, the ``AIOKafkaClient``: ``close()`` and
  ``force_metadata_update()`` (``close_client``, ``refresh_metadata``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.producer import sender as _aiokafka_sender

FetchRequestProc = Callable[[Any, int, Any], Awaitable[bool]]  # (assignment, node, request)
FETCHER_ATTRS = ("_proc_fetch_request", "_fetch_min_bytes", "_fetch_max_wait_ms")


def set_txn_conflict_backoff(seconds: float) -> None:
    """Wait ``seconds`` before retrying a transaction refused with CONCURRENT_TRANSACTIONS.

    A transaction that starts right after the previous one commits is refused until the
    broker has written the commit markers (KAFKA-5477). aiokafka then retries after a fixed
    wait of its own (a module constant, not the producer's ``retry_backoff_ms``); each
    worker lane commits back to back under load, so that wait was a floor on end-to-end
    latency.
    """
    _aiokafka_sender.BACKOFF_OVERRIDE = seconds


def fetcher_of(consumer: AIOKafkaConsumer) -> Any | None:
    """The started ``consumer``'s fetcher, or None if it lacks what the fetch policy uses."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    if fetcher is None or not all(hasattr(fetcher, a) for a in FETCHER_ATTRS):
        return None
    return fetcher


def fetch_request_proc(fetcher: Any) -> FetchRequestProc:
    """The coroutine that runs one fetch request and stores its answers."""
    proc: FetchRequestProc = fetcher._proc_fetch_request
    return proc


def replace_fetch_request_proc(fetcher: Any, proc: FetchRequestProc) -> None:
    """Run ``proc`` for every fetch request from now on (set on this fetcher only)."""
    fetcher._proc_fetch_request = proc


def set_fetch_limits(fetcher: Any, min_bytes: int, max_wait_ms: int) -> None:
    """What the next fetch request asks the broker for: this many bytes, or this wait."""
    fetcher._fetch_min_bytes = min_bytes
    fetcher._fetch_max_wait_ms = max_wait_ms


def request_min_bytes(fetcher: Any, request: Any) -> int:
    """The minimum ``request`` asked for (with several brokers, fetches to each run at once,
    so the fetcher's current setting may already be the next request's)."""
    return int(getattr(request, "_min_bytes", fetcher._fetch_min_bytes))


def held_answers(fetcher: Any) -> dict[Any, Any]:
    """A copy of the fetched answers not yet consumed, per partition."""
    return dict(getattr(fetcher, "_records", {}))


def new_answer_bytes(fetcher: Any, held: dict[Any, Any]) -> int:
    """Bytes of the record sets added since ``held`` was taken: aiokafka keeps a
    partition's answer as a ``FetchResult`` over the response's ``MemoryRecords`` until it
    is consumed."""
    n = 0
    for tp, result in getattr(fetcher, "_records", {}).items():
        if held.get(tp) is not result:
            records = getattr(getattr(result, "_partition_records", None), "_records", None)
            n += records.size_in_bytes() if records is not None else 0
    return n


async def close_client(consumer: AIOKafkaConsumer) -> None:
    """Close the consumer's network client alone (its group and fetcher already gone)."""
    await consumer._client.close()


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask the cluster for fresh metadata now and wait for the answer."""
    await consumer._client.force_metadata_update()
