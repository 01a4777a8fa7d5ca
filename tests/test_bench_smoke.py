"""``make bench`` in miniature: every scenario, TaskFlow and both peers, tiny sizes.

It asserts only that the benchmark runs end to end and prints its table; the figures
themselves belong to ``make bench``, never to a timed test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import SCENARIOS
from tests.helpers import ARTIFACTS, ROOT


@pytest.mark.timeout(600)
@pytest.mark.slow
@pytest.mark.stack
def test_bench_smoke_runs_every_scenario_and_prints_its_table() -> None:
    out_dir = ARTIFACTS / "bench-smoke"
    out_dir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(out_dir)],
        cwd=ROOT, env=dict(os.environ), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=540, check=False,
    )
    (out_dir / "stdout.txt").write_text(res.stdout)
    (out_dir / "stderr.txt").write_text(res.stderr)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in rows[0].split("|")[1:3]] == ["Scenario", "Metric"], rows[:1]
    for scenario in SCENARIOS:
        assert any(line.split("|")[1].strip() == scenario for line in rows), scenario
    written = [line.split("JSON: ", 1)[1].split()[0] for line in res.stdout.splitlines()
               if line.startswith("JSON: ")]
    assert len(written) == 1
    doc = json.loads(Path(written[0]).read_text())
    assert doc["smoke"] is True and doc["errors"] == []
    assert {f["scenario"] for f in doc["figures"]} == set(SCENARIOS)
    peers = {name for f in doc["figures"] for name, v in f["values"].items() if v is not None}
    assert {"taskflow", "celery", "dramatiq"} <= peers
    # Every system's latency run starts on a settled disk (the runs before leave the
    # page cache dirty, and its writeback would land in the window).
    latency = doc["details"]["latency"]
    assert {"taskflow", "celery", "dramatiq"} <= set(latency)
    assert all(r["settled"]["seconds"] >= 0 for r in latency.values())
