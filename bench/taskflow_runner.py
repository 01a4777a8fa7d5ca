"""TaskFlow's side of scenarios 1 to 4, against services running in a ``World``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from bench.http import Connection, Pool, Response, hammer, paced
from bench.procs import ROOT, BenchError, Proc, python
from bench.stats import bar, say, summary_ms
from bench.world import TERMINAL_SQL, World, fill_topic

TASK: dict[str, Any] = {"title": "bench", "type": "noop", "payload": {}}
TASK_BODY = orjson.dumps(TASK)
BATCH_PATH = "/tasks:batch"
TERMINAL_STATUSES = ("DONE", "FAILED", "CANCELLED")
# Events the projector journaled (offsets would also count transaction markers).
JOURNAL_SQL = "SELECT count(*) FROM task_events"


def batch_body(n: int) -> bytes:
    return orjson.dumps({"tasks": [TASK] * n})


async def probe_batch(world: World) -> Response:
    """One single-task batch: 404/405 means the endpoint does not exist (yet)."""
    conn = Connection("127.0.0.1", world.api_port)
    try:
        return await conn.request("POST", BATCH_PATH, batch_body(1))
    finally:
        await conn.close()


def batch_available(resp: Response) -> bool:
    if resp.status in (404, 405):
        return False
    if not 200 <= resp.status < 300:
        raise BenchError(f"POST {BATCH_PATH} answered {resp.status}: {resp.body[:300]!r}")
    return True


async def _submit(world: World, *, n: int, batch: int, concurrency: int,
                  progress: Callable[[int], object]) -> tuple[float, int]:
    """Submit ``n`` tasks (single POSTs, or batches of ``batch``); (seconds, rejected)."""
    rejected = 0
    requests = n if batch <= 1 else math.ceil(n / batch)
    sizes = [1] * n if batch <= 1 else [min(batch, n - i * batch) for i in range(requests)]
    bodies: dict[int, bytes] = {}

    def make(i: int) -> tuple[str, str, bytes]:
        if batch <= 1:
            return "POST", "/tasks", TASK_BODY
        size = sizes[i]
        if size not in bodies:
            bodies[size] = batch_body(size)
        return "POST", BATCH_PATH, bodies[size]

    def done(i: int, resp: Response) -> None:
        nonlocal rejected
        if not 200 <= resp.status < 300:
            rejected += sizes[i]
            if rejected == sizes[i]:
                say(f"submit answered {resp.status}: {resp.body[:200]!r}")
        progress(sizes[i])

    t0 = time.perf_counter()
    await hammer("127.0.0.1", world.api_port, total=requests, concurrency=concurrency,
                 make=make, done=done)
    return time.perf_counter() - t0, rejected


async def submit(world: World, *, n: int, concurrency: int, batch: int,
                 batch_concurrency: int, batch_n: int) -> dict[str, Any]:
    """Scenario 1: the front door alone (no worker, no projector running)."""
    out: dict[str, Any] = {}
    with bar("submit   taskflow  POST /tasks", n) as pb:
        cpu0 = world.cpu()
        secs, rejected = await _submit(world, n=n, batch=1, concurrency=concurrency,
                                       progress=pb.update)
        cores = world.cores(cpu0, world.cpu(), secs)
    out["single"] = {"n": n, "seconds": secs, "rejected": rejected,
                     "per_s": (n - rejected) / secs, "client": f"{concurrency} connections",
                     "cores": cores}
    probe = await probe_batch(world)
    if not batch_available(probe):
        out["batch"] = {"available": False, "status": probe.status}
        say(f"POST {BATCH_PATH} answered {probe.status}: batch submit is not available")
        return out
    with bar(f"submit   taskflow  POST {BATCH_PATH}", batch_n) as pb:
        cpu0 = world.cpu()
        secs, rejected = await _submit(world, n=batch_n, batch=batch,
                                       concurrency=batch_concurrency, progress=pb.update)
        cores = world.cores(cpu0, world.cpu(), secs)
    out["batch"] = {"available": True, "n": batch_n, "batch": batch, "seconds": secs,
                    "rejected": rejected, "per_s": (batch_n - rejected) / secs,
                    "client": f"{batch_concurrency} connections", "cores": cores}
    return out


async def e2e(world: World, *, n: int, concurrency: int, batch: int, timeout_s: float,
              label: str) -> dict[str, Any]:
    """Scenario 2: from the first submit until every task is terminal in the read model."""
    db = await world.connect()
    try:
        base = int(await db.fetchval(TERMINAL_SQL))
        journal0 = int(await db.fetchval(JOURNAL_SQL))
        with bar(f"e2e      taskflow  {label}", n) as pb:
            cpu0 = world.cpu()
            t0 = time.perf_counter()
            sub = asyncio.create_task(_submit(world, n=n, batch=batch, concurrency=concurrency,
                                              progress=lambda _k: None))
            deadline = time.monotonic() + timeout_s
            submit_s: float | None = None
            rejected = 0
            applied0 = await world.applied(db)
            while True:
                # Counting terminal rows scans the whole table; polled this often, that
                # took CPU from the run it measures. Each task has at least three events,
                # so the count runs only once that many are applied.
                applied = await world.applied(db) - applied0
                done = min(applied // 3, n - 1)
                if applied >= 3 * n:
                    done = int(await db.fetchval(TERMINAL_SQL)) - base
                pb.update(done - pb.n)
                if sub.done() and submit_s is None:
                    submit_s, rejected = sub.result()
                    if rejected:
                        raise BenchError(f"{rejected} of {n} submits were rejected")
                if done >= n:
                    break
                for p in world.procs:
                    if not p.alive():
                        raise BenchError(f"{p.name} exited; see {p.log_path}:\n{p.tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"only {done} of {n} tasks terminal after {timeout_s:.0f}s")
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - t0
            cores = world.cores(cpu0, world.cpu(), elapsed)
        if submit_s is None:
            submit_s, _ = await sub
        failed = int(await db.fetchval(
            "SELECT count(*) FROM tasks WHERE status <> 'DONE' AND title = 'bench'"))
        applied = int(await db.fetchval(JOURNAL_SQL)) - journal0
    finally:
        await db.close()
    return {"n": n, "seconds": elapsed, "per_s": n / elapsed, "submit_seconds": submit_s,
            "not_done": failed, "events_applied": applied,
            "projector_events_per_s": applied / elapsed, "cores": cores,
            "client": f"{concurrency} connections" + (f", batches of {batch}" if batch > 1
                                                      else "")}


async def _sse_terminals(url: str, arrivals: dict[str, tuple[float, float]],
                         ready: asyncio.Event) -> None:
    """Record when (perf counter, wall clock) each task's terminal change arrives on SSE."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as c, \
            c.stream("GET", url) as resp:
        if resp.status_code != 200:
            raise BenchError(f"GET /events answered {resp.status_code}")
        ready.set()
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                now = time.perf_counter(), time.time()
                data = orjson.loads(line[5:])
                if data.get("status") in TERMINAL_STATUSES:
                    arrivals.setdefault(data["task_id"], now)


