"""``taskflow log archive``: older records of the log into checksummed files."""

from __future__ import annotations

from datetime import datetime

from events import archive
from events.log import LogReader, Record
from events.settings import Settings


async def archive_log(settings: Settings, *, before: datetime, to: str) -> dict[int, int]:
    """Archive, per partition, the records not archived yet whose broker time is before
    ``before``; how many records per partition."""
    from projector.replay import read_records

    reader = LogReader(bootstrap=settings.kafka_bootstrap, topic=settings.topic)
    parts = await reader.start()
    try:
        bounds = await reader.bounds()
        cut = await reader.offsets_for_time(int(before.timestamp() * 1000))
    finally:
        await reader.stop()
    stop: dict[int, int] = {}
    for p in parts:
        at = cut.get(p)
        stop[p] = at if at is not None else bounds[p][1]
    done = archive.archived_upto(to, settings.topic)
    buffered: dict[int, list[Record]] = {p: [] for p in parts}
    async for r in read_records(bootstrap=settings.kafka_bootstrap, topic=settings.topic,
                                from_position=done, upto={p: o - 1 for p, o in stop.items()},
                                progress=True):
        buffered[r.partition].append(r)
    counts: dict[int, int] = {}
    for p in parts:
        if stop[p] > done.get(p, 0):
            entry = archive.write(to, settings.topic, p, buffered[p], upto=stop[p])
            counts[p] = entry["count"] if entry else 0
    return counts
