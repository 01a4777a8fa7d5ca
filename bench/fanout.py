"""Scenario 5, SSE fan-out: many subscribers on one API process, changes flowing.

Subscribers live in separate client processes (``multiprocessing``, spawn), so the
client's own CPU does not come out of the bench's event loop. Each subscriber is a raw
``asyncio.Protocol`` on ``GET /events?after=<start>``: it counts ``id:`` lines, which is
all it needs to find missed events, since every subscriber must see every position
after ``start`` exactly once. One subscriber in ``sample_every`` also records
``(position, receipt time)``; the bench joins those with ``task_changes`` afterwards, to
get the delivery latency from the change's ``time`` (the event's time) and from
``recorded_at`` (the projector's transaction) without parsing JSON in the client.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import multiprocessing as mp
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.http import Connection
from bench.procs import BenchError, cpu_seconds, rss_mib
from bench.stats import bar, say, summary_ms
from bench.taskflow_runner import TASK_BODY
from bench.world import World

OPEN_SQL = "SELECT count(*) FROM tasks WHERE status NOT IN ('DONE', 'FAILED', 'CANCELLED')"


@dataclass
class _Sub(asyncio.Protocol):
    request: bytes
    sample: bool
    count: int = 0
    last: int = 0  # the highest position seen: counts below it that are short are gaps
    lost: bool = False
    received: list[tuple[int, float]] = field(default_factory=list)
    _tail: bytes = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self._tail + data
        if self.sample:
            now = time.time()
            lines = buf.split(b"\n")
            self._tail = lines.pop()
            for line in lines:
                if line.startswith(b"id: "):
                    self.count += 1
                    self.last = int(line[4:].strip())
                    self.received.append((self.last, now))
        else:
            # "\nid: " is five bytes, so a four-byte tail never holds a whole match.
            self.count += buf.count(b"\nid: ")
            self._tail = buf[-4:]
            end = len(buf)
            while (i := buf.rfind(b"\nid: ", 0, end)) >= 0:
                ends = [k for k in (buf.find(b"\r", i + 5), buf.find(b"\n", i + 5)) if k >= 0]
                j = min(ends) if ends else -1  # frames may end lines with \n or \r\n
                if j >= 0:
                    self.last = int(buf[i + 5:j])
                    break
                end = i  # the last id is cut off; take the one before it

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _factory(sub: _Sub) -> Callable[[], _Sub]:
    return lambda: sub


def _client(port: int, path: str, n: int, sample_every: int, connected: Any, counted: Any,
            stop: Any, out: Any) -> None:
    """One client process: ``n`` subscribers until ``stop`` is set; results to ``out``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    asyncio.run(_client_main(port, path, n, sample_every, connected, counted, stop, out))


async def _client_main(port: int, path: str, n: int, sample_every: int, connected: Any,
                       counted: Any, stop: Any, out: Any) -> None:
    loop = asyncio.get_running_loop()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           "Accept: text/event-stream\r\n\r\n").encode()
    subs: list[_Sub] = []
    transports: list[asyncio.BaseTransport] = []
    for start in range(0, n, 50):  # in steps, so the accept backlog never overflows
        batch = [_Sub(req, sample=(start + i) % sample_every == 0)
                 for i in range(min(50, n - start))]
        made = await asyncio.gather(*(loop.create_connection(_factory(s), "127.0.0.1", port)
                                      for s in batch))
        transports.extend(t for t, _ in made)
        subs.extend(batch)
        connected.value = len(subs)
    while not stop.is_set():
        counted.value = sum(s.count for s in subs)
        await asyncio.sleep(0.1)
    counted.value = sum(s.count for s in subs)
    for t in transports:
        t.close()
    out.put({"counts": [s.count for s in subs], "lasts": [s.last for s in subs],
             "lost": sum(s.lost for s in subs),
             "received": [r for s in subs if s.sample for r in s.received]})


