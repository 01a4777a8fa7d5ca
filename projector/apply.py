"""Applying a batch inside the caller's transaction, and parking what Postgres refuses.

``apply_batch`` locks the batch's checkpoints, loads the states its tasks start from,
folds it (``projector.batch``) and writes it. ``apply_or_park`` does the same in
savepoints, splitting the batch until it finds the records Postgres cannot hold.
"""

from __future__ import annotations

import logging

import asyncpg

from events.log import Record
from projector import store
from projector.batch import BatchResult, Decoded, Folded, decode_records, fold_batch, task_ids_of

log = logging.getLogger("taskflow.projector")


async def write_folded(conn: asyncpg.Connection, folded: Folded, *, schema: str,
                       projection: str, topic: str) -> int | None:
    """Write a folded batch inside the caller's transaction (checkpoints already locked)."""
    if not folded.advanced:
        return None
    for p in folded.parked:
        log.warning("parked %s partition %d offset %d (%s): %s", topic, p.partition, p.offset,
                    p.reason, p.error)
    return await store.write_batch(
        conn, schema=schema, projection=projection, topic=topic, states=folded.touched,
        before=folded.before,
        journal=folded.journal, changes=folded.changes, parked=folded.parked,
        checkpoints=folded.advanced,
    )


async def apply_batch(
    conn: asyncpg.Connection,
    records: list[Record],
    *,
    schema: str,
    projection: str,
    topic: str,
    record_changes: bool = True,
    decoded: list[Decoded] | None = None,
) -> BatchResult:
    """Fold ``records`` into the read model inside the caller's transaction.

    ``record_changes=False`` (rebuilds) leaves the SSE change feed alone. ``decoded``
    is ``decode_records(records)`` if the caller already has it.
    """
    partitions = sorted({r.partition for r in records})
    cps = await store.lock_checkpoints(
        conn, schema=schema, projection=projection, topic=topic, partitions=partitions
    )
    if decoded is None:
        decoded = decode_records(records)
    task_ids = list(task_ids_of(decoded))  # fold_batch skips what the checkpoints cover
    states = await store.load_states(conn, schema=schema, task_ids=task_ids) if task_ids else {}
    folded = await fold_batch(decoded, cps, states, record_changes=record_changes)
    res = folded.result()
    res.last_position = await write_folded(conn, folded, schema=schema, projection=projection,
                                           topic=topic)
    return res


async def apply_or_park(
    conn: asyncpg.Connection,
    decoded: list[Decoded],
    *,
    schema: str,
    projection: str,
    topic: str,
    record_changes: bool = True,
    failed: BaseException | None = None,
) -> BatchResult:
    """``apply_batch``, except that a record whose rows Postgres refuses is parked.

    Inside the caller's transaction. The batch is tried in a savepoint; if Postgres
    refuses it (``store.refused``), it is split in halves, each tried in its own
    savepoint, down to single records: a single record refused is parked with the error
    and its checkpoint moved past it. Halves go in log order and each folds from what the
    ones before it wrote, so every other record lands once, in order. An outage is raised
    as it is. ``failed``: the whole batch is known to fail with this error already.
    """
    # Lock every checkpoint in the outer transaction first: a savepoint rolled back
    # would release locks taken inside it.
    await store.lock_checkpoints(conn, schema=schema, projection=projection, topic=topic,
                                 partitions=sorted({d[0].partition for d in decoded}))
    total = BatchResult()

    async def attempt(part: list[Decoded], error: BaseException | None) -> None:
        if error is None:
            try:
                async with conn.transaction():
                    res = await apply_batch(
                        conn, [d[0] for d in part], schema=schema, projection=projection,
                        topic=topic, record_changes=record_changes, decoded=part)
            except Exception as exc:
                if not store.refused(exc):
                    raise
                error = exc
            else:
                total.applied += res.applied
                total.skipped += res.skipped
                total.parked += res.parked
                total.changes += res.changes
                if res.last_position is not None:
                    total.last_position = res.last_position
                return
        if len(part) == 1:
            total.parked += await _park(conn, part[0][0], error, schema=schema,
                                        projection=projection, topic=topic)
            return
        half = len(part) // 2
        await attempt(part[:half], None)
        await attempt(part[half:], None)

    await attempt(sorted(decoded, key=lambda d: (d[0].partition, d[0].offset)), failed)
    return total


async def _park(conn: asyncpg.Connection, r: Record, error: BaseException, *, schema: str,
                projection: str, topic: str) -> int:
    """Park one record Postgres refused and move its partition's checkpoint past it; 1 if
    parked, 0 if the checkpoint was already there (a record applied by another owner)."""
    cps = await store.lock_checkpoints(conn, schema=schema, projection=projection,
                                       topic=topic, partitions=[r.partition])
    if r.offset <= cps[r.partition]:
        return 0
    row = store.ParkedRow(r.partition, r.offset, r.key, r.value, store.error_text(error),
                          "write")
    await store.write_batch(conn, schema=schema, projection=projection, topic=topic,
                            states={}, journal=[], changes=[], parked=[row],
                            checkpoints={r.partition: r.offset})
    log.warning("parked %s partition %d offset %d (%s): %s", topic, r.partition, r.offset,
                row.reason, row.error)
    return 1
