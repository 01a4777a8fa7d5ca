"""The group consumers' fetch policy: gather while events flow, long-poll while idle."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer

from events import constants
from events.log import internals

log = logging.getLogger("taskflow.log")


class AdaptiveFetch:
    """Gather while events flow, long-poll while idle.

    A fetch that waits for ``FETCH_MIN_BYTES`` or ``FETCH_MAX_WAIT_MS`` batches a busy
    partition, but an idle consumer then asks the broker again every
    ``FETCH_MAX_WAIT_MS``, and an idle worker, projector and broker spent a large share
    of a small machine on empty fetches. So after a fetch that brought nothing the next
    one asks for the first byte, waiting up to ``FETCH_IDLE_MAX_WAIT_MS``: the broker
    answers it the moment an event is committed, so the first event after a lull is also
    delivered sooner. If that answer came quickly, events are flowing and the next fetch
    gathers again; if it took longer than a gathering wait, events are further apart than
    gathering could batch, and the next fetch asks for the first byte too (with tasks
    spaced out, a task's ``task.done`` then reaches the projector without waiting out
    the window that its ``task.created`` opened).

    While events flow fast (``FETCH_BUSY_BYTES_PER_MS`` and more), a gathering fetch
    asks for ``FETCH_BUSY_MIN_BYTES`` or ``FETCH_BUSY_MAX_WAIT_MS`` instead, until the
    flow falls below ``FETCH_CALM_BYTES_PER_MS``. Every fetch round costs the worker a
    Kafka transaction per partition that brought tasks, and the projector a Postgres
    transaction, so fewer and larger rounds while the flow is fast cut the broker's CPU
    per task and raise throughput. At the latency benchmark's rate the flow stays calm,
    so its latency is unchanged. The figures are in ``docs/benchmarks.md``.

    aiokafka has no setting for this. Its fetcher builds each request from its current
    limits after the previous one answered, so wrapping the method that runs a request
    switches the next one (``events/log/internals.py`` says which private names that
    takes). If a future aiokafka lacks them, the consumer keeps the fixed settings and
    says so.
    """

    def __init__(self, fetcher: Any) -> None:
        self.fetcher = fetcher
        self.fetches = 0
        self.empty = 0
        self.busy = False
        self.busy_fetches = 0  # gathering fetches that found events flowing fast
        self._proc = internals.fetch_request_proc(fetcher)

    @classmethod
    def install(cls, consumer: AIOKafkaConsumer) -> AdaptiveFetch | None:
        fetcher = internals.fetcher_of(consumer)
        if fetcher is None:
            log.warning("aiokafka's fetcher changed: idle consumers poll every %d ms",
                        constants.FETCH_MAX_WAIT_MS)
            return None
        adaptive = cls(fetcher)
        internals.replace_fetch_request_proc(fetcher, adaptive._proc_fetch_request)
        return adaptive

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        eager = internals.request_min_bytes(self.fetcher, request) == 1
        # The answers already held, to tell this fetch's apart; only a gathering fetch's
        # size is read.
        held = {} if eager else internals.held_answers(self.fetcher)
        t0 = time.monotonic()
        got = bool(await self._proc(assignment, node_id, request))
        took_ms = (time.monotonic() - t0) * 1000
        self.fetches += 1
        if got:
            if eager:
                if took_ms >= constants.FETCH_MAX_WAIT_MS:
                    return got  # events further apart than a gathering wait: stay eager
                self.busy = False  # one quick answer says nothing about the flow
            else:
                rate = internals.new_answer_bytes(self.fetcher, held) / max(took_ms, 1.0)
                self.busy = rate >= (constants.FETCH_CALM_BYTES_PER_MS if self.busy
                                     else constants.FETCH_BUSY_BYTES_PER_MS)
                self.busy_fetches += self.busy
            if self.busy:
                internals.set_fetch_limits(self.fetcher, constants.FETCH_BUSY_MIN_BYTES,
                                           constants.FETCH_BUSY_MAX_WAIT_MS)
            else:
                internals.set_fetch_limits(self.fetcher, constants.FETCH_MIN_BYTES,
                                           constants.FETCH_MAX_WAIT_MS)
        else:
            self.empty += 1
            self.busy = False
            internals.set_fetch_limits(self.fetcher, 1, constants.FETCH_IDLE_MAX_WAIT_MS)
        return got