async def fanout(world: World, api_pid: int, *, subscribers: int, changes_per_s: float,
                 seconds: float, processes: int = 2, sample_every: int = 10,
                 drain_s: float = 15) -> dict[str, Any]:
    """Connect ``subscribers`` to one API process, let ``changes_per_s`` flow for
    ``seconds``, and measure deliveries/s, latency, missed events and the server's cost."""
    db = await world.connect()
    try:
        after = int(await db.fetchval("SELECT coalesce(max(position), 0) FROM task_changes"))
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        out: Any = ctx.Queue()
        shares = [subscribers // processes + (1 if i < subscribers % processes else 0)
                  for i in range(processes)]
        connected = [ctx.Value("i", 0) for _ in shares]
        counted = [ctx.Value("q", 0) for _ in shares]
        rss_idle = rss_mib(api_pid)
        procs = [ctx.Process(target=_client, daemon=True,
                             args=(world.api_port, f"/events?after={after}", k, sample_every,
                                   connected[i], counted[i], stop, out))
                 for i, k in enumerate(shares) if k]
        for p in procs:
            p.start()
        try:
            with bar(f"fanout   connect {subscribers}", subscribers, unit="sub") as pb:
                deadline = time.monotonic() + 120
                while (c := sum(v.value for v in connected)) < subscribers:
                    pb.update(c - pb.n)
                    if not all(p.is_alive() for p in procs) or time.monotonic() > deadline:
                        raise BenchError(f"only {c} of {subscribers} subscribers connected")
                    await asyncio.sleep(0.1)
                pb.update(subscribers - pb.n)
            await asyncio.sleep(1)  # let the server settle its new generators
            rss_connected = rss_mib(api_pid)
            flow = await _flow(world, api_pid, rate=changes_per_s / 3, seconds=seconds,
                               counted=counted, subscribers=subscribers)
            count_sql = "SELECT count(*) FROM task_changes WHERE position > $1"
            with bar("fanout   drain", None, unit="ev") as pb:
                deadline = time.monotonic() + drain_s
                last, still = -1, time.monotonic()
                # The last tasks are still finishing: the target grows until none is open.
                while (got := sum(v.value for v in counted)) < (
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
            stop.set()
            results = [out.get(timeout=60) for _ in procs]
        finally:
            stop.set()
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
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
    counts = [c for res in results for c in res["counts"]]
    lasts = [x for res in results for x in res["lasts"]]
    # Short of the positions up to the last one seen: a gap. Beyond it: not delivered yet
    # when the drain ended (the subscriber is behind, which the latency shows).
    upto = [bisect.bisect_right(positions, x) for x in lasts]
    missed = sum(max(0, u - c) for u, c in zip(upto, counts, strict=True))
    undelivered = sum(expected - u for u in upto)
    return {
        "subscribers": subscribers, "client_processes": len(procs),
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
        "server_cpu_cores": flow["server_cpu_cores"],
        "server_rss_mib": {"before": round(rss_idle, 1), "connected": round(rss_connected, 1),
                           "end": round(rss_end, 1)},
        "server_kib_per_subscriber": round((rss_connected - rss_idle) * 1024 / subscribers, 1),
    }


async def _flow(world: World, api_pid: int, *, rate: float, seconds: float, counted: list[Any],
                subscribers: int) -> dict[str, float]:
    """Submit no-op tasks at ``rate`` per second (about three changes each)."""
    n = max(1, int(rate * seconds))
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(8):
        pool.put_nowait(Connection("127.0.0.1", world.api_port))
    errors: Counter[int] = Counter()

    async def one() -> None:
        conn = await pool.get()
        try:
            resp = await conn.request("POST", "/tasks", TASK_BODY)
        finally:
            pool.put_nowait(conn)
        if resp.status != 202:
            errors[resp.status] += 1

    db = await world.connect()
    try:
        pos0 = int(await db.fetchval("SELECT coalesce(max(position), 0) FROM task_changes"))
        got0 = sum(v.value for v in counted)
        cpu0 = cpu_seconds(api_pid)
        tasks: list[asyncio.Task[None]] = []
        with bar(f"fanout   flow {rate * 3:.0f} changes/s", n) as pb:
            t0 = time.perf_counter()
            for i in range(n):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one()))
                pb.update(1)
                pb.set_postfix_str(f"{sum(v.value for v in counted) - got0} delivered",
                                   refresh=False)
            _, late = await asyncio.wait(tasks, timeout=seconds * 3 + 30)
            for t in late:
                t.cancel()
            if late:
                say(f"fan-out: {len(late)} submits got no answer in time")
            elapsed = time.perf_counter() - t0
        got1 = sum(v.value for v in counted)
        cpu1 = cpu_seconds(api_pid)
        pos1 = int(await db.fetchval("SELECT coalesce(max(position), 0) FROM task_changes"))
    finally:
        await db.close()
        while not pool.empty():
            with contextlib.suppress(Exception):
                await pool.get_nowait().close()
    if errors:
        say(f"fan-out submits rejected: {dict(errors)}")
    return {"changes_per_s": (pos1 - pos0) / elapsed,
            "delivered_per_s": (got1 - got0) / elapsed,
            "server_cpu_cores": (cpu1 - cpu0) / elapsed}
