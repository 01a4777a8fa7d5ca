"""CPU cost per event of the audit features, in one process, without Kafka or Postgres.

``python -m bench.audit_cpu`` prints, for a typical ``task.created`` and ``task.done``,
the least time of a few runs of what each feature adds where events are made (the API's
and the worker's side) and where they are read (the projector's decode), against the same
steps with the features off. It complements the ``submit`` and ``projector`` scenarios
run with ``TASKFLOW_AUDIT_CHAIN=1`` and ``TASKFLOW_ENCRYPTION_KEY`` set, whose figures on
a shared machine vary more than these costs (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

from events import chain, crypto
from events.codec import decode_verbatim, encode
from events.models import TaskCreated, TaskDone, new_event
from events.settings import Settings


def best_us(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="calls per timed run")
    n = ap.parse_args().n
    tid = uuid.uuid4()
    payload = {"message": "hello", "order": {"id": 1234, "items": ["a", "b", "c"]}}
    key = crypto.new_key()
    created = new_event(TaskCreated(title="invoice 7", payload=payload), task_id=tid,
                        source="taskflow/api")
    done = new_event(TaskDone(result={"message": "hello"}), task_id=tid,
                     source="taskflow/worker/w", attempt=1)
    plain = encode(created)
    chain.configure(Settings(audit_chain=True))
    sealed = chain.seal(created)
    chained = encode(sealed)
    rows = {
        "encode task.created (off)": lambda: encode(created),
        "chain: seal + encode task.created": lambda: encode(chain.seal(created)),
        "chain: seal + encode task.done": lambda: encode(chain.seal(done, "ab" * 32)),
        "encryption: seal payload (AES-GCM)": lambda: crypto.seal_value(key, tid, "payload",
                                                                        payload),
        "encryption: wrap a new data key": lambda: crypto.wrap(key, tid, crypto.new_key()),
        "projector decode (off)": lambda: decode_verbatim(plain),
        "projector decode (chained)": lambda: decode_verbatim(chained),
        "audit verify: check one record": lambda: chain.digest("", {"a": 1}),
    }
    chain.configure(Settings(audit_chain=False))
    print(f"{'step':<42} {'µs/event':>9}")
    for name, fn in rows.items():
        if name.startswith("chain"):
            chain.configure(Settings(audit_chain=True))
        print(f"{name:<42} {best_us(fn, n):9.2f}")
        chain.configure(Settings(audit_chain=False))
    secret = TaskCreated(title="invoice 7",
                         payload=crypto.seal_value(key, tid, "payload", payload))
    sealed_size = len(encode(created.model_copy(update={"data": secret})))
    print(f"\nrecord size: {len(plain)} bytes off, {len(chained)} chained, "
          f"{sealed_size} with the payload sealed")

if __name__ == "__main__":
    main()
