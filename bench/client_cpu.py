"""``python -m bench.client_cpu``: the client's CPU per ``POST /tasks`` for each HTTP
client the SDK could be built on, at the same concurrency, against one running API.

It is how the SDK's transport was chosen (docs/benchmarks.md, "Client CPU per request"):
httpx, aiohttp, the SDK's own transport (``taskflow_client._http``), and the SDK's
``submit`` itself, keyed, with and without auto-batching. The CPU is this process's
(user + system), so the API's is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from bench.procs import LOGS
from bench.stats import say
from bench.world import Lab
from events.settings import get_settings

TASK = {"title": "bench", "type": "noop", "payload": {}}


async def _measure(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]
                   ) -> dict[str, float]:
    it = iter(range(n))

    async def lane() -> None:
        for i in it:
            await one(i)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    cpu, secs = time.process_time() - cpu0, time.perf_counter() - t0
    return {"n": n, "cpu_ms_per_request": round(cpu / n * 1000, 3),
            "per_s": round(n / secs, 1)}


async def clients(base_url: str, *, n: int, concurrency: int) -> dict[str, dict[str, Any]]:
    import aiohttp
    import httpx
    from taskflow_client import AsyncTaskFlow
    from taskflow_client._http import Transport

    body = orjson.dumps(TASK)
    out: dict[str, dict[str, Any]] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as hc:

        async def via_httpx(_: int) -> None:
            r = await hc.post("/tasks", content=body,
                              headers={"content-type": "application/json"})
            assert r.status_code == 202, r.text

        out["httpx 0.28"] = await _measure(n, concurrency, via_httpx)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url, connector=conn) as ac:

        async def via_aiohttp(_: int) -> None:
            async with ac.post("/tasks", data=body,
                               headers={"content-type": "application/json"}) as r:
                await r.read()
                assert r.status == 202

        out[f"aiohttp {aiohttp.__version__}"] = await _measure(n, concurrency, via_aiohttp)
    lean = Transport(base_url, max_connections=concurrency)

    async def via_lean(_: int) -> None:
        r = await lean.request("POST", "/tasks", body)
        assert r.status == 202, r.body

    out["taskflow_client transport (lean)"] = await _measure(n, concurrency, via_lean)
    await lean.close()
    for label, batch in (("SDK submit(), keyed, no batching", False),
                         ("SDK submit(), keyed, auto-batching", True)):
        async with AsyncTaskFlow(base_url, max_connections=concurrency, batch=batch) as tf:

            async def via_sdk(i: int) -> None:
                await tf.submit("bench", type="noop", idempotency_key=uuid.uuid4().hex)

            out[label] = await _measure(n, concurrency, via_sdk)
    return out


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.client_cpu", description=__doc__)
    ap.add_argument("--n", type=int, default=5000, help="requests per client")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--api-workers", type=int, default=2)
    args = ap.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    lab = Lab(get_settings(), stamp, LOGS / f"clients-{stamp}")
    await lab.prepare()
    w = await lab.world("clients")
    try:
        await w.start_api(workers=args.api_workers)
        res = await clients(f"http://127.0.0.1:{w.api_port}", n=args.n,
                            concurrency=args.concurrency)
    finally:
        w.stop()
        await lab.close()
    say(f"client CPU per POST /tasks, {args.n:,} requests, {args.concurrency} coroutines")
    for name, r in res.items():
        print(f"| {name} | {r['cpu_ms_per_request']:.3f} | {r['per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
