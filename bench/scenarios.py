"""The scenarios of a bench run: each runs TaskFlow (and the peers, where they compare)
and turns what it measured into the run's figures and details."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from bench import fanout as fanout_mod
from bench import reads as reads_mod
from bench import taskflow_runner as tf
from bench.peers import Peer
from bench.procs import meminfo_kib
from bench.world import World

if TYPE_CHECKING:
    from bench.run import Run


async def _settle(world: World) -> dict[str, float]:
    """Write out what the scenarios before left in the page cache (and Postgres's buffers).

    The end-to-end runs leave much of the page cache dirty; the kernel writes pages back
    a while after they were dirtied, which can be in the middle of the latency run that
    follows, and an fsync there (Postgres's commits) can queue behind that writeback and
    stall. The latency scenario is meant to measure a steady rate, so each system's run
    starts on a quiet disk: ``sync`` for everyone (the peers call ``_sync_disk`` alone),
    and a ``CHECKPOINT`` for TaskFlow's Postgres so a timed checkpoint of the earlier
    runs' pages does not land in the window either. This removes one cause of the tail,
    not the tail.
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


async def submit(run: Run) -> None:
    z = run.sizes
    w = await run.lab.world("submit")
    res: dict[str, Any] = {}
    try:
        await w.start_api(workers=run.args.api_workers)
        res = await tf.submit(w, n=z.submit_n, concurrency=z.concurrency, batch=z.batch,
                              batch_concurrency=z.batch_concurrency,
                              batch_n=z.batch_submit_n)
        run.detail("submit", "taskflow", res)
    except Exception as exc:
        run.failed("submit", "taskflow", exc)
    finally:
        w.stop()
    peers = run.for_peers("submit", lambda p: p.submit(z.submit_n), worker=False)
    single = run.figure("submit", "single submit", "tasks/s", "higher")
    batch = run.figure("submit", "batch submit", "tasks/s", "higher")
    if "single" in res:
        single.values["taskflow"] = res["single"]["per_s"]
        single.notes["taskflow"] = (f"submit, e2e and latency: the API as "
                                    f"{run.args.api_workers} uvicorn process(es); SSE "
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


async def live(run: Run) -> None:
    """Scenarios 2 and 3 share one world: API, worker(s) and projector running."""
    z = run.sizes
    want = set(run.args.scenarios)
    timeout = max(120.0, z.e2e_n / 50)
    w = await run.lab.world("live")
    res: dict[str, Any] = {}
    try:
        await w.start_all(api_workers=run.args.api_workers, workers=run.args.workers)
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
                run.detail("e2e", "taskflow", res)
            except Exception as exc:
                run.failed("e2e", "taskflow", exc)
        if "latency" in want:
            try:
                settled = await _settle(w)
                rest = await _at_rest(w.cpu, z.rest_s)
                before, t0 = w.cpu(), time.perf_counter()
                res["latency"] = await tf.latency(w, rate=z.latency_rate, seconds=z.latency_s)
                res["latency"]["cores"] = w.cores(before, w.cpu(), time.perf_counter() - t0)
                res["latency"]["rest_cores"] = rest
                res["latency"]["settled"] = settled
                run.detail("latency", "taskflow", res["latency"])
            except Exception as exc:
                run.failed("latency", "taskflow", exc)
    except Exception as exc:
        run.failed("live", "taskflow", exc)
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

    peers = run.for_peers("live", peer_step, worker=True, split=True)
    if "e2e" in want:
        single = run.figure("e2e", f"throughput, {z.e2e_n:,} tasks, single POSTs",
                             "tasks/s", "higher")
        batch = run.figure("e2e", f"throughput, {z.e2e_n:,} tasks, batch submit",
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
        p50 = run.figure("latency", f"p50 submit → terminal at {rate}", "ms", "lower")
        p99 = run.figure("latency", f"p99 submit → terminal at {rate}", "ms", "lower")
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
        idle = run.figure("latency", "CPU at rest, every service (the bench's client "
                           "left out)", "cores", "lower")
        for name, r in [("taskflow", res.get("latency")),
                        *((n, r["latency"]) for n, r in peers.items())]:
            if r is not None and "rest_cores" in r:
                idle.values[name] = round(sum(v for k, v in r["rest_cores"].items()
                                              if k != "bench-client"), 3)


async def projector(run: Run) -> None:
    z = run.sizes
    out: dict[str, Any] = {}
    for key, tasks in (("live", z.projector_tasks), ("rebuild", z.rebuild_tasks)):
        w = await run.lab.world(f"proj_{key}")
        try:
            out[key] = await tf.projector(w, tasks=tasks, label=f"{tasks * 3:,} events",
                                          rebuild=key == "rebuild",
                                          repeats=z.projector_repeats if key == "live"
                                          else 1)
        except Exception as exc:
            run.failed(f"projector_{key}", "taskflow", exc)
        finally:
            w.stop()
    run.detail("projector", "taskflow", out)
    live = run.figure("projector", "live apply rate", "events/s", "higher",
                       comparable=False)
    if "live" in out:
        live.values["taskflow"] = out["live"]["catchup"]["steady_events_per_s"]
    n = z.rebuild_tasks * 3
    secs = run.figure("projector", f"rebuild of {n:,} events", "s", "lower",
                       comparable=False)
    rate = run.figure("projector", f"rebuild of {n:,} events", "events/s", "higher",
                       comparable=False)
    if "rebuild" in out:
        r = out["rebuild"]["rebuild"]
        secs.values["taskflow"] = r["seconds"]
        rate.values["taskflow"] = r["events_per_s"]
        secs.notes["taskflow"] = f"rebuild = {r['method']}"


async def fanout(run: Run) -> None:
    """One API process: the fan-out at the set rate, the rate sweep, and (on a fresh
    API process) the memory of idle subscribers; each is reported on its own."""
    z = run.sizes
    w = await run.lab.world("fanout")
    res: dict[str, Any] = {}
    swept: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    try:
        await w.start_all(workers=run.args.workers)  # one API process, by definition
        api = next(p for p in w.procs if "-api" in p.name)
        try:
            res = await fanout_mod.fanout(w, api.pid, subscribers=z.fanout_subscribers,
                                          changes_per_s=z.fanout_changes_per_s,
                                          seconds=z.fanout_s)
            run.detail("fanout", "taskflow", res)
        except Exception as exc:
            run.failed("fanout", "taskflow", exc)
        try:
            swept = await fanout_mod.sweep(w, api.pid, subscribers=z.fanout_subscribers,
                                           rates=z.fanout_sweep_rates,
                                           seconds=z.fanout_sweep_s,
                                           min_changes=z.fanout_sweep_changes,
                                           p99_limit_ms=z.fanout_p99_limit_ms)
            run.detail("fanout_sweep", "taskflow", swept)
        except Exception as exc:
            run.failed("fanout_sweep", "taskflow", exc)
        try:
            # A fresh process: memory the runs above freed would otherwise be reused.
            api = await w.restart_api(api)
            idle = await fanout_mod.idle_memory(w, api.pid,
                                                subscribers=z.fanout_idle_subscribers)
            run.detail("fanout_idle", "taskflow", idle)
        except Exception as exc:
            run.failed("fanout_idle", "taskflow", exc)
    except Exception as exc:
        run.failed("fanout", "taskflow", exc)
    finally:
        w.stop()

    def put(metric: str, unit: str, better: str, value: float | None,
            note: str | None = None) -> None:
        f = run.figure("fanout", metric, unit, better, comparable=False)
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


async def reads(run: Run) -> None:
    """GET /tasks with each filter, one task, its events and /stats, over a read model
    of ``reads_tasks`` tasks seeded in SQL; one API process."""
    z = run.sizes
    w = await run.lab.world("reads")
    res: dict[str, Any] = {}
    try:
        res = await reads_mod.reads(w, tasks=z.reads_tasks, requests=z.reads_requests)
        run.detail("reads", "taskflow", res)
    except Exception as exc:
        run.failed("reads", "taskflow", exc)
    finally:
        w.stop()
    for name, r in res.get("probes", {}).items():
        f = run.figure("reads", f"p99 {name}, {z.reads_tasks:,} tasks", "ms", "lower",
                        comparable=False)
        f.values["taskflow"] = r["p99_ms"]
        if r["p99_ms"] is not None and r["p99_ms"] >= z.reads_p99_target_ms:
            f.notes["taskflow"] = (f"{name}: p99 misses the {z.reads_p99_target_ms:g} ms "
                                   "target")


async def schedules(run: Run) -> None:
    """Interval schedules firing together: lateness (due time to ``task.created``) and
    fires against the due times of the window (see ``bench/schedules.py``)."""
    from bench import schedules as sched_mod

    z = run.sizes
    w = await run.lab.world("schedules")
    label = f"{z.schedules_n:,} schedules every {z.schedules_every_s:g} s"
    p50 = run.figure("schedules", f"fire lateness p50, {label}", "ms", "lower", comparable=False)
    p99 = run.figure("schedules", f"fire lateness p99, {label}", "ms", "lower", comparable=False)
    missing = run.figure("schedules", "fires missing", "fires", "lower", comparable=False)
    doubled = run.figure("schedules", "fires doubled", "fires", "lower", comparable=False)
    try:
        res = await sched_mod.run(w, n=z.schedules_n, every_s=z.schedules_every_s,
                                  seconds=z.schedules_s)
        run.detail("schedules", "taskflow", res)
        p50.values["taskflow"] = res["lateness_p50_ms"]
        p99.values["taskflow"] = res["lateness_p99_ms"]
        missing.values["taskflow"] = res["missing"]
        doubled.values["taskflow"] = res["doubled"]
        missing.notes["taskflow"] = f"{res['fires']:,} of {res['fires_expected']:,} expected"
    except Exception as exc:
        run.failed("schedules", "taskflow", exc)
    finally:
        w.stop()
    w = await run.lab.world("delayed")
    dlabel = f"{z.delayed_n:,} delayed tasks due over {z.delayed_spread_s:g} s"
    d50 = run.figure("schedules", f"delayed start lateness p50, {dlabel}", "ms", "lower",
                     comparable=False)
    d99 = run.figure("schedules", f"delayed start lateness p99, {dlabel}", "ms", "lower",
                     comparable=False)
    early = run.figure("schedules", "delayed tasks started early", "tasks", "lower",
                       comparable=False)
    try:
        res = await sched_mod.delayed(w, n=z.delayed_n, spread_s=z.delayed_spread_s)
        run.detail("delayed", "taskflow", res)
        d50.values["taskflow"] = res["start_lateness_p50_ms"]
        d99.values["taskflow"] = res["start_lateness_p99_ms"]
        early.values["taskflow"] = res["early"]
        early.notes["taskflow"] = f"{res['started']:,} of {res['tasks']:,} started"
    except Exception as exc:
        run.failed("delayed", "taskflow", exc)
    finally:
        w.stop()
