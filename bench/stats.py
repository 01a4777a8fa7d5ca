"""Small shared pieces: the figures a scenario returns, percentiles and progress bars."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tqdm import tqdm

System = Literal["taskflow", "celery", "dramatiq"]
SYSTEMS: tuple[System, ...] = ("taskflow", "celery", "dramatiq")
PEERS: tuple[System, ...] = ("celery", "dramatiq")


@dataclass
class Figure:
    """One row of the table: a metric of a scenario, measured for each system.

    ``values[system]`` is ``None`` when the system was measured but the figure is not
    available (``notes[system]`` says why); a system that has no equivalent is absent.
    """

    scenario: str
    metric: str
    unit: str
    better: Literal["higher", "lower"]
    comparable: bool = True  # False: the peers have nothing like it (they keep no history)
    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def best_peer(self) -> tuple[str, float] | None:
        got = [(p, v) for p in PEERS if (v := self.values.get(p)) is not None]
        if not got:
            return None
        pick = max if self.better == "higher" else min
        return pick(got, key=lambda pv: pv[1])

    def ratio(self) -> float | None:
        """TaskFlow's figure divided by the best peer's (None without both)."""
        tf = self.values.get("taskflow")
        best = self.best_peer()
        if tf is None or best is None or best[1] == 0:
            return None
        return tf / best[1]

    def as_json(self) -> dict[str, Any]:
        best = self.best_peer()
        return {"scenario": self.scenario, "metric": self.metric, "unit": self.unit,
                "better": self.better, "comparable": self.comparable, "values": self.values,
                "notes": self.notes,
                "best_peer": best[0] if best else None, "ratio_to_best_peer": self.ratio()}


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), nearest-rank; None for no samples."""
    if not samples:
        return None
    s = sorted(samples)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99 and max of latencies in seconds, reported in milliseconds."""
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {"count": len(samples_s), "p50_ms": ms(percentile(samples_s, 50)),
            "p90_ms": ms(percentile(samples_s, 90)), "p99_ms": ms(percentile(samples_s, 99)),
            "max_ms": ms(max(samples_s) if samples_s else None)}


def bar(desc: str, total: float | None, unit: str = "task") -> tqdm[Any]:
    """A progress bar on stderr for one scenario step."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True,
                dynamic_ncols=True, mininterval=0.25, unit_scale=True)


def say(msg: str) -> None:
    tqdm.write(f"bench: {msg}", file=sys.stderr)
