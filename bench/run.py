"""One bench run: the scenarios in order, the figures they yield, the JSON they leave."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench import fanout as fanout_mod
from bench import reads as reads_mod
from bench import taskflow_runner as tf
from bench.peers import Peer
from bench.procs import LOGS, Redis, meminfo_kib
from bench.report import machine, table, write_json
from bench.stats import PEERS, Figure, say
from bench.world import TEMPLATE, Lab, World, db_url
from events.db import asyncpg_dsn
from events.settings import get_settings

SCENARIOS = ("submit", "e2e", "latency", "projector", "fanout", "reads")


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; the same N for TaskFlow and the peers."""

    submit_n: int = 10_000
    # Batch submit: 50 requests of 1,000, so that the figure is the steady rate and not
    # the ramp of a run that lasts half a second (10 requests over 4 connections).
    batch_submit_n: int = 50_000
    batch: int = 1000  # tasks per POST /tasks:batch (the API's maximum)
    concurrency: int = 64  # connections of the single-POST client
    batch_concurrency: int = 8
    e2e_n: int = 20_000
    latency_rate: float = 200.0  # tasks/s
    latency_s: float = 10.0
    rest_s: float = 5.0  # CPU of every service at rest, measured before the latency run
    projector_tasks: int = 20_000  # x3 events: the live apply measurement
    projector_repeats: int = 3  # the live apply figure is the median of this many runs
    rebuild_tasks: int = 333_334  # x3 events: 1,000,002 events
    fanout_subscribers: int = 1000
    fanout_changes_per_s: float = 100.0
    fanout_s: float = 10.0
    # The highest delivery rate with p99 under the limit: fanout_subscribers at each rate.
    fanout_sweep_rates: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0)
    fanout_sweep_s: float = 5.0  # per rate (changes/s), and at least fanout_sweep_changes
    fanout_sweep_changes: int = 100
    fanout_p99_limit_ms: float = 250.0
    fanout_idle_subscribers: int = 5000  # the memory per idle subscriber
    reads_tasks: int = 1_000_000  # tasks in the read model the reads run against
    reads_requests: int = 1000  # timed requests per read probe
    reads_p99_target_ms: float = 50.0


QUICK = Sizes(submit_n=1000, batch_submit_n=5000, e2e_n=2000, latency_s=2.0, rest_s=2.0,
              projector_tasks=2000,
              rebuild_tasks=6667, fanout_subscribers=100, fanout_s=3.0,
              fanout_sweep_rates=(10.0, 25.0, 100.0), fanout_sweep_s=2.0,
              fanout_sweep_changes=20, fanout_idle_subscribers=1000,
              reads_tasks=100_000, reads_requests=300)
# For a test that only asserts the bench runs and prints its table.
SMOKE = Sizes(submit_n=200, batch_submit_n=200, batch=100, e2e_n=300, latency_s=1.0,
              rest_s=0.5,
              projector_tasks=300,
              projector_repeats=2,
              rebuild_tasks=1000, fanout_subscribers=10, fanout_s=1.0,
              fanout_sweep_rates=(25.0, 50.0), fanout_sweep_s=1.0, fanout_sweep_changes=0,
              fanout_idle_subscribers=50, reads_tasks=10_000, reads_requests=30)


async def _settle(world: World) -> dict[str, float]:
    """Write out what the scenarios before left in the page cache (and Postgres's buffers).

    The end-to-end runs leave about 165 MiB dirty; the kernel writes pages back 30 s after
    they were dirtied, which can be in the middle of the latency run that follows, and an
    fsync there (Postgres's commits) can queue behind that writeback: a probe's fdatasync
    stalled for up to 285 ms in one such window. The latency scenario is meant to measure
    a steady 200 tasks/s, so each system's run starts on a quiet disk: ``sync`` for
    everyone (the peers call ``_sync_disk`` alone), and a ``CHECKPOINT`` for TaskFlow's
    Postgres so a timed checkpoint of the earlier runs' pages does not land in the window
    either. (This removes one cause of the tail, not the tail: README.md has the runs
    with and without it.)
    """
    t0 = time.perf_counter()
    out = await asyncio.to_thread(_sync_disk)
    conn = await world.connect()
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return {**out, "seconds": round(time.perf_counter() - t0, 2)}


def _sync_disk() -> dict[str, float]:
    """``sync``; what was dirty before it (MiB), and how long it took."""
    t0, dirty_kib = time.perf_counter(), meminfo_kib("Dirty") or 0
    os.sync()
    return {"dirty_mib": round(dirty_kib / 1024, 1),
            "seconds": round(time.perf_counter() - t0, 2)}


