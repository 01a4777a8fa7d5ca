"""``taskflow submit`` and ``taskflow watch`` (the root CLI, through the SDK) against the
real stack, as real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
from taskflow_client import AsyncTaskFlow

from tests.helpers import ROOT, Env


async def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "cli.main", *args], cwd=ROOT,
        env={**env.vars, "TASKFLOW_URL": env.base_url}, capture_output=True, text=True,
        timeout=120, check=False)


async def test_submit_and_submit_wait(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    r = await _cli(env, "submit", "--type", "echo", "--payload", '{"message": "hi"}')
    assert r.returncode == 0, r.stderr
    [handle] = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert handle["status"] == "PENDING" and handle["position"]["offset"] >= 0
    async with AsyncTaskFlow(env.base_url) as tf:
        assert (await tf.get(handle["task_id"])).payload == {"message": "hi"}
    r = await _cli(env, "submit", "--type", "echo", "--payload", '{"message": "hi"}',
                   "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    accepted, final = (orjson.loads(line) for line in r.stdout.splitlines())
    assert final["task_id"] == accepted["task_id"]
    assert (final["status"], final["result"]) == ("DONE", "hi")
    failed = await _cli(env, "submit", "--type", "echo", "--payload", "{}", "--wait")
    assert failed.returncode == 3 and orjson.loads(failed.stdout.splitlines()[-1])[
        "status"] == "FAILED"


async def test_submit_refusals(env: Env) -> None:
    await env.api()
    bad_json = await _cli(env, "submit", "--payload", "{nope")
    assert bad_json.returncode == 2 and "--payload" in bad_json.stderr
    unknown = await _cli(env, "submit", "--type", "no-such-type")
    assert unknown.returncode == 1
    problem = orjson.loads(unknown.stderr.strip().splitlines()[-1])
    assert problem["status"] == 422 and problem["errors"][0]["loc"] == ["body", "type"]


async def test_watch_prints_changes_filtered_by_status(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with AsyncTaskFlow(env.base_url) as tf:
        handles = [await tf.submit(f"w{i}", payload={"message": str(i)}) for i in range(3)]
        for h in handles:
            await tf.wait(h.id, timeout=60)
    r = await _cli(env, "watch", "--status", "DONE", "--after", "0", "--count", "3")
    assert r.returncode == 0, r.stderr
    lines = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [c["status"] for c in lines] == ["DONE"] * 3
    assert {c["task_id"] for c in lines} == {h.id for h in handles}
    assert [c["position"] for c in lines] == sorted(c["position"] for c in lines)
    everything = await _cli(env, "watch", "--after", "0", "--count", "9")
    kinds = [orjson.loads(line)["event"] for line in everything.stdout.splitlines()]
    assert sorted(set(kinds)) == ["task.created", "task.done", "task.processing"]
