"""The Celery peer: a no-op task on a Redis broker and result backend.

Run by the bench as ``celery -A bench.peer_celery worker -P prefork -c 2``. The Redis
server is the bench's own (``BENCH_REDIS_URL``); the broker is database 0 and results
are database 1, so the bench can count finished tasks with ``DBSIZE``.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

app = Celery("bench", broker=f"{REDIS}/0", backend=f"{REDIS}/1")
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=3600,  # s; the bench flushes Redis between scenarios anyway
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    """Does nothing; the result (None) is stored, so a client can wait for it."""
    return None
