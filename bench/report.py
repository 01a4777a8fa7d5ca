"""The table at the end, the JSON file, and what machine it all ran on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.procs import ROOT, meminfo_kib
from bench.stats import Figure

RESULTS = ROOT / "bench" / "results"
NAMES = {"taskflow": "TaskFlow", "celery": "Celery", "dramatiq": "Dramatiq"}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def kafka_version() -> str | None:
    """``kafka.version`` from ``stack/pom.xml``, the Kafka the local stack runs."""
    try:
        pom = (ROOT / "stack" / "pom.xml").read_text()
    except OSError:
        return None
    m = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    return m.group(1) if m else None


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[0] if out.strip() else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_gib() -> float | None:
    kib = meminfo_kib("MemTotal")
    return round(kib / 1024 / 1024, 1) if kib is not None else None


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    return {"commit": run("rev-parse", "HEAD") or None,
            "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def machine(postgres: str | None = None) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _mem_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "kafka": kafka_version(),
        "postgres": postgres,
        "redis_server": _first_line(["redis-server", "--version"]),
        "celery": _version("celery"),
        "dramatiq": _version("dramatiq"),
        "redis_py": _version("redis"),
        "taskflow": _git(),
    }


def _num(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100 or float(v).is_integer():
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _ratio(f: Figure) -> str:
    if not f.comparable:
        return "no peer equivalent"
    r = f.ratio()
    best = f.best_peer()
    if r is None or best is None:
        return "n/a"
    return f"{r:.2f}× {NAMES[best[0]]}"


def table(figures: list[Figure]) -> str:
    """A Markdown table: it reads in a terminal and pastes into README.md unchanged."""
    head = ["Scenario", "Metric", "TaskFlow", "Celery", "Dramatiq", "TaskFlow / best peer"]
    rows = []
    for f in figures:
        arrow = "↑" if f.better == "higher" else "↓"

        def cell(system: str, f: Figure = f) -> str:
            if system not in f.values:
                return "–"
            v = f.values[system]
            return _num(v) if v is not None else "n/a"

        rows.append([f.scenario, f"{f.metric} ({f.unit}) {arrow}", cell("taskflow"),
                     cell("celery"), cell("dramatiq"), _ratio(f)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
            out.append(c.ljust(w) if i < 2 else c.rjust(w))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":")
                         for i, w in enumerate(widths)) + "|"
    notes = sorted({f"{NAMES.get(s, s)}: {n}" for f in figures for s, n in f.notes.items()})
    text = "\n".join([line(head), sep, *(line(r) for r in rows)])
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return text + "\n\n↑ higher is better, ↓ lower is better; ratios are TaskFlow ÷ best peer."


def write_json(doc: dict[str, Any], stamp: str, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stamp}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path