async def _at_rest(cpu: Callable[[], dict[str, float]], seconds: float) -> dict[str, float]:
    """Cores each service uses while nothing is submitted, after a second to settle."""
    await asyncio.sleep(1)
    before, t0 = cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    return World.cores(before, cpu(), time.perf_counter() - t0)


def _span(values: Iterable[float | None]) -> str:
    """``low–high`` of the values that are there, for a note."""
    got = [v for v in values if v is not None]
    return f"{min(got):.0f}–{max(got):.0f}" if got else "n/a"


class Run:
    """One bench run: the figures and raw details it collects, scenario by scenario."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        sizes = SMOKE if args.smoke else QUICK if args.quick else Sizes()
        if args.n:
            sizes = Sizes(**{**asdict(sizes), "e2e_n": args.n})
        if args.subscribers:
            sizes = Sizes(**{**asdict(sizes), "fanout_subscribers": args.subscribers})
        self.sizes = sizes
        self.started = datetime.now(UTC)
        self.stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        self.run_id = self.started.strftime("%Y%m%d%H%M%S")
        self.log_dir = LOGS / self.stamp
        self.lab = Lab(get_settings(), self.run_id, self.log_dir)
        self.redis: Redis | None = None
        self.peers: list[Peer] = []
        self.figures: list[Figure] = []
        self.details: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []

    # ------------------------------------------------------------------ plumbing
    def figure(self, scenario: str, metric: str, unit: str, better: str,
               comparable: bool = True) -> Figure:
        f = Figure(scenario, metric, unit, "higher" if better == "higher" else "lower",
                   comparable=comparable)
        self.figures.append(f)
        return f

    def detail(self, scenario: str, system: str, value: Any) -> None:
        self.details.setdefault(scenario, {})[system] = value

    def failed(self, scenario: str, system: str, exc: Exception) -> None:
        msg = f"{scenario}/{system} failed: {exc}"
        self.errors.append(msg)
        self.detail(scenario, system, {"error": str(exc)})
        say(msg)

    def for_peers(self, scenario: str, step: Callable[[Peer], dict[str, Any]],
                  worker: bool, split: bool = False) -> dict[str, dict[str, Any]]:
        """Run ``step`` for each peer; with ``split`` its result is {scenario: details}."""
        out: dict[str, dict[str, Any]] = {}
        for peer in self.peers:
            try:
                if worker:
                    peer.start_worker()
                out[peer.name] = step(peer)
                for key, value in (out[peer.name].items() if split
                                   else [(scenario, out[peer.name])]):
                    self.detail(key, peer.name, value)
            except Exception as exc:
                self.failed(scenario, peer.name, exc)
            finally:
                peer.stop_worker()
        return out

    # ----------------------------------------------------------------- scenarios
    async def submit(self) -> None:
        z = self.sizes
        w = await self.lab.world("submit")
        res: dict[str, Any] = {}
        try:
            await w.start_api(workers=self.args.api_workers)
            res = await tf.submit(w, n=z.submit_n, concurrency=z.concurrency, batch=z.batch,
                                  batch_concurrency=z.batch_concurrency,
                                  batch_n=z.batch_submit_n)
            self.detail("submit", "taskflow", res)
        except Exception as exc:
            self.failed("submit", "taskflow", exc)
        finally:
            w.stop()
        peers = self.for_peers("submit", lambda p: p.submit(z.submit_n), worker=False)
        single = self.figure("submit", "single submit", "tasks/s", "higher")
        batch = self.figure("submit", "batch submit", "tasks/s", "higher")
        if "single" in res:
            single.values["taskflow"] = res["single"]["per_s"]
            single.notes["taskflow"] = (f"submit, e2e and latency: the API as "
                                        f"{self.args.api_workers} uvicorn process(es); SSE "
                                        "fan-out: one")
        if "batch" in res:
            if res["batch"].get("available"):
                batch.values["taskflow"] = res["batch"]["per_s"]
            else:
                batch.values["taskflow"] = None
                batch.notes["taskflow"] = (f"POST /tasks:batch answered "
                                           f"{res['batch']['status']}: not available")
        for name, r in peers.items():
            single.values[name] = batch.values[name] = r["per_s"]
        if peers:
            batch.notes["peers"] = "batch submit is compared with the peers' single enqueue rate"

    async def live(self) -> None:
        """Scenarios 2 and 3 share one world: API, worker(s) and projector running."""
        z = self.sizes
        want = set(self.args.scenarios)
        timeout = max(120.0, z.e2e_n / 50)
        w = await self.lab.world("live")
        res: dict[str, Any] = {}
        try:
            await w.start_all(api_workers=self.args.api_workers, workers=self.args.workers)
            if "e2e" in want:
                try:
                    res["single"] = await tf.e2e(w, n=z.e2e_n, concurrency=z.concurrency,
                                                 batch=1, timeout_s=timeout,
                                                 label="single POSTs")
                    probe = await tf.probe_batch(w)
                    if tf.batch_available(probe):
                        res["batch"] = await tf.e2e(w, n=z.e2e_n, concurrency=z.batch_concurrency,
                                                    batch=z.batch, timeout_s=timeout,
                                                    label="batch submit")
                    else:
                        res["batch"] = {"available": False, "status": probe.status}
                    self.detail("e2e", "taskflow", res)
                except Exception as exc:
                    self.failed("e2e", "taskflow", exc)
            if "latency" in want:
                try:
                    settled = await _settle(w)
                    rest = await _at_rest(w.cpu, z.rest_s)
                    before, t0 = w.cpu(), time.perf_counter()
                    res["latency"] = await tf.latency(w, rate=z.latency_rate, seconds=z.latency_s)
                    res["latency"]["cores"] = w.cores(before, w.cpu(), time.perf_counter() - t0)
                    res["latency"]["rest_cores"] = rest
                    res["latency"]["settled"] = settled
                    self.detail("latency", "taskflow", res["latency"])
                except Exception as exc:
                    self.failed("latency", "taskflow", exc)
        except Exception as exc:
            self.failed("live", "taskflow", exc)
        finally:
            w.stop()

        def peer_step(p: Peer) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if "e2e" in want:
                out["e2e"] = p.e2e(z.e2e_n, timeout)
            if "latency" in want:
                time.sleep(1)  # the end-to-end run's last results are settling
                settled = _sync_disk()
                before = p.cpu()
                time.sleep(z.rest_s)
                rest = p.cores(before, z.rest_s)
                out["latency"] = p.latency(z.latency_rate, z.latency_s)
                out["latency"]["rest_cores"] = rest
                out["latency"]["settled"] = settled
            return out

        peers = self.for_peers("live", peer_step, worker=True, split=True)
        if "e2e" in want:
            single = self.figure("e2e", f"throughput, {z.e2e_n:,} tasks, single POSTs",
                                 "tasks/s", "higher")
            batch = self.figure("e2e", f"throughput, {z.e2e_n:,} tasks, batch submit",
                                "tasks/s", "higher")
            if "single" in res:
                single.values["taskflow"] = res["single"]["per_s"]
            if "batch" in res:
                batch.values["taskflow"] = res["batch"].get("per_s")
                if not res["batch"].get("available", True):
                    batch.notes["taskflow"] = (f"POST /tasks:batch answered "
                                               f"{res['batch']['status']}: not available")
            for name, r in peers.items():
                single.values[name] = batch.values[name] = r["e2e"]["per_s"]
        if "latency" in want:
            rate = f"{z.latency_rate:.0f}/s"
            p50 = self.figure("latency", f"p50 submit → terminal at {rate}", "ms", "lower")
            p99 = self.figure("latency", f"p99 submit → terminal at {rate}", "ms", "lower")
            p99.notes["every system"] = (
                "its latency run starts after `sync` (and, for TaskFlow, a Postgres "
                "CHECKPOINT): the runs before leave the page cache dirty, and its writeback "
                "would land in the window")
            if "latency" in res:
                p50.values["taskflow"] = res["latency"]["p50_ms"]
                p99.values["taskflow"] = res["latency"]["p99_ms"]
            for name, r in peers.items():
                p50.values[name] = r["latency"]["p50_ms"]
                p99.values[name] = r["latency"]["p99_ms"]
            idle = self.figure("latency", "CPU at rest, every service (the bench's client "
                               "left out)", "cores", "lower")
            for name, r in [("taskflow", res.get("latency")),
                            *((n, r["latency"]) for n, r in peers.items())]:
                if r is not None and "rest_cores" in r:
                    idle.values[name] = round(sum(v for k, v in r["rest_cores"].items()
                                                  if k != "bench-client"), 3)

    async def projector(self) -> None:
        z = self.sizes
        out: dict[str, Any] = {}
        for key, tasks in (("live", z.projector_tasks), ("rebuild", z.rebuild_tasks)):
            w = await self.lab.world(f"proj_{key}")
            try:
                out[key] = await tf.projector(w, tasks=tasks, label=f"{tasks * 3:,} events",
                                              rebuild=key == "rebuild",
                                              repeats=z.projector_repeats if key == "live"
                                              else 1)
            except Exception as exc:
                self.failed(f"projector_{key}", "taskflow", exc)
            finally:
                w.stop()
        self.detail("projector", "taskflow", out)
        live = self.figure("projector", "live apply rate", "events/s", "higher",
                           comparable=False)
        if "live" in out:
            live.values["taskflow"] = out["live"]["catchup"]["steady_events_per_s"]
        n = z.rebuild_tasks * 3
        secs = self.figure("projector", f"rebuild of {n:,} events", "s", "lower",
                           comparable=False)
        rate = self.figure("projector", f"rebuild of {n:,} events", "events/s", "higher",
                           comparable=False)
        if "rebuild" in out:
            r = out["rebuild"]["rebuild"]
            secs.values["taskflow"] = r["seconds"]
            rate.values["taskflow"] = r["events_per_s"]
            secs.notes["taskflow"] = f"rebuild = {r['method']}"

    async def fanout(self) -> None:
        """One API process: the fan-out at the set rate, the rate sweep, and (on a fresh
        API process) the memory of idle subscribers; each is reported on its own."""
        z = self.sizes
        w = await self.lab.world("fanout")
        res: dict[str, Any] = {}
        swept: dict[str, Any] = {}
        idle: dict[str, Any] = {}
        try:
            await w.start_all(workers=self.args.workers)  # one API process, by definition
            api = next(p for p in w.procs if "-api" in p.name)
            try:
                res = await fanout_mod.fanout(w, api.pid, subscribers=z.fanout_subscribers,
                                              changes_per_s=z.fanout_changes_per_s,
                                              seconds=z.fanout_s)
                self.detail("fanout", "taskflow", res)
            except Exception as exc:
                self.failed("fanout", "taskflow", exc)
            try:
                swept = await fanout_mod.sweep(w, api.pid, subscribers=z.fanout_subscribers,
                                               rates=z.fanout_sweep_rates,
                                               seconds=z.fanout_sweep_s,
                                               min_changes=z.fanout_sweep_changes,
                                               p99_limit_ms=z.fanout_p99_limit_ms)
                self.detail("fanout_sweep", "taskflow", swept)
            except Exception as exc:
                self.failed("fanout_sweep", "taskflow", exc)
            try:
                # A fresh process: memory the runs above freed would otherwise be reused.
                api = await w.restart_api(api)
                idle = await fanout_mod.idle_memory(w, api.pid,
                                                    subscribers=z.fanout_idle_subscribers)
                self.detail("fanout_idle", "taskflow", idle)
            except Exception as exc:
                self.failed("fanout_idle", "taskflow", exc)
        except Exception as exc:
            self.failed("fanout", "taskflow", exc)
        finally:
            w.stop()

        def put(metric: str, unit: str, better: str, value: float | None,
                note: str | None = None) -> None:
            f = self.figure("fanout", metric, unit, better, comparable=False)
            f.values["taskflow"] = value
            if note:
                f.notes["taskflow"] = note

        label = f"{z.fanout_subscribers:,} subscribers"
        if res:
            for metric, unit, better, value in (
                (f"SSE deliveries, {label}", "events/s", "higher", res["delivered_per_s"]),
                (f"SSE delivery p50 from the projector's commit, {label}", "ms", "lower",
                 res["latency_from_projector_write"]["p50_ms"]),
                (f"SSE delivery p99 from the projector's commit, {label}", "ms", "lower",
                 res["latency_from_projector_write"]["p99_ms"]),
                (f"SSE delivery p99 from the event's time, {label}", "ms", "lower",
                 res["latency_from_event_time"]["p99_ms"]),
                (f"SSE missed events (gaps), {label}", "events", "lower", res["missed"]),
                (f"SSE not delivered {res['drain_seconds']:.0f} s after the flow, {label}",
                 "events", "lower", res["undelivered_after_drain"]),
            ):
                put(metric, unit, better, value)
        if swept:
            limit = f"{swept['p99_limit_ms']:.0f} ms"
            best, steps = swept["best"], swept["steps"]
            rates = ", ".join(f"{r:g}" for r in z.fanout_sweep_rates)
            least = (f" and at least {z.fanout_sweep_changes} changes"
                     if z.fanout_sweep_changes else "")
            if best:
                found = (f"the best step within p99 < {limit} and nothing missed was "
                         f"{best['changes_per_s_target']:g} changes/s (p99 {best['p99_ms']} ms)")
            else:
                found = (f"no step kept p99 < {limit} with nothing missed (p99 "
                         f"{_span(st['p99_ms'] for st in steps)} ms, p50 "
                         f"{_span(st['p50_ms'] for st in steps)} ms)")
            put(f"SSE max deliveries with p99 < {limit}, {label}, one API process",
                "events/s", "higher", swept["max_delivered_per_s_within_limit"],
                f"SSE rate sweep ({rates} changes/s, {z.fanout_sweep_s:g} s{least} each): "
                + found)
        if idle:
            put(f"SSE memory per idle subscriber, {z.fanout_idle_subscribers:,} connected",
                "KiB", "lower", idle["kib_per_subscriber"],
                f"SSE idle memory: API RSS {idle['server_rss_mib']['before']} MiB with no "
                f"subscriber, {idle['server_rss_mib']['connected']} MiB with "
                f"{z.fanout_idle_subscribers:,} (kernel socket buffers not included)")

    async def reads(self) -> None:
        """GET /tasks with each filter, one task, its events and /stats, over a read model
        of ``reads_tasks`` tasks seeded in SQL; one API process."""
        z = self.sizes
        w = await self.lab.world("reads")
        res: dict[str, Any] = {}
        try:
            res = await reads_mod.reads(w, tasks=z.reads_tasks, requests=z.reads_requests)
            self.detail("reads", "taskflow", res)
        except Exception as exc:
            self.failed("reads", "taskflow", exc)
        finally:
            w.stop()
        for name, r in res.get("probes", {}).items():
            f = self.figure("reads", f"p99 {name}, {z.reads_tasks:,} tasks", "ms", "lower",
                            comparable=False)
            f.values["taskflow"] = r["p99_ms"]
            if r["p99_ms"] is not None and r["p99_ms"] >= z.reads_p99_target_ms:
                f.notes["taskflow"] = (f"{name}: p99 misses the {z.reads_p99_target_ms:g} ms "
                                       "target")

    # ---------------------------------------------------------------------- main
    async def run(self) -> int:
        a = self.args
        kind = " (smoke)" if a.smoke else " (quick)" if a.quick else ""
        say(f"run {self.stamp}{kind}: {', '.join(a.scenarios)}; "
            f"logs in {self.log_dir}")
        t0 = time.monotonic()
        await self.lab.prepare()
        pg = await self._postgres_version()
        need_peers = not a.no_peers and bool({"submit", "e2e", "latency"} & set(a.scenarios))
        try:
            if need_peers:
                self.redis = Redis().start(self.log_dir)
                self.peers = [Peer(name, self.redis, self.log_dir) for name in PEERS]
            if "submit" in a.scenarios:
                await self.submit()
            if {"e2e", "latency"} & set(a.scenarios):
                await self.live()
            if "projector" in a.scenarios:
                await self.projector()
            if "fanout" in a.scenarios:
                await self.fanout()
            if "reads" in a.scenarios:
                await self.reads()
        finally:
            for p in self.peers:
                p.stop_worker()
            if self.redis is not None:
                self.redis.stop()
            await self.lab.close(keep=a.keep)
        finished = datetime.now(UTC)
        doc = {
            "run": self.stamp, "quick": a.quick, "smoke": a.smoke, "scenarios": a.scenarios,
            "command": "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'"
                                       if sys.argv[1:] else ""),
            "started_at": self.started.isoformat(), "finished_at": finished.isoformat(),
            "duration_s": round(time.monotonic() - t0, 1),
            "sizes": asdict(self.sizes),
            "options": {"api_workers": a.api_workers, "workers": a.workers,
                        "peers": [p.name for p in self.peers]},
            "machine": machine(pg),
            "figures": [f.as_json() for f in self.figures],
            "details": self.details, "errors": self.errors,
        }
        suffix = "-smoke" if a.smoke else "-quick" if a.quick else ""
        path = write_json(doc, self.stamp + suffix, a.results_dir)
        m = doc["machine"]
        print(f"\nTaskFlow benchmark {self.stamp}{kind}: "
              f"{m['cpu_count']} cores ({m['cpu_model']}), Python {m['python']}, "
              f"Kafka {m['kafka']}, {pg}, Celery {m['celery']}, Dramatiq {m['dramatiq']}, "
              f"{m['redis_server']}\n")
        print(table(self.figures))
        print(f"\nJSON: {path}  ({doc['duration_s']:.0f} s)")
        for e in self.errors:
            print(f"error: {e}", file=sys.stderr)
        return 1 if self.errors else 0

    async def _postgres_version(self) -> str | None:
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(asyncpg_dsn(db_url(self.lab.settings.database_url,
                                                            TEMPLATE)))
            try:
                return f"PostgreSQL {await conn.fetchval('SHOW server_version')}"
            finally:
                await conn.close()
        return None


