"""The Dramatiq peer: a no-op actor on a Redis broker and result backend.

Run by the bench as ``dramatiq bench.peer_dramatiq -p 2 -t 8`` (Dramatiq's defaults on
this machine, spelled out). The Redis server is the bench's own (``BENCH_REDIS_URL``);
the broker is database 0 and results are database 1, so the bench can count finished
tasks with ``DBSIZE``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

broker = RedisBroker(url=f"{REDIS}/0")
backend = RedisBackend(url=f"{REDIS}/1")
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", store_results=True, max_retries=0)
def noop() -> None:
    """Does nothing; the result (None) is stored, so a client can wait for it."""
    return None