async def latency(world: World, *, rate: float, seconds: float,
                  timeout_s: float = 30) -> dict[str, Any]:
    """Scenario 3: a steady ``rate``; from before the POST until the terminal SSE change."""
    n = int(rate * seconds)
    arrivals: dict[str, tuple[float, float]] = {}
    started: dict[str, tuple[float, float]] = {}
    ready = asyncio.Event()
    q = "&".join(f"status={s}" for s in TERMINAL_STATUSES)
    reader = asyncio.create_task(
        _sse_terminals(f"http://127.0.0.1:{world.api_port}/events?{q}", arrivals, ready))
    await asyncio.wait_for(ready.wait(), 15)
    pool = Pool("127.0.0.1", world.api_port, 32)
    errors: list[str] = []

    async def one() -> None:
        t = time.perf_counter(), time.time()
        resp = await pool.request("POST", "/tasks", TASK_BODY)
        if resp.status != 202:
            errors.append(f"{resp.status}: {resp.body[:200]!r}")
            return
        started[orjson.loads(resp.body)["task_id"]] = t

    try:
        with bar("latency  taskflow ", n) as pb:
            t0 = time.perf_counter()
            inflight = await paced(n, rate, one, pb.update)
            achieved = n / (time.perf_counter() - t0)
            await asyncio.gather(*inflight)
            deadline = time.monotonic() + timeout_s
            while len(started.keys() & arrivals.keys()) < len(started):
                if reader.done():
                    reader.result()
                    raise BenchError("the SSE stream ended")
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader
        await pool.close()
    if errors:
        raise BenchError(f"{len(errors)} submits failed, first: {errors[0]}")
    lat = [arrivals[k][0] - t[0] for k, t in started.items() if k in arrivals]
    return {"rate": rate, "achieved_rate": achieved, "n": n,
            "missing": len(started) - len(lat), **summary_ms(lat),
            "breakdown": await _breakdown(world, started, arrivals)}


