"""Scenario 5, SSE fan-out: many subscribers on one API process, changes flowing.

The subscribers (``bench.subscribers``) count what they receive and sample receipt
times; the bench joins the samples with ``task_changes`` afterwards for the latency.

Two figures build on the same measurement: ``sweep`` runs it at a few change rates and
keeps the highest delivery rate whose p99 stays under a limit with nothing missed, and
``idle_memory`` connects many subscribers with no changes flowing and divides the API
process's RSS growth by their number.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.http import Connection, Pool, paced
from bench.procs import BenchError, cpu_seconds, rss_mib
from bench.stats import bar, say, summary_ms
from bench.subscribers import Subscribers
from bench.taskflow_runner import TASK_BODY
from bench.world import World

OPEN_SQL = "SELECT count(*) FROM tasks WHERE status NOT IN ('DONE', 'FAILED', 'CANCELLED')"


async def fanout(world: World, api_pid: int, *, subscribers: int, changes_per_s: float,
                 seconds: float, processes: int = 2, sample_every: int = 10,
                 drain_s: float = 15, label: str = "fanout") -> dict[str, Any]:
    """Connect ``subscribers`` to one API process, let ``changes_per_s`` flow for
    ``seconds``, and measure deliveries/s, latency, missed events and the server's cost."""
    db = await world.connect()
    try:
        after = int(await db.fetchval("SELECT coalesce(max(position), 0) FROM task_changes"))
        clients = Subscribers(world.api_port, f"/events?after={after}", subscribers,
                           processes=processes, sample_every=sample_every)
        rss_idle = rss_mib(api_pid)
        clients.start()
        try:
            await clients.wait_opened(f"{label:<8} connect {subscribers}")
            await asyncio.sleep(1)  # let the server settle its new generators
            rss_connected = rss_mib(api_pid)
            flow = await _flow(world, api_pid, rate=changes_per_s / 3, seconds=seconds,
                               clients=clients, label=label)
            count_sql = "SELECT count(*) FROM task_changes WHERE position > $1"
            with bar(f"{label:<8} drain", None, unit="ev") as pb:
                deadline = time.monotonic() + drain_s
                last, still = -1, time.monotonic()
                # The last tasks are still finishing: the target grows until none is open.
                while (got := clients.count()) < (
                        target := int(await db.fetchval(count_sql, after)) * subscribers) \
                        or await db.fetchval(OPEN_SQL):
                    pb.total = target
                    pb.update(got - pb.n)
                    if got != last:
                        last, still = got, time.monotonic()
                    if time.monotonic() > deadline or time.monotonic() - still > 5:
                        break
                    await asyncio.sleep(0.1)
                pb.update(got - pb.n)
            rss_end = rss_mib(api_pid)
            results = clients.results()
        finally:
            clients.close()
        rows = await db.fetch(
            "SELECT position, extract(epoch FROM time)::float8 AS t, "
            "extract(epoch FROM recorded_at)::float8 AS r FROM task_changes "
            "WHERE position > $1", after)
    finally:
        await db.close()
    made = {r["position"]: (r["t"], r["r"]) for r in rows}
    positions = sorted(made)
    expected = len(positions)
    from_event = [t - made[p][0] for res in results for p, t in res["received"] if p in made]
    from_commit = [t - made[p][1] for res in results for p, t in res["received"] if p in made]
    # Per change: when the first sampled subscriber got it, and how long until the last
    # one did; the first is the way to the feed, the spread its round over subscribers.
    firsts: dict[int, float] = {}
    lastr: dict[int, float] = {}
    for res in results:
        for p, t in res["received"]:
            if p in made:
                firsts[p] = min(t, firsts.get(p, t))
                lastr[p] = max(t, lastr.get(p, t))
    first_from_commit = [t - made[p][1] for p, t in firsts.items()]
    spread = [lastr[p] - t for p, t in firsts.items()]
    counts = [c for res in results for c in res["counts"]]
    lasts = [x for res in results for x in res["lasts"]]
    # Short of the positions up to the last one seen: a gap. Beyond it: not delivered yet
    # when the drain ended (the subscriber is behind, which the latency shows).
    upto = [bisect.bisect_right(positions, x) for x in lasts]
    missed = sum(max(0, u - c) for u, c in zip(upto, counts, strict=True))
    undelivered = sum(expected - u for u in upto)
    return {
        "subscribers": subscribers, "client_processes": len(clients.procs),
        "changes_per_s_target": changes_per_s, "changes": expected,
        "changes_per_s": flow["changes_per_s"], "seconds": seconds,
        "deliveries_offered_per_s": flow["changes_per_s"] * subscribers,
        "delivered_per_s": flow["delivered_per_s"],
        "delivered": sum(counts), "expected_deliveries": expected * subscribers,
        "missed": missed, "undelivered_after_drain": undelivered,
        "drain_seconds": drain_s, "subscribers_complete": sum(1 for c in counts if c >= expected),
        "subscribers_dropped": sum(res["lost"] for res in results),
        "latency_from_event_time": summary_ms(from_event),
        "latency_from_projector_write": summary_ms(from_commit),
        "first_subscriber_from_projector_write": summary_ms(first_from_commit),
        "spread_first_to_last_subscriber": summary_ms(spread),
        "server_cpu_cores": flow["server_cpu_cores"],
        "server_rss_mib": {"before": round(rss_idle, 1), "connected": round(rss_connected, 1),
                           "end": round(rss_end, 1)},
        "server_kib_per_subscriber": round((rss_connected - rss_idle) * 1024 / subscribers, 1),
    }


