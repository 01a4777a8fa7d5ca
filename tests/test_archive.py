"""Log archives: older records in checksummed files, and a topic whose older records
are gone (Kafka retention) still replays, verifies and rebuilds in full from them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from events import archive
from events.log.admin import delete_records_before
from tests.helpers import ROOT, Env, wait_until


def taskflow(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env.vars, **extra}, capture_output=True,
                          text=True, timeout=300, check=False)


async def _submit_all(c: httpx.AsyncClient, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        r = await c.post("/tasks", json={"title": f"{tag}{i}", "payload": {"message": tag}})
        assert r.status_code == 202
        ids.append(str(r.json()["task_id"]))

    async def all_done() -> bool:
        for t in ids:
            r = await c.get(f"/tasks/{t}/events")
            if r.status_code != 200 or r.json()["items"][-1]["type"] != "task.done":
                return False
        return True

    await wait_until(all_done, what=f"{tag} tasks done and projected")
    return ids


async def test_archive_then_rebuild_from_archive_plus_log(env: Env, tmp_path: Path) -> None:
    env.extra["TASKFLOW_AUDIT_CHAIN"] = "1"
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        old = await _submit_all(c, 6, "old")
        await asyncio.sleep(1.0)
        cut = datetime.now(UTC)
        await asyncio.sleep(1.0)
        dest = str(tmp_path / "archive")
        made = taskflow(env, "log", "archive", "--before", cut.isoformat(), "--to", dest)
        assert made.returncode == 0, made.stderr
        new = await _submit_all(c, 3, "new")

    files = archive.manifest(dest, env.topic)
    assert files and all(f["name"].endswith(".jsonl.gz") and len(f["sha256"]) == 64
                         for f in files)
    assert sum(f["count"] for f in files) == 18  # created, processing, done of each old task
    # Kafka's retention, as it would run: the archived records leave the topic.
    upto = archive.archived_upto(dest, env.topic)
    await delete_records_before(env.bootstrap, env.topic, upto)
    assert len(await env.read_log()) == 9

    alone = taskflow(env, "projections", "verify")
    assert alone.returncode == 1  # the live log alone no longer explains the read model
    arch = {"TASKFLOW_ARCHIVE_DIR": dest}
    ok = taskflow(env, "projections", "verify", **arch)
    assert ok.returncode == 0 and "verified 27 event(s): 0 difference(s)" in ok.stderr, ok.stderr
    rebuilt = taskflow(env, "projections", "rebuild", **arch)
    assert rebuilt.returncode == 0, rebuilt.stderr
    conn = await env.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 9
        assert await conn.fetchval("SELECT count(*) FROM task_events") == 27
    finally:
        await conn.close()
    again = taskflow(env, "projections", "verify", **arch)
    assert again.returncode == 0 and "0 difference(s)" in again.stderr
    history = taskflow(env, "replay", "--task", old[0], **arch)
    assert [orjson.loads(x)["type"] for x in history.stdout.splitlines()] == [
        "task.created", "task.processing", "task.done"]
    chained = taskflow(env, "audit", "verify", **arch)
    assert chained.returncode == 0 and "27 task event(s), 27 chained, 0 break(s)" in chained.stderr
    assert taskflow(env, "replay", "--task", new[0], **arch).stdout.count("\n") == 3

    # A changed archive file is refused, not read.
    victim = Path(dest) / env.topic / files[0]["name"]
    blob = bytearray(victim.read_bytes())
    blob[-5] ^= 0xFF
    victim.write_bytes(bytes(blob))
    bad = taskflow(env, "projections", "verify", **arch)
    assert bad.returncode != 0 and "checksum does not match" in bad.stdout + bad.stderr
