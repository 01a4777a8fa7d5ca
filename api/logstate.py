"""The log's end offsets as the API sees them, read through one reader per process.

Only the API asks (for the projector's lag in ``/stats``): the reader is kept on the
app's state and closed by the lifespan (``api/app.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from events.errors import LogUnavailable
from events.log import LogReader, log_down


async def log_ends(holder: Any, settings: Any) -> dict[int, int]:
    """End offset per partition of ``settings.topic``, through a reader cached on ``holder.state``.

    Raises ``LogUnavailable`` if Kafka does not answer within the produce timeout.
    """
    reader: LogReader | None = getattr(holder.state, "log_reader", None)
    try:
        if reader is None:
            reader = LogReader(bootstrap=settings.kafka_bootstrap, topic=settings.topic)
            await asyncio.wait_for(reader.start(), settings.produce_timeout_s)
            holder.state.log_reader = reader
        bounds = await asyncio.wait_for(reader.bounds(), settings.produce_timeout_s)
    except LogUnavailable:
        raise
    except Exception as exc:
        if not log_down(exc):  # Kafka away or slow, as opposed to a bug
            raise
        raise LogUnavailable(f"cannot read log ends: {exc!r}") from None
    return {p: end for p, (_, end) in bounds.items()}
