"""CPU cost of the request guard and the parsers behind it on the worst bodies.

``python -m bench.guard_cpu`` prints, per body, the least CPU time of a few runs of the
guard and of the slower of the two parsers behind it (the fast path's pydantic over the
guard's parse, the route's stdlib + pydantic). The target is under 50 ms per request.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable

from pydantic import ValidationError

from api.app import GC_THRESHOLDS
from api.limits import inspect_json
from api.schemas import TaskIn
from events.constants import MAX_JSON_DEPTH
from events.errors import UnsafeJson

LIMIT = 256 * 1024  # the default TASKFLOW_MAX_BODY_BYTES
TARGET_MS = 50.0


def worst_bodies(limit: int = LIMIT) -> dict[str, bytes]:
    """Bodies of about ``limit`` bytes, each the worst case of some parser on the path."""
    def fill(unit: bytes, head: bytes = b'{"title":"x","payload":{"a":"', tail: bytes = b'"}}'
             ) -> bytes:
        return head + unit * ((limit - len(head) - len(tail)) // len(unit)) + tail

    array = b'{"title":"x","payload":{"a":['
    return {
        "escaped quotes": fill(b'\\"'),
        "escaped quotes, unterminated": fill(b'\\"', tail=b""),
        "quotes after a backslash": fill(b'\\"', head=b'{"title":"', tail=b'"}'),
        "backslashes": fill(b"\\\\"),
        "unicode escapes": fill(b"\\u20ac"),
        "surrogate pairs": fill(b"\\ud83d\\ude00"),
        "lone surrogates": fill(b"\\ud800"),
        "many small values": fill(b"0,", head=array, tail=b"0]}}"),
        "many empty lists": fill(b"[],", head=array, tail=b"0]}}"),
        "many small objects": fill(b'{"k":0},', head=array, tail=b"0]}}"),
        "many small keys": fill(b'"k":0,', head=b'{"title":"x","payload":{', tail=b'"z":0}}'),
        "long digit run": fill(b"1", head=b'{"title":"x","payload":{"a":0.', tail=b"}}"),
        "long integer": fill(b"1", head=b'{"title":"x","payload":{"a":', tail=b"}}"),
        "many long integers": fill(b"1234567890123456789,", head=array, tail=b"0]}}"),
        "brackets at the depth limit": fill(b"[" * 28 + b"]" * 28 + b",", head=array,
                                            tail=b"0]}}"),
        "deep brackets": b"[" * limit,
        "deep brackets in a string": fill(b"["),
        "NaN at the end": fill(b"[],", head=array, tail=b"NaN]}}"),
    }


def cpu_ms(fn: Callable[[], object], runs: int = 5) -> float:
    """The least CPU time of ``runs`` runs (on a shared machine the least is the cost)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        try:
            fn()
        except (UnsafeJson, ValidationError, ValueError, RecursionError):
            pass
        best = min(best, time.process_time() - t0)
    return best * 1000


def measure(body: bytes, runs: int = 5) -> tuple[float, float]:
    """(guard, parser behind it) in ms of CPU; the parser is 0 for a refused body."""
    guard = cpu_ms(lambda: inspect_json(body, max_depth=MAX_JSON_DEPTH), runs)
    try:
        doc = inspect_json(body, max_depth=MAX_JSON_DEPTH)
    except UnsafeJson:
        return guard, 0.0
    fast = cpu_ms(lambda: TaskIn.model_validate(doc), runs)
    route = cpu_ms(lambda: TaskIn.model_validate(json.loads(body)), runs)
    return guard, max(fast, route)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.guard_cpu", description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    worst = 0.0
    print(f"{'body':32} {'guard ms':>9} {'parser ms':>10} {'total ms':>9}")
    for name, body in worst_bodies().items():
        guard, parser = measure(body, a.runs)
        worst = max(worst, guard + parser)
        print(f"{name:32} {guard:9.1f} {parser:10.1f} {guard + parser:9.1f}")
    verdict = "met" if worst < TARGET_MS else "missed"
    print(f"worst request: {worst:.1f} ms of CPU (target < {TARGET_MS:.0f} ms: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