async def sweep(world: World, api_pid: int, *, subscribers: int, rates: Sequence[float],
                seconds: float, min_changes: int = 0,
                p99_limit_ms: float = 250.0) -> dict[str, Any]:
    """``fanout`` at each change rate in turn, on the same API process; the highest
    deliveries/s whose p99 (from the projector's commit) stays under ``p99_limit_ms`` with no
    missed, undelivered or dropped event.

    Each step lasts ``seconds``, longer at a low rate so that it has ``min_changes``: a
    p99 over a handful of changes would be the slowest one of them.
    """
    steps: list[dict[str, Any]] = []
    for rate in rates:
        r = await fanout(world, api_pid, subscribers=subscribers, changes_per_s=rate,
                         seconds=max(seconds, min_changes / rate), label=f"sweep {rate:g}")
        lat = r["latency_from_projector_write"]
        p99 = lat["p99_ms"]
        clean = (r["missed"] == 0 and r["undelivered_after_drain"] == 0
                 and r["subscribers_dropped"] == 0)
        step = {
            "changes_per_s_target": rate, "seconds": r["seconds"], "changes": r["changes"],
            "changes_per_s": round(r["changes_per_s"], 1),
            "deliveries_offered_per_s": round(r["deliveries_offered_per_s"]),
            "delivered_per_s": round(r["delivered_per_s"]),
            "p50_ms": lat["p50_ms"], "p90_ms": lat["p90_ms"], "p99_ms": p99,
            "max_ms": lat["max_ms"], "samples": lat["count"],
            "p99_from_event_time_ms": r["latency_from_event_time"]["p99_ms"],
            "missed": r["missed"], "undelivered_after_drain": r["undelivered_after_drain"],
            "subscribers_dropped": r["subscribers_dropped"],
            "server_cpu_cores": round(r["server_cpu_cores"], 2),
            "within_limit": p99 is not None and p99 < p99_limit_ms and clean,
        }
        steps.append(step)
        say(f"sweep {rate:g} changes/s: {step['delivered_per_s']:,} deliveries/s, "
            f"p99 {p99} ms, missed {step['missed']}, "
            f"undelivered {step['undelivered_after_drain']}"
            f"{'' if step['within_limit'] else '  (over the limit)'}")
    best = max((s for s in steps if s["within_limit"]), key=lambda s: s["delivered_per_s"],
               default=None)
    return {"subscribers": subscribers, "seconds_per_step": seconds,
            "min_changes_per_step": min_changes,
            "p99_limit_ms": p99_limit_ms, "latency": "from the projector's commit",
            "steps": steps, "best": best,
            "max_delivered_per_s_within_limit": best["delivered_per_s"] if best else None}


