"""``projections verify`` and ``projections rebuild`` of the ``schedules`` projection.

The scheduler writes it (see ``scheduler/``); these fold the schedule topic with the same
``events.schedules.apply_schedule`` and compare or replace.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from events import schedule_db
from events.log import Record, ensure_topic
from events.models import CloudEvent
from events.queries import short_engine
from events.schedules import SCHEDULE_PROJECTION, ScheduleState, apply_schedule, schedule_topic
from events.settings import Settings
from events.tables import schedules
from projector import owned
from projector.maintenance import Diff

COMPARED = ("tenant", "name", "cron", "every_s", "timezone", "task", "overlap", "catchup",
            "paused", "deleted", "anchor", "next_run_at", "last_due_at", "last_task_id",
            "fires", "skips", "created_at", "updated_at")


async def _fold(settings: Settings, upto: dict[int, int] | None
                ) -> tuple[owned.Folded[ScheduleState], list[dict[str, Any]]]:
    """Fold the schedule topic (to ``upto``, inclusive), and the journal rows of its
    records."""
    journal: list[dict[str, Any]] = []

    def on_event(r: Record, ev: CloudEvent) -> None:
        if r.value is not None:
            journal.append(schedule_db.journal_row(r.partition, r.offset, ev, r.value))

    folded = await owned.fold(settings, topic=schedule_topic(settings.topic),
                              apply=apply_schedule, upto=upto, on_event=on_event)
    return folded, journal


async def verify(settings: Settings) -> tuple[list[Diff], int]:
    """Differences between the ``schedules`` table and a fold of the schedule topic up to
    the checkpoints read in the same snapshot as the rows."""
    topic = schedule_topic(settings.topic)
    async with short_engine(settings.database_url) as engine, engine.connect() as conn:
        cps, rows = await owned.snapshot(conn, table=schedules, key="schedule_id",
                                         projection=SCHEDULE_PROJECTION, topic=topic)
        journal = await schedule_db.journal(conn)
    if not cps and not rows and not journal:
        return [], 0
    (states, _, n), want_journal = await _fold(settings, cps)
    diffs: list[Diff] = _journal_diffs(journal, want_journal)
    diffs.extend(owned.row_diffs(rows, states, schedule_db.row, COMPARED))
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
        (states, last, n), journal = await _fold(settings, None)
        await schedule_db.replace_all(
            conn, topic=topic, rows=[schedule_db.row(*s) for s in states.values()],
            checkpoints=last, journal=journal)
    return n
