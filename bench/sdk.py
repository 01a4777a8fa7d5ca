"""Scenario ``sdk``: end to end as a user of the Python SDK gets it.

N tasks submitted by ``await client.submit(...)`` from 64 coroutines (auto-batching on,
as it is by default), timed from the first submit until every task is terminal in the
read model, against Celery's and Dramatiq's end to end in the same run. The SDK runs in
its own process (``bench.sdk_client``), so its CPU per task is measured alone. Beside it,
the same run with the bench's own lean client (single POSTs, ``bench.http``), which no
user has, labelled as such.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

from bench import taskflow_runner as tf
from bench.procs import ROOT, BenchError
from bench.stats import bar
from bench.world import TERMINAL_SQL, World

if TYPE_CHECKING:
    from bench.run import Run


async def sdk_e2e(world: World, *, n: int, concurrency: int,
                  timeout_s: float) -> dict[str, Any]:
    """From the SDK's first submit until all ``n`` tasks are terminal."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.sdk_client", "--url",
        f"http://127.0.0.1:{world.api_port}", "--n", str(n), "--concurrency", str(concurrency),
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    db = await world.connect()
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise BenchError(f"bench.sdk_client did not start: {line!r}")
        base = int(await db.fetchval(TERMINAL_SQL))
        applied0 = await world.applied(db)
        with bar("sdk      taskflow  await client.submit()", n) as pb:
            cpu0 = world.cpu()
            t0 = time.perf_counter()
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            report = asyncio.create_task(child.stdout.readline())
            deadline = time.monotonic() + timeout_s
            while True:
                applied = await world.applied(db) - applied0
                done = min(applied // 3, n - 1)
                if applied >= 3 * n:
                    done = int(await db.fetchval(TERMINAL_SQL)) - base
                pb.update(done - pb.n)
                if done >= n:
                    break
                if report.done() and not report.result():
                    raise BenchError("bench.sdk_client exited before reporting")
                if time.monotonic() > deadline:
                    raise BenchError(f"only {done} of {n} tasks terminal after {timeout_s:.0f}s")
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - t0
            cores = world.cores(cpu0, world.cpu(), elapsed)
        client = orjson.loads(await asyncio.wait_for(report, 60))
    finally:
        await db.close()
        if child.returncode is None:
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 30)
            except TimeoutError:
                child.kill()
                await child.wait()
    if client["errors"]:
        raise BenchError(f"{client['errors']} submits failed: {client['first_error']}")
    cores.pop("bench-client", None)  # the SDK's own process is reported as client CPU
    return {"n": n, "seconds": elapsed, "per_s": n / elapsed,
            "submit_seconds": client["seconds"], "client_cpu_s": client["cpu_s"],
            "client_cpu_ms_per_task": client["cpu_s"] / n * 1000,
            "batches": client["batches"], "cores": cores,
            "client": f"taskflow_client, {concurrency} coroutines, auto-batching"}


async def scenario(run: Run) -> None:
    z = run.sizes
    n = z.sdk_n
    timeout = max(120.0, n / 50)
    w = await run.lab.world("sdk")
    res: dict[str, Any] = {}
    try:
        await w.start_all(api_workers=run.args.api_workers, workers=run.args.workers)
        res["sdk"] = await sdk_e2e(w, n=n, concurrency=z.concurrency, timeout_s=timeout)
        res["lean"] = await tf.e2e(w, n=n, concurrency=z.concurrency, batch=1,
                                   timeout_s=timeout, label="lean client, single POSTs")
        run.detail("sdk", "taskflow", res)
    except Exception as exc:
        run.failed("sdk", "taskflow", exc)
    finally:
        w.stop()
    peers = run.for_peers("sdk", lambda p: p.e2e(n, timeout), worker=True)
    sdk = run.figure("sdk", f"throughput, {n:,} tasks, SDK await client.submit() from "
                     f"{z.concurrency} coroutines", "tasks/s", "higher")
    lean = run.figure("sdk", f"throughput, {n:,} tasks, the bench's lean client (single "
                      "POSTs; no user has it)", "tasks/s", "higher")
    cpu = run.figure("sdk", "client CPU per task, SDK submit()", "ms", "lower",
                     comparable=False)
    if "sdk" in res:
        sdk.values["taskflow"] = res["sdk"]["per_s"]
        sdk.notes["taskflow"] = (f"sdk: {res['sdk']['batches']} POST /tasks:batch requests "
                                 "(auto-batching), every submit keyed")
        cpu.values["taskflow"] = round(res["sdk"]["client_cpu_ms_per_task"], 4)
    if "lean" in res:
        lean.values["taskflow"] = res["lean"]["per_s"]
    for name, r in peers.items():
        sdk.values[name] = lean.values[name] = r["per_s"]