async def idle_memory(world: World, api_pid: int, *, subscribers: int, processes: int = 2,
                      settle_s: float = 2.0) -> dict[str, Any]:
    """The API process's RSS with no subscriber, then with ``subscribers`` idle ones
    (no changes flowing); the growth per subscriber in KiB.

    RSS is the process's own memory: the kernel's socket buffers are not in it.
    """
    limit = _open_files_limit(api_pid)
    if limit is not None and limit < subscribers + 256:
        raise BenchError(f"the API process may open only {limit} files, too few for "
                         f"{subscribers} subscribers: raise `ulimit -n`")
    # One subscriber first, so what the first one costs (the feed's own start, code paths
    # run once) is in the baseline and not divided among the idle ones.
    await _one_subscriber(world.api_port)
    await _wait_gauge(world.api_port, 0, timeout=10)
    await asyncio.sleep(1)
    rss_before = rss_mib(api_pid)
    clients = Subscribers(world.api_port, "/events", subscribers, processes=processes,
                       sample_every=subscribers + 1)
    clients.start()
    try:
        connect_s = await clients.wait_opened(f"idle     connect {subscribers}", timeout=180)
        server = await _wait_gauge(world.api_port, subscribers, timeout=30)
        await asyncio.sleep(settle_s)
        rss_after = rss_mib(api_pid)
        results = clients.results()
    finally:
        clients.close()
    dropped = sum(res["lost"] for res in results)
    if dropped:
        raise BenchError(f"{dropped} of {subscribers} idle subscribers were dropped")
    return {"subscribers": subscribers, "client_processes": len(clients.procs),
            "connect_seconds": round(connect_s, 1), "server_gauge": server,
            "api_open_files_limit": limit,
            "server_rss_mib": {"before": round(rss_before, 1), "connected": round(rss_after, 1)},
            "kib_per_subscriber": round((rss_after - rss_before) * 1024 / subscribers, 1)}


def _open_files_limit(pid: int) -> int | None:
    """The soft ``RLIMIT_NOFILE`` of a running process (Linux /proc); None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    return None


async def _one_subscriber(port: int) -> None:
    """Open one ``GET /events``, read the head of its response, and hang up."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            raise BenchError(f"GET /events answered {head[:60]!r}")
    finally:
        w.close()
        with contextlib.suppress(OSError, ConnectionError):
            await w.wait_closed()


async def _sse_gauge(port: int) -> float | None:
    """``taskflow_sse_subscribers`` from the API's /metrics; None if it has none."""
    conn = Connection("127.0.0.1", port)
    try:
        resp = await conn.request("GET", "/metrics")
    finally:
        await conn.close()
    for line in resp.body.decode(errors="replace").splitlines():
        if line.startswith("taskflow_sse_subscribers "):
            return float(line.split()[1])
    return None


async def _wait_gauge(port: int, want: int, *, timeout: float) -> float | None:
    """Wait until the API counts ``want`` open SSE streams (if it counts them at all)."""
    deadline = time.monotonic() + timeout
    while (got := await _sse_gauge(port)) is not None and got != want:
        if time.monotonic() > deadline:
            raise BenchError(f"the API counts {got:.0f} SSE subscribers, not {want}")
        await asyncio.sleep(0.2)
    return got


async def _flow(world: World, api_pid: int, *, rate: float, seconds: float,
                clients: Subscribers, label: str) -> dict[str, float]:
    """Submit no-op tasks at ``rate`` per second (about three changes each)."""
    n = max(1, int(rate * seconds))
    pool = Pool("127.0.0.1", world.api_port, 8)
    errors: Counter[int] = Counter()

    async def one() -> None:
        resp = await pool.request("POST", "/tasks", TASK_BODY)
        if resp.status != 202:
            errors[resp.status] += 1

    db = await world.connect()
    try:
        pos0 = int(await db.fetchval("SELECT coalesce(max(position), 0) FROM task_changes"))
        got0 = clients.count()
        cpu0 = cpu_seconds(api_pid)
        with bar(f"{label:<8} flow {rate * 3:.0f} changes/s", n) as pb:

            def progress(k: int) -> None:
                pb.update(k)
                pb.set_postfix_str(f"{clients.count() - got0} delivered", refresh=False)

            t0 = time.perf_counter()
            tasks = await paced(n, rate, one, progress)
            _, late = await asyncio.wait(tasks, timeout=seconds * 3 + 30)
            for t in late:
                t.cancel()
            if late:
                say(f"fan-out: {len(late)} submits got no answer in time")
            elapsed = time.perf_counter() - t0
        got1 = clients.count()
        cpu1 = cpu_seconds(api_pid)
        pos1 = int(await db.fetchval("SELECT coalesce(max(position), 0) FROM task_changes"))
    finally:
        await db.close()
        await pool.close()
    if errors:
        say(f"fan-out submits rejected: {dict(errors)}")
    return {"changes_per_s": (pos1 - pos0) / elapsed,
            "delivered_per_s": (got1 - got0) / elapsed,
            "server_cpu_cores": (cpu1 - cpu0) / elapsed}