async def _breakdown(world: World, started: dict[str, tuple[float, float]],
                     arrivals: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Where the time goes, from the wall-clock times the read model keeps.

    api: submit until the task.created event's time; worker: created until done (event
    times); projector: done until the projector's transaction wrote the change
    (``recorded_at`` is that transaction's start); feed: from there to SSE receipt.
    """
    db = await world.connect()
    try:
        rows = await db.fetch(
            "SELECT task_id::text AS id, status, extract(epoch FROM time)::float8 AS t, "
            "extract(epoch FROM recorded_at)::float8 AS r FROM task_changes "
            "WHERE task_id = ANY($1::uuid[]) ORDER BY position", list(started))
    finally:
        await db.close()
    created: dict[str, float] = {}
    done: dict[str, tuple[float, float]] = {}
    for r in rows:
        if r["status"] == "PENDING":
            created.setdefault(r["id"], r["t"])
        elif r["status"] in TERMINAL_STATUSES:
            done.setdefault(r["id"], (r["t"], r["r"]))
    parts: dict[str, list[float]] = {"api": [], "worker": [], "projector": [], "feed": []}
    for k, (_, wall) in started.items():
        if k in created and k in done and k in arrivals:
            parts["api"].append(created[k] - wall)
            parts["worker"].append(done[k][0] - created[k])
            parts["projector"].append(done[k][1] - done[k][0])
            parts["feed"].append(arrivals[k][1] - done[k][1])
    return {name: summary_ms(v) for name, v in parts.items()}


def rebuild_command() -> list[str] | None:
    """``taskflow projections rebuild``, if this checkout has it."""
    argv = python("-m", "cli.main", "projections", "rebuild")
    probe = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, check=False)
    return argv if probe.returncode == 0 else None


async def projector(world: World, *, tasks: int, label: str, rebuild: bool = False,
                    repeats: int = 1, timeout_s: float = 900) -> dict[str, Any]:
    """Scenario 4: fill the topic with complete no-op histories, then time the projector.

    ``catchup``: a fresh projector on an empty database folds the topic from offset 0.
    ``rebuild`` (if asked): ``taskflow projections rebuild`` with that projector live
    and caught up, which replays the same log into a shadow schema and swaps it in.
    Without the command, the catch-up is the rebuild: it does exactly the same work.
    """
    with bar(f"project  fill {label}", tasks * 3, unit="ev") as pb:
        t0 = time.perf_counter()
        total = await fill_topic(world.bootstrap, world.topic, tasks, pb.update)
        fill_s = time.perf_counter() - t0
    out: dict[str, Any] = {"events": total, "tasks": tasks, "fill_seconds": fill_s}
    db = await world.connect()
    try:
        # On a shared two-core machine one run can be a third off; the median of
        # ``repeats`` fresh catch-ups of the same log is the figure.
        runs = []
        for i in range(repeats):
            if i:
                world.stop()
                await db.execute("TRUNCATE tasks, task_events, task_changes, dead_letters, "
                                 "projector_offsets")
            runs.append(await _catchup(world, db, total, label, timeout_s))
        rates = sorted(r["steady_events_per_s"] for r in runs)
        out["catchup"] = {**next(r for r in runs
                                 if r["steady_events_per_s"] == rates[len(rates) // 2]),
                          "runs_steady_events_per_s": [r["steady_events_per_s"] for r in runs]}
        if int(await db.fetchval("SELECT count(*) FROM tasks")) != tasks:
            raise BenchError(f"the read model does not have the {tasks} tasks of the log")
        cmd = rebuild_command() if rebuild else None
        if cmd is not None:
            out["rebuild"] = await _rebuild(world, cmd, total, label, timeout_s)
            if int(await db.fetchval("SELECT count(*) FROM tasks")) != tasks:
                raise BenchError(f"after the rebuild the read model does not have {tasks} "
                                 "tasks")
        elif rebuild:
            out["rebuild"] = {**out["catchup"], "method": "a fresh projector folding the log "
                              "from offset 0 into an empty database (`taskflow projections "
                              "rebuild` does not exist in this checkout)"}
    finally:
        await db.close()
    return out


async def _catchup(world: World, db: Any, total: int, label: str,
                   timeout_s: float) -> dict[str, Any]:
    with bar(f"project  apply {label}", total, unit="ev") as pb:
        t_spawn = time.perf_counter()
        proc = world.start("projector")
        t_first: float | None = None
        first = 0
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.perf_counter()
            applied = await world.applied(db)
            pb.update(applied - pb.n)
            if applied and t_first is None:
                t_first, first = now, applied
            if applied >= total:
                break
            if not proc.alive():
                raise BenchError(f"{proc.name} exited; see {proc.log_path}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the projector applied {applied} of {total} events in "
                                 f"{timeout_s:.0f}s")
            await asyncio.sleep(0.05)
        t_done = time.perf_counter()
    wall = t_done - t_spawn
    # From the first checkpoint on: the apply rate without the process start-up.
    steady = (total - first) / (t_done - t_first) if t_first and total - first > 0 else None
    return {"method": "a fresh projector folding the log from offset 0 into an empty database",
            "seconds": wall, "events_per_s": total / wall,
            "steady_events_per_s": steady if steady else total / wall,
            "startup_seconds": (t_first - t_spawn) if t_first else None}


async def _rebuild(world: World, cmd: list[str], total: int, label: str,
                   timeout_s: float) -> dict[str, Any]:
    with bar(f"project  rebuild {label}", None, unit="s") as pb:
        t0 = time.perf_counter()
        proc = Proc(f"{world.name}-rebuild", cmd, world.env, world.log_dir).start()
        world.procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while proc.alive():
            if time.monotonic() > deadline:
                raise BenchError(f"taskflow projections rebuild ran over {timeout_s:.0f}s")
            await asyncio.sleep(0.05)
            pb.update(round(time.perf_counter() - t0 - pb.n, 2))
        wall = time.perf_counter() - t0
    assert proc.popen is not None
    if proc.popen.returncode != 0:
        raise BenchError(f"taskflow projections rebuild exited {proc.popen.returncode}; "
                         f"see {proc.log_path}:\n{proc.tail()}")
    # Its own closing line: "rebuild: <n> event(s) in <s>s, swapped in".
    m = re.search(r"rebuild: (\d+) event\(s\) in ([\d.]+)s", proc.tail())
    return {"method": "taskflow projections rebuild (shadow schema and swap, with the live "
            "projector running)", "seconds": wall, "events_per_s": total / wall,
            "reported_events": int(m.group(1)) if m else None,
            "reported_seconds": float(m.group(2)) if m else None}
