"""Folding a batch of records in memory: decode, then ``events.fold.apply`` per event.

No I/O here: ``fold_batch`` turns decoded records and the states they start from into
the rows a batch writes (``Folded``), which ``projector.apply`` then writes in one
transaction. Only yielding to the event loop every ``SLICE`` records.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import orjson

from events import crypto
from events.codec import decode_verbatim
from events.errors import UndecodableEvent
from events.fold import TaskState, apply
from events.log import Record
from events.models import CloudEvent, TaskStatus
from projector import store

# A record; its event or its error; the event's JSON when the record's bytes are it as is.
Decoded = tuple[Record, CloudEvent | None, str | None, bytes | None]


def decode_records(records: list[Record]) -> list[Decoded]:
    """Decode each record (None and the error for poison records, which get parked)."""
    out: list[Decoded] = []
    for r in records:
        try:
            ev, verbatim = decode_verbatim(r.value)
        except UndecodableEvent as exc:
            out.append((r, None, exc.error, None))
        else:
            out.append((r, ev, None, r.value if verbatim else None))
    return out


# Records decoded or folded between two returns to the event loop. A batch is thousands
# of events: done in one go, its decode or fold would hold back the transaction of the
# batch before, whose next statement waits for the loop while Postgres sits idle.
SLICE = 500


async def decode_slices(records: list[Record]) -> list[Decoded]:
    """``decode_records``, a slice at a time."""
    out: list[Decoded] = []
    for i in range(0, len(records), SLICE):
        if i:
            await asyncio.sleep(0)
        out.extend(decode_records(records[i:i + SLICE]))
    return out


def summarize(state: TaskState) -> str | None:
    """A short, human-sized line for SSE: the result or the error, cut at 200 chars."""
    if state.status is TaskStatus.DONE and crypto.is_sealed(state.result):
        return None  # sealed for erasure: never copied out in the clear
    if state.status is TaskStatus.DONE and state.result is not None:
        text = (state.result if isinstance(state.result, str)
                else orjson.dumps(state.result).decode())
    elif state.error:
        text = state.error
    elif state.progress_message:
        text = state.progress_message
    else:
        return None
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0
    parked: int = 0
    changes: int = 0
    last_position: int | None = None


@dataclass
class Folded:
    """A batch folded in memory: the rows to write and the states it leaves behind."""

    base: dict[int, int]  # checkpoints the fold started from (offsets at or below: skipped)
    checkpoints: dict[int, int]  # checkpoints after the batch
    states: dict[uuid.UUID, TaskState]  # every task of the batch, after it
    touched: dict[uuid.UUID, tuple[TaskState, int, int]]
    # Each touched task's state before the batch (None: not in the read model yet).
    before: dict[uuid.UUID, TaskState | None]
    journal: list[store.JournalRow]
    changes: list[store.ChangeRow]
    parked: list[store.ParkedRow]
    skipped: int = 0
    decoded: list[Decoded] = field(default_factory=list)
    # Set once written: the next batch's fold may rest on it only if it was written as is.
    outcome: str = "pending"  # "written" | "redone" | "split" | "pending"
    rests_on: Folded | None = None  # the batch whose states and checkpoints it started from

    @property
    def advanced(self) -> dict[int, int]:
        return {p: o for p, o in self.checkpoints.items() if o != self.base[p]}

    def result(self) -> BatchResult:
        return BatchResult(applied=len(self.journal), skipped=self.skipped,
                           parked=len(self.parked), changes=len(self.changes))


async def fold_batch(decoded: list[Decoded], base: dict[int, int],
                     states: dict[uuid.UUID, TaskState], *,
                     record_changes: bool = True) -> Folded:
    """Fold ``decoded`` onto ``states`` (the tasks' states at checkpoints ``base``).

    No I/O: it only yields to the event loop every ``SLICE`` events. Records at or below
    a partition's checkpoint are skipped (redelivery). ``states`` is updated in place
    and returned in ``Folded.states``.
    """
    fresh: list[Decoded] = []
    new_cps = dict(base)
    skipped = 0
    for item in sorted(decoded, key=lambda d: (d[0].partition, d[0].offset)):
        r = item[0]
        if r.offset <= new_cps[r.partition]:
            skipped += 1  # already applied: redelivery is a no-op
            continue
        new_cps[r.partition] = r.offset
        fresh.append(item)
    touched: dict[uuid.UUID, tuple[TaskState, int, int]] = {}
    before: dict[uuid.UUID, TaskState | None] = {}
    journal: list[store.JournalRow] = []
    changes: list[store.ChangeRow] = []
    parked: list[store.ParkedRow] = []
    for i, (r, ev, err, verbatim) in enumerate(fresh):
        if i and not i % SLICE:
            await asyncio.sleep(0)
        if ev is None:
            parked.append(store.ParkedRow(r.partition, r.offset, r.key, r.value, err or ""))
            continue
        old = states.get(ev.subject)
        try:  # everything a record makes, before any of it is kept
            new = apply(old, ev)
            entry = store.JournalRow(
                r.partition, r.offset, ev.subject, ev.id, ev.type.value, ev.time, ev.attempt,
                verbatim if verbatim is not None else ev.model_dump(mode="json"),
            )
            # No visible change: ``new == old``, without pydantic's generic __eq__.
            same = new is old or (old is not None and new.__dict__ == old.__dict__)
            change = None if same or not record_changes else store.ChangeRow(
                new.task_id, new.tenant, ev.type.value, new.status.value, new.attempt,
                new.progress, summarize(new), ev.time, r.partition, r.offset,
            )
        except Exception as exc:  # the fold is total by design; if a record breaks it
            # anyway, that record is parked rather than the partition stopped on it
            parked.append(store.ParkedRow(r.partition, r.offset, r.key, r.value,
                                          store.error_text(exc), "fold"))
            continue
        journal.append(entry)
        if same:
            continue
        states[ev.subject] = new
        if ev.subject not in touched:
            before[ev.subject] = old  # untouched so far, so still as the batch found it
        touched[ev.subject] = (new, r.partition, r.offset)
        if change is not None:
            changes.append(change)
    return Folded(base=dict(base), checkpoints=new_cps, states=states, touched=touched,
                  before=before,
                  journal=journal, changes=changes, parked=parked, skipped=skipped,
                  decoded=decoded)


def task_ids_of(decoded: list[Decoded]) -> set[uuid.UUID]:
    return {d[1].subject for d in decoded if d[1] is not None}
