"""One bench run: the scenarios in order, the figures they yield, the JSON they leave."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench import scenarios, sdk
from bench.capacity import capacity as capacity_scenario
from bench.peers import Peer
from bench.priority import scenario as priority_scenario
from bench.procs import LOGS, Redis
from bench.report import machine, table, write_json
from bench.stats import PEERS, Figure, say
from bench.webhooks import webhooks as webhooks_scenario
from bench.workflow import scenario as workflow_scenario
from bench.world import TEMPLATE, Lab, db_url
from events.db import asyncpg_dsn
from events.settings import get_settings

SCENARIOS = ("submit", "e2e", "latency", "sdk", "projector", "fanout", "reads",
             "schedules", "webhooks", "workflow", "priority", "fairness", "capacity")


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
    sdk_n: int = 20_000  # the sdk scenario: tasks submitted through the Python SDK
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
    webhooks_n: int = 20_000  # tasks, each a task.done delivered to one webhook
    webhooks_rate: float = 100.0  # tasks/s submitted evenly for the steady p99 ...
    webhooks_steady_s: float = 20.0  # ... over this many seconds
    schedules_n: int = 1000  # interval schedules firing at once
    schedules_every_s: float = 1.0
    schedules_s: float = 60.0  # seconds they fire for
    delayed_n: int = 5000  # delayed tasks, due evenly over ...
    delayed_spread_s: float = 20.0  # ... this many seconds
    workflow_layers: int = 20  # the workflow scenario: layers of ...
    workflow_width: int = 50  # ... this many noop nodes (1,000 nodes)
    priority_backlog: int = 10_000  # queued tasks ahead of the measured ones
    priority_n: int = 20  # measured tasks (critical, or the other tenant's)
    priority_task_s: float = 0.05  # each backlog task's sleep: the backlog outlasts the run
    capacity_tasks: int = 100_000  # histories folded from 1 partition, then from many


QUICK = Sizes(submit_n=1000, batch_submit_n=5000, e2e_n=2000, sdk_n=2000, latency_s=2.0,
              rest_s=2.0,
              projector_tasks=2000,
              rebuild_tasks=6667, fanout_subscribers=100, fanout_s=3.0,
              fanout_sweep_rates=(10.0, 25.0, 100.0), fanout_sweep_s=2.0,
              fanout_sweep_changes=20, fanout_idle_subscribers=1000,
              reads_tasks=100_000, reads_requests=300, schedules_n=200, schedules_s=15.0,
              delayed_n=1000, delayed_spread_s=5.0, webhooks_n=2000, priority_backlog=2000,
              capacity_tasks=20_000, webhooks_steady_s=10.0)
# For a test that only asserts the bench runs and prints its table.
SMOKE = Sizes(submit_n=200, batch_submit_n=200, batch=100, e2e_n=300, sdk_n=300,
              latency_s=1.0,
              rest_s=0.5,
              projector_tasks=300,
              projector_repeats=2,
              rebuild_tasks=1000, fanout_subscribers=10, fanout_s=1.0,
              fanout_sweep_rates=(25.0, 50.0), fanout_sweep_s=1.0, fanout_sweep_changes=0,
              fanout_idle_subscribers=50, reads_tasks=10_000, reads_requests=30,
              schedules_n=5, schedules_s=2.0, delayed_n=20, delayed_spread_s=1.0,
              webhooks_n=100, workflow_layers=3, workflow_width=4, priority_backlog=100,
              priority_n=3, capacity_tasks=500, webhooks_rate=50.0, webhooks_steady_s=2.0)



class Run:
    """One bench run: the figures and raw details it collects, scenario by scenario."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        sizes = SMOKE if args.smoke else QUICK if args.quick else Sizes()
        if args.n:
            sizes = Sizes(**{**asdict(sizes), "e2e_n": args.n, "sdk_n": args.n})
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

    # ---------------------------------------------------------------------- main
    async def run(self) -> int:
        a = self.args
        kind = " (smoke)" if a.smoke else " (quick)" if a.quick else ""
        say(f"run {self.stamp}{kind}: {', '.join(a.scenarios)}; "
            f"logs in {self.log_dir}")
        t0 = time.monotonic()
        await self.lab.prepare()
        pg = await self._postgres_version()
        need_peers = not a.no_peers and bool({"submit", "e2e", "latency", "sdk"}
                                               & set(a.scenarios))
        try:
            if need_peers:
                self.redis = Redis().start(self.log_dir)
                self.peers = [Peer(name, self.redis, self.log_dir) for name in PEERS]
            if "submit" in a.scenarios:
                await scenarios.submit(self)
            if {"e2e", "latency"} & set(a.scenarios):
                await scenarios.live(self)
            if "sdk" in a.scenarios:
                await sdk.scenario(self)
            if "projector" in a.scenarios:
                await scenarios.projector(self)
            if "fanout" in a.scenarios:
                await scenarios.fanout(self)
            if "reads" in a.scenarios:
                await scenarios.reads(self)
            if "webhooks" in a.scenarios:
                await webhooks_scenario(self)
            if "schedules" in a.scenarios:
                await scenarios.schedules(self)
            if "workflow" in a.scenarios:
                await workflow_scenario(self)
            for name in ("priority", "fairness"):
                if name in a.scenarios:
                    await priority_scenario(self, name)
            if "capacity" in a.scenarios:
                await capacity_scenario(self)
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
