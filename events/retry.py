"""Waiting out an outage: capped exponential backoff with jitter, logged once.

A dependency that goes away (Postgres restarting, a broker restarting or stalled) is
retried for as long as it takes. Each retry is not worth a log line; the start and the
end of the outage are. ``Outage`` keeps that bookkeeping for one dependency:

    outage = Outage("postgres", log)
    while True:
        try:
            await work()
        except OSError as exc:
            await outage.wait(exc)      # "postgres unavailable, retrying: ..." (once)
            continue
        outage.over()                   # "postgres back after 12.3 s" (once)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

OUTAGE_BASE_S = 0.2  # seconds, the first retry's delay before jitter
OUTAGE_CAP_S = 5.0  # seconds, the longest delay between two retries
OUTAGE_RESET_S = 60.0  # seconds without a failure after which backoff starts again at base


def backoff(attempt: int, *, base_s: float, cap_s: float) -> float:
    """Exponential backoff with equal jitter: in [d/2, d] where d = min(cap, base * 2^(n-1))."""
    d = min(cap_s, base_s * (2 ** max(0, min(attempt - 1, 62))))
    return float(d / 2 + random.uniform(0, d / 2))


@dataclass
class Outage:
    """The state of one dependency's outage: how long, how many retries, what to log.

    :param what: the dependency, as the log lines name it ("postgres", "kafka", ...).
    :param logger: where the start and the end of each outage are logged.
    :param base_s: the first retry's delay (before jitter).
    :param cap_s: the longest delay between two retries.
    :param reset_s: a failure this long after the previous one starts backoff afresh.
    """

    what: str
    logger: logging.Logger
    base_s: float = OUTAGE_BASE_S
    cap_s: float = OUTAGE_CAP_S
    reset_s: float = OUTAGE_RESET_S
    attempts: int = 0
    outages: int = 0  # outages seen so far
    since: float | None = None  # monotonic time the current outage started
    _last_failure: float = field(default=0.0, repr=False)

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Count a failed attempt; returns how long to wait before the next one."""
        now = time.monotonic()
        if now - self._last_failure > self.reset_s:
            self.attempts = 0
        self._last_failure = now
        self.attempts += 1
        if self.since is None:
            self.since = now
            self.outages += 1
            self.logger.warning("%s unavailable, retrying: %s", self.what, describe(exc))
        return backoff(self.attempts, base_s=self.base_s, cap_s=self.cap_s)

    async def wait(self, exc: BaseException) -> None:
        """``failed``, then sleep the backoff it returned."""
        await asyncio.sleep(self.failed(exc))

    def over(self) -> None:
        """The dependency answered again: log how long it was away (once per outage)."""
        if self.since is None:
            return
        took = time.monotonic() - self.since
        self.since = None
        self.logger.warning("%s back after %.1f s (%d retries)", self.what, took, self.attempts)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line and short enough for a log."""
    text = str(exc).replace("\n", " ")
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= 300 else out[:297] + "..."
