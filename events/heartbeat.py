"""A liveness file for the consumer services: touched each time round a consumer loop.

Kubernetes (or any supervisor) reads its age: a worker or projector whose loop stopped
turning, hung on a call or waiting out an outage, stops touching it and is taken out of
service, then restarted. An HTTP endpoint would answer from the event loop even while
the consumer is stuck; the file only moves when the loop does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

BEAT_EVERY_S = 1.0  # seconds: at most one touch per second, however fast the loop turns


class Heartbeat:
    """Touches ``path`` (if set) at most once every ``BEAT_EVERY_S``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._last = 0.0

    def beat(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._last < BEAT_EVERY_S:
            return
        self._last = now
        try:
            os.utime(self.path)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
