"""A subscriber in its own process: ``python -m tests.sse_reader_proc URL OUT``.

Appends every SSE id it receives to OUT, one per line, until killed.
"""

from __future__ import annotations

import sys

import httpx


def main(url: str, out: str) -> None:
    with open(out, "a") as f, httpx.Client(timeout=httpx.Timeout(10, read=None)) as c, \
            c.stream("GET", url) as r:
        for line in r.iter_lines():
            if line.startswith("id:"):
                f.write(line[3:].strip() + "\n")
                f.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
