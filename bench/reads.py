"""Scenario ``reads``: the read path of one API process over a large read model.

The read model is seeded directly in SQL (one ``INSERT … SELECT generate_series``), not
by the projector: this scenario measures the reads, and folding a million tasks through
Kafka would only measure the projector again (the ``projector`` scenario does). Every
task gets one row; the tasks finished get their terminal change in ``task_changes``
(what ``/stats`` counts per minute); the tasks the bench reads by id get their three
events in ``task_events``. ``task_counts`` is filled by its triggers, as in production.

Each probe is ``requests`` sequential GETs on one keep-alive connection, after a warm-up,
so the figure is a request's own latency, with no queueing behind other requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import urllib.parse
from datetime import datetime
from typing import Any

import orjson

from bench.http import Connection
from bench.stats import say, summary_ms
from bench.world import World

TYPES = ("echo", "noop", "email", "resize", "report")
CUSTOMERS = 5000  # titles name one of this many customers: ?q= on one matches N/5000
# A customer's name: 8 letters from the md5 of its number (a-p), as distinct as names are.
_NAME = ("translate(substr(md5(({k})::text), 1, 8), '0123456789', 'ghijklmnop')")
STEP_MS = 50  # created_at of consecutive tasks: a million spans about 14 hours
PROBED = 500  # tasks read by id (with their events)
WARMUP = 20

# Status by i % 100: mostly finished, as a long-running deployment is.
_STATUS = ("CASE WHEN i % 100 < 90 THEN 'DONE' WHEN i % 100 < 93 THEN 'FAILED' "
           "WHEN i % 100 < 94 THEN 'CANCELLED' WHEN i % 100 < 98 THEN 'PENDING' "
           "ELSE 'PROCESSING' END")

_SEED_TASKS = f"""
INSERT INTO tasks (task_id, tenant, title, type, status, payload, result, error, attempt,
                   progress, priority, max_attempts, timeout_s, cancel_requested,
                   dead_lettered, created_at, updated_at, finished_at, partition, last_offset)
SELECT md5(i::text)::uuid, NULL,
       'report for ' || {_NAME.format(k=f"i % {CUSTOMERS}")} || ' #' || i,
       (ARRAY{list(TYPES)!r})[1 + i % {len(TYPES)}],
       {_STATUS},
       jsonb_build_object('n', i, 'message', 'hello'),
       CASE WHEN i % 100 < 90 THEN jsonb_build_object('ok', true) END,
       CASE WHEN i % 100 BETWEEN 90 AND 92 THEN 'handler raised' END,
       1, CASE WHEN i % 100 < 90 THEN 100 ELSE 0 END, 0, 3, 30.0, false,
       i % 100 BETWEEN 90 AND 92,
       t, t + interval '40 ms',
       CASE WHEN i % 100 < 94 THEN t + interval '40 ms' END,
       i % 6, i
FROM (SELECT i, now() - ($1::int - i) * interval '{STEP_MS} ms' AS t
      FROM generate_series(1, $1::int) AS i) AS s
"""

_SEED_CHANGES = """
INSERT INTO task_changes (task_id, tenant, type, status, attempt, progress, summary, time,
                          partition, "offset")
SELECT task_id, tenant, 'task.' || lower(status), status, attempt, progress, NULL,
       finished_at, partition, last_offset
FROM tasks WHERE finished_at IS NOT NULL ORDER BY finished_at
"""


def _events(task_id: str, i: int, created: datetime) -> list[tuple[Any, ...]]:
    """Three events (created, processing, done) of one probed task, as the journal holds
    them: the CloudEvent as JSON and its log position."""
    out = []
    for k, (kind, data) in enumerate((
            ("task.created", {"title": f"probe {i}", "type": "echo", "payload": {"n": i},
                              "priority": 0, "max_attempts": 3, "timeout_s": 30.0}),
            ("task.processing", {"attempt": 1}),
            ("task.done", {"result": {"ok": True}}))):
        event = {"specversion": "1.0", "id": f"{task_id[:-3]}{k:03d}", "type": kind,
                 "source": "taskflow/api", "subject": task_id, "time": created.isoformat(),
                 "datacontenttype": "application/json", "attempt": 1, "data": data}
        out.append((i % 6, 10_000_000 + i * 3 + k, task_id, event["id"], kind, created, 1,
                    orjson.dumps(event).decode()))
    return out


async def seed(w: World, *, tasks: int) -> dict[str, Any]:
    """Fill the world's read model; returns the probed task ids and the seeding time."""
    t0 = time.perf_counter()
    conn = await w.connect()
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '256MB'")
        # The secondary indexes are built once after the insert, as a rebuild does: much
        # cheaper than a million inserts into each of them (the GIN index above all).
        indexes = await conn.fetch(
            "SELECT i.relname AS name, pg_get_indexdef(i.oid) AS def FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = ANY($1::regclass[]) "
            "AND NOT x.indisprimary", ["tasks", "task_changes"])
        for r in indexes:
            await conn.execute(f'DROP INDEX "{r["name"]}"')
        await conn.execute(_SEED_TASKS, tasks)
        await conn.execute(_SEED_CHANGES)
        for r in indexes:
            await conn.execute(r["def"])
        rng = random.Random(7)
        picks = sorted(rng.sample(range(1, tasks + 1), min(PROBED, tasks)))
        rows = await conn.fetch("SELECT task_id::text AS id, created_at FROM tasks "
                                "WHERE task_id = ANY($1::uuid[])",
                                [_uuid_of(i) for i in picks])
        journal: list[tuple[Any, ...]] = []
        for i, r in enumerate(rows):
            journal += _events(r["id"], i, r["created_at"])
        await conn.executemany(
            'INSERT INTO task_events (partition, "offset", task_id, event_id, type, time, '
            "attempt, event) VALUES ($1, $2, $3::uuid, $4::uuid, $5, $6, $7, $8::jsonb)",
            journal)
        seeded_s = time.perf_counter() - t0
        # As autovacuum would have by then: planner statistics and the visibility map.
        await conn.execute("VACUUM ANALYZE tasks, task_changes, task_events, task_counts")
        n = int(await conn.fetchval("SELECT count(*) FROM tasks"))
        # The seed left much of the page cache dirty: written out now, not during the reads
        # (the latency scenario settles for the same reason).
        await conn.execute("CHECKPOINT")
        await asyncio.to_thread(os.sync)
    finally:
        await conn.close()
    return {"tasks": n, "probed": [r["id"] for r in rows], "seed_s": round(seeded_s, 1),
            "vacuum_analyze_s": round(time.perf_counter() - t0 - seeded_s, 1)}


