"""The ``sdk`` scenario's client, in a process of its own so that its CPU is its own:
``python -m bench.sdk_client --url URL --n N --concurrency 64``.

It imports the SDK and opens the client, prints ``ready``, waits for a line on stdin,
then submits N tasks by ``await client.submit(...)`` from ``concurrency`` coroutines and
prints one JSON line: seconds, CPU seconds (user + system) and batches sent.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time

import orjson
from taskflow_client import AsyncTaskFlow, TaskFlowError


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def main(url: str, n: int, concurrency: int, batch: bool) -> dict[str, object]:
    errors: list[str] = []
    async with AsyncTaskFlow(url, max_connections=concurrency, batch=batch) as client:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        it = iter(range(n))

        async def lane() -> None:
            for _ in it:
                try:
                    await client.submit("bench", type="noop", payload={})
                except TaskFlowError as exc:
                    errors.append(repr(exc))

        cpu0, t0 = _cpu(), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        secs, cpu = time.perf_counter() - t0, _cpu() - cpu0
        batches = client._batcher.batches if client._batcher is not None else None
    return {"n": n, "seconds": secs, "cpu_s": cpu, "batches": batches,
            "errors": len(errors), "first_error": errors[0] if errors else None}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.sdk_client")
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--no-batch", action="store_true")
    a = ap.parse_args()
    out = asyncio.run(main(a.url, a.n, a.concurrency, not a.no_batch))
    print(orjson.dumps(out).decode(), flush=True)
