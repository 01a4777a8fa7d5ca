"""``projections verify`` and ``projections rebuild`` of the ``schedules`` projection.

The scheduler writes it (see ``scheduler/``); these fold the schedule topic with the same
``events.schedules.apply_schedule`` and compare or replace.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, text

from events import schedule_db
from events.codec import decode
from events.errors import UndecodableEvent
from events.log import ensure_topic
from events.queries import short_engine
from events.schedules import SCHEDULE_PROJECTION, ScheduleState, apply_schedule, schedule_topic
from events.settings import Settings
from events.tables import projector_offsets, schedules
from projector.maintenance import Diff
from projector.replay import read_records

COMPARED = ("tenant", "name", "cron", "every_s", "timezone", "task", "overlap", "catchup",
            "paused", "deleted", "anchor", "next_run_at", "last_due_at", "last_task_id",
            "fires", "skips", "created_at", "updated_at")


Folded = tuple[dict[uuid.UUID, tuple[ScheduleState, int, int]], dict[int, int], int,
               list[dict[str, Any]]]


async def _fold(settings: Settings, upto: dict[int, int] | None) -> Folded:
    """Fold the schedule topic (to ``upto``, inclusive): states with their partition and
    last offset, the last offset read per partition, the number of records, and the
    journal rows."""
    states: dict[uuid.UUID, tuple[ScheduleState, int, int]] = {}
    last: dict[int, int] = {}
    journal: list[dict[str, Any]] = []
    n = 0
    async for r in read_records(bootstrap=settings.kafka_bootstrap,
                                topic=schedule_topic(settings.topic), upto=upto):
        n += 1
        last[r.partition] = r.offset
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue  # the scheduler parks it; it changes no schedule
        if r.value is not None:
            journal.append(schedule_db.journal_row(r.partition, r.offset, ev, r.value))
        old = states.get(ev.subject)
        new = apply_schedule(old[0] if old else None, ev)
        if new is not None:
            states[ev.subject] = (new, r.partition, r.offset)
    return states, last, n, journal


async def verify(settings: Settings) -> tuple[list[Diff], int]:
    """Differences between the ``schedules`` table and a fold of the schedule topic up to
    the checkpoints read in the same snapshot as the rows."""
    topic = schedule_topic(settings.topic)
    async with short_engine(settings.database_url) as engine, engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        cps = {r.partition: r.offset for r in await conn.execute(
            select(projector_offsets.c.partition, projector_offsets.c.offset).where(
                projector_offsets.c.projection == SCHEDULE_PROJECTION,
                projector_offsets.c.topic == topic))}
        rows = {r["schedule_id"]: dict(r)
                for r in (await conn.execute(select(schedules))).mappings()}
        journal = await schedule_db.journal(conn)
    if not cps and not rows and not journal:
        return [], 0
    states, _, n, want_journal = await _fold(settings, cps)
    diffs: list[Diff] = _journal_diffs(journal, want_journal)
    for sid in sorted(set(states) | set(rows), key=str):
        row, got = rows.get(sid), states.get(sid)
        if got is None:
            diffs.append(Diff(str(sid), "row", "present", "absent"))
            continue
        if row is None:
            diffs.append(Diff(str(sid), "row", "absent", "present"))
            continue
        want: dict[str, Any] = schedule_db.row(*got)
        for f in COMPARED:
            if row[f] != want[f]:
                diffs.append(Diff(str(sid), f, row[f], want[f]))
    return diffs, n


def _journal_diffs(live: dict[tuple[int, int], dict[str, Any]],
                   want: list[dict[str, Any]]) -> list[Diff]:
    """``schedule_events`` (what ``?as_of=`` folds) against the records it journals."""
    logged = {(j["partition"], j["offset"]): j for j in want}
    diffs: list[Diff] = []
    for pos in sorted(set(live) | set(logged)):
        a, b = live.get(pos), logged.get(pos)
        where = f"journal {pos[0]}:{pos[1]}"
        if a is None or b is None:
            diffs.append(Diff(where, "row", "present" if a else "absent",
                              "present" if b else "absent"))
            continue
        diffs.extend(Diff(where, f, a[f], b[f]) for f in ("schedule_id", "type", "time",
                                                          "event") if a[f] != b[f])
    return diffs


async def rebuild(settings: Settings) -> int:
    """Replace the ``schedules`` table with a fold of the whole schedule topic, in one
    transaction that holds the table locked, so the scheduler's writes wait for it."""
    topic = schedule_topic(settings.topic)
    await ensure_topic(settings.kafka_bootstrap, topic, settings.partitions,
                       replication_factor=settings.replication_factor,
                       min_insync_replicas=settings.min_insync_replicas)
    async with short_engine(settings.database_url) as engine, engine.begin() as conn:
        await conn.execute(text("LOCK TABLE schedules IN EXCLUSIVE MODE"))
        states, last, n, journal = await _fold(settings, None)
        await schedule_db.replace_all(
            conn, topic=topic, rows=[schedule_db.row(*s) for s in states.values()],
            checkpoints=last, journal=journal)
    return n
