"""Reading the log straight from Kafka: replay for auditors, and the fold that verify uses.

Memory stays bounded: records are streamed partition by partition up to the end offsets
taken at the start, and nothing but the current batch is held.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from events import archive
from events.codec import decode
from events.errors import LogUnavailable, UndecodableEvent
from events.log import LogReader, Record
from events.models import CloudEvent


@dataclass
class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    total: int
    label: str = "events"
    done: int = 0
    enabled: bool = field(default_factory=lambda: sys.stderr.isatty())
    _t0: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def update(self, n: int = 1, *, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        rate = self.done / max(now - self._t0, 1e-6)
        pct = 100 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 30
        fill = int(width * min(pct, 100) / 100)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {pct:5.1f}% "
                         f"{self.done}/{self.total} {self.label} {rate:,.0f}/s "
                         f"ETA {eta:,.0f}s {extra}  ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._last = 0.0
            self.update(0)
            sys.stderr.write("\n")


def parse_positions(spec: str | None) -> dict[int, int]:
    """``"2:41,3:0"`` -> {2: 41, 3: 0}; partitions not named start at the beginning."""
    out: dict[int, int] = {}
    if not spec:
        return out
    for part in spec.split(","):
        p, _, o = part.strip().partition(":")
        if not o:
            raise ValueError(f"position {part!r} is not PARTITION:OFFSET")
        out[int(p)] = int(o)
    return out


@dataclass
class ReplayFilter:
    task: str | None = None
    types: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    actors: frozenset[str] = frozenset()  # the events' ``actor`` attribute
    from_position: dict[int, int] = field(default_factory=dict)


async def read_records(
    *, bootstrap: str, topic: str, since: datetime | None = None,
    from_position: dict[int, int] | None = None, upto: dict[int, int] | None = None,
    progress: bool = False, archive_dir: str = "",
) -> AsyncIterator[Record]:
    """Every committed record from the start (or ``since``/``from_position``) to the end
    offsets taken at the start (or ``upto``, inclusive, per partition).

    With ``archive_dir`` (``TASKFLOW_ARCHIVE_DIR``), each partition's archived records
    come first (events/archive.py), then the live log from where the archive ends."""
    reader = LogReader(bootstrap=bootstrap, topic=topic)
    parts = await reader.start()
    try:
        bounds = await reader.bounds()
        start = {p: bounds[p][0] for p in parts}
        if since is not None:
            by_time = await reader.offsets_for_time(int(since.timestamp() * 1000))
            start = {p: (o if o is not None else bounds[p][1]) for p, o in by_time.items()}
        for p, o in (from_position or {}).items():
            if p in start:
                start[p] = max(start[p], o)
        end = {p: bounds[p][1] for p in parts}
        if upto is not None:
            end = {p: min(end[p], upto.get(p, -1) + 1) for p in parts}
        if archive_dir:
            archive.check(archive_dir, topic)
            since_ms = int(since.timestamp() * 1000) if since is not None else None
            arch_end = archive.archived_upto(archive_dir, topic)
            for p in parts:
                if arch_end.get(p, 0) < bounds[p][0]:
                    raise LogUnavailable(
                        f"partition {p}: the archive ends at offset {arch_end.get(p, 0)} "
                        f"but the log starts at {bounds[p][0]}: records are missing")
                first = (from_position or {}).get(p, 0)
                for r in archive.read(archive_dir, topic, p):
                    if first <= r.offset < end[p] and (since_ms is None
                                                       or r.timestamp_ms >= since_ms):
                        yield r
                start[p] = max(start[p], arch_end.get(p, 0))
        bar = Progress(total=sum(max(0, end[p] - start[p]) for p in parts),
                       enabled=progress and sys.stderr.isatty())
        remaining = set()
        for p in parts:
            if start[p] < end[p]:
                reader.seek(p, start[p])
                remaining.add(p)
            else:
                reader.pause(p)
        while remaining:
            batch = await reader.poll(timeout_ms=500)
            for r in batch:
                if r.partition in remaining and r.offset < end[r.partition]:
                    yield r
            bar.update(len(batch))
            for p in list(remaining):
                if await reader.position(p) >= end[p]:
                    remaining.discard(p)
                    reader.pause(p)
        bar.close()
    finally:
        await reader.stop()


async def replay(*, bootstrap: str, topic: str, flt: ReplayFilter, progress: bool = True,
                 archive_dir: str = "") -> AsyncIterator[tuple[Record, CloudEvent | None, str]]:
    """Records that pass ``flt``, decoded (or None with the error, for poison records).

    ``since``/``until`` compare with each event's ``time``. ``since`` also seeks with
    offsets_for_times: a record's broker timestamp is never earlier than its event time
    (it is produced after it is made), so no record at or after ``since`` is skipped.
    """
    async for r in read_records(bootstrap=bootstrap, topic=topic, since=flt.since,
                                from_position=flt.from_position, progress=progress,
                                archive_dir=archive_dir):
        try:
            ev: CloudEvent | None = decode(r.value)
            err = ""
        except UndecodableEvent as exc:
            ev, err = None, exc.error
        if ev is not None:
            if flt.task and str(ev.subject) != flt.task:
                continue
            if flt.types and ev.type.value not in flt.types:
                continue
            if flt.since and ev.time < flt.since:
                continue
            if flt.until and ev.time > flt.until:
                continue
            if flt.actors and ev.actor not in flt.actors:
                continue
        elif flt.task or flt.types or flt.actors:
            continue
        yield r, ev, err
