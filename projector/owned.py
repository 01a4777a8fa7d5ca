"""What ``projections verify`` and ``rebuild`` of the read models a partition owner writes
(``schedules``, ``workflows``) share: the fold of the topic with the owner's own apply
function, the snapshot of the rows with their checkpoints, and the row comparison."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Table, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from events import owned_db
from events.codec import decode
from events.errors import UndecodableEvent
from events.log import Record
from events.models import CloudEvent
from events.settings import Settings
from projector.maintenance import Diff
from projector.replay import read_records

S = TypeVar("S")
Folded = tuple[dict[uuid.UUID, tuple[S, int, int]], dict[int, int], int]


async def fold(settings: Settings, *, topic: str, apply: Callable[[S | None, CloudEvent],
                                                                S | None],
               upto: dict[int, int] | None,
               on_event: Callable[[Record, CloudEvent], None] | None = None) -> Folded[S]:
    """Fold ``topic`` (to ``upto``, inclusive): states with their partition and last
    offset, the last offset read per partition, and the number of records. Undecodable
    records are skipped (their owner parks them; they change no state); ``on_event`` sees
    every other record first."""
    states: dict[uuid.UUID, tuple[S, int, int]] = {}
    last: dict[int, int] = {}
    n = 0
    async for r in read_records(bootstrap=settings.kafka_bootstrap, topic=topic, upto=upto):
        n += 1
        last[r.partition] = r.offset
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue
        if on_event is not None:
            on_event(r, ev)
        old = states.get(ev.subject)
        new = apply(old[0] if old else None, ev)
        if new is not None:
            states[ev.subject] = (new, r.partition, r.offset)
    return states, last, n


async def snapshot(conn: AsyncConnection, *, table: Table, key: str, projection: str,
                   topic: str) -> tuple[dict[int, int], dict[uuid.UUID, dict[str, Any]]]:
    """The checkpoints and the rows of ``table``, read in one snapshot: the rest of the
    transaction on ``conn`` sees the same one."""
    await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    cps = await owned_db.checkpoints(conn, projection=projection, topic=topic)
    rows = {r[key]: dict(r) for r in (await conn.execute(select(table))).mappings()}
    return cps, rows


def row_diffs(rows: dict[uuid.UUID, dict[str, Any]],
              states: dict[uuid.UUID, tuple[S, int, int]],
              row: Callable[[S, int, int], dict[str, Any]],
              compared: Iterable[str]) -> list[Diff]:
    """The differences between the live ``rows`` and the rows of the folded ``states``."""
    diffs: list[Diff] = []
    for sid in sorted(set(states) | set(rows), key=str):
        live, got = rows.get(sid), states.get(sid)
        if got is None:
            diffs.append(Diff(str(sid), "row", "present", "absent"))
            continue
        if live is None:
            diffs.append(Diff(str(sid), "row", "absent", "present"))
            continue
        want = row(*got)
        for f in compared:
            if live[f] != want[f]:
                diffs.append(Diff(str(sid), f, live[f], want[f]))
    return diffs
