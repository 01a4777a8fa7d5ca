"""``python -m bench [--quick] [--scenarios ...]``: run the benchmark, print, save JSON.

``make bench`` runs it after ``taskflow stack up``; pass flags with
``make bench BENCH_ARGS=--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from pathlib import Path
from typing import NoReturn

from bench.procs import BenchError
from bench.report import RESULTS
from bench.run import SCENARIOS, Run


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small N everywhere: a smoke run of a minute or two")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny N everywhere: only proves that the bench runs (for tests)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--no-peers", action="store_true", help="measure TaskFlow only")
    ap.add_argument("--api-workers", type=int, default=2,
                    help="uvicorn processes of the API (one per core of this 2-core machine)")
    ap.add_argument("--workers", type=int, default=1, help="TaskFlow worker processes")
    ap.add_argument("--n", type=int, help="override the end-to-end N (e2e and sdk)")
    ap.add_argument("--subscribers", type=int, help="override the SSE fan-out subscribers")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes")
    ap.add_argument("--keep", action="store_true",
                    help="keep the bench's databases and topics (for debugging)")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(unknown)}")
    args.scenarios = wanted
    return args


def _terminate(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def _raise_open_files() -> None:
    """The API of the fan-out scenario holds a socket per subscriber, and inherits this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    _raise_open_files()
    try:
        return asyncio.run(Run(args).run())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