def _uuid_of(i: int) -> str:
    """``md5(i::text)::uuid``, as the seed names task ``i``."""
    h = hashlib.md5(str(i).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


async def _measure(conn: Connection, paths: list[str], requests: int) -> dict[str, Any]:
    for p in paths[:WARMUP]:
        r = await conn.request("GET", p)
        if r.status != 200:
            raise RuntimeError(f"GET {p} answered {r.status}: {r.body[:300]!r}")
    samples: list[float] = []
    for k in range(requests):
        p = paths[k % len(paths)]
        t0 = time.perf_counter()
        r = await conn.request("GET", p)
        samples.append(time.perf_counter() - t0)
        if r.status != 200:
            raise RuntimeError(f"GET {p} answered {r.status}: {r.body[:300]!r}")
    return {"requests": requests, **summary_ms(samples)}


async def _fetch(w: World, sql: str, *args: Any) -> list[Any]:
    conn = await w.connect()
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def reads(w: World, *, tasks: int, requests: int) -> dict[str, Any]:
    """Seed ``tasks`` tasks, start one API process, and time each read ``requests`` times."""
    say(f"reads: seeding {tasks:,} tasks")
    seeded = await seed(w, tasks=tasks)
    say(f"reads: seeded in {seeded['seed_s']} s (+{seeded['vacuum_analyze_s']} s "
        "VACUUM ANALYZE)")
    await w.start_api(workers=1)
    conn = await Connection("127.0.0.1", w.api_port).open()
    rng = random.Random(11)
    try:
        first = orjson.loads((await conn.request("GET", "/tasks?limit=50")).body)
        page2 = f"/tasks?limit=50&cursor={first['next_cursor']}"
        ids = seeded["probed"]

        names = [r["name"] for r in await _fetch(w, f"SELECT {_NAME.format(k='k')} AS name "
                                                 "FROM generate_series(0, $1::int - 1) AS k",
                                                 CUSTOMERS)]

        def q(term: str) -> str:
            return f"/tasks?limit=50&q={urllib.parse.quote(term)}"

        probes: dict[str, list[str]] = {
            "GET /tasks": ["/tasks?limit=50"],
            "GET /tasks?status=FAILED": ["/tasks?limit=50&status=FAILED"],
            "GET /tasks?status=PENDING": ["/tasks?limit=50&status=PENDING"],
            "GET /tasks?type=email": ["/tasks?limit=50&type=email"],
            # A customer's name: 1 task in CUSTOMERS matches.
            "GET /tasks?q=<name>": [q(rng.choice(names)) for _ in range(200)],
            # Digits: trigrams that thousands of titles share (their numbers), so the
            # trigram index reads long posting lists for about a hundred matches.
            "GET /tasks?q=#NNNN (digits)": [q(f"#{rng.randrange(1000, 10_000)}")
                                            for _ in range(200)],
            # Common words: every title, or a tenth of them, matches.
            "GET /tasks?q=<common word>": [q(w) for w in ("report", "for ", "port f",
                                                          "#12", "report for")],
            "GET /tasks?cursor= (page 2)": [page2],
            "GET /tasks/{id}": [f"/tasks/{i}" for i in ids],
            "GET /tasks/{id}/events": [f"/tasks/{i}/events" for i in ids],
            "GET /stats": ["/stats"],
        }
        out: dict[str, Any] = {}
        for name, paths in probes.items():
            out[name] = await _measure(conn, paths, requests)
            say(f"reads: {name}: p50 {out[name]['p50_ms']} ms, p99 {out[name]['p99_ms']} ms")
    finally:
        await conn.close()
    return {"seed": {k: v for k, v in seeded.items() if k != "probed"}, "probes": out}
