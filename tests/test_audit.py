"""Tamper evidence end to end: every producer chains its events, ``taskflow audit verify``
finds an edited or removed record by its coordinates, and signed bundles verify offline."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from events.log import EventProducer, delete_topics, ensure_topic
from tests.helpers import ROOT, Env, wait_until

CHAIN = {"TASKFLOW_AUDIT_CHAIN": "1"}


def taskflow(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env.vars, **extra}, capture_output=True,
                          text=True, timeout=120, check=False)


async def _status(c: httpx.AsyncClient, tid: str, status: str, attempt: int = 0) -> bool:
    r = await c.get(f"/tasks/{tid}")
    return r.status_code == 200 and r.json()["status"] == status and (
        r.json()["attempt"] >= attempt)


async def _submit(c: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await c.post("/tasks", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


async def test_every_producer_chains_and_a_changed_copy_breaks_at_its_coordinates(
        env: Env) -> None:
    env.extra.update(CHAIN)
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        done = await _submit(c, {"title": "echo", "payload": {"message": "original"}})
        failed = await _submit(c, {"title": "boom", "type": "fail", "max_attempts": 1})
        slow = await _submit(c, {"title": "nap", "type": "sleep", "payload": {"seconds": 20}})
        await wait_until(lambda: _status(c, done, "DONE"), what="echo done")
        await wait_until(lambda: _status(c, failed, "FAILED"), what="fail failed")

        async def progressed() -> bool:
            r = await c.get(f"/tasks/{slow}")
            return r.status_code == 200 and r.json()["progress"] > 0

        await wait_until(progressed, what="sleep reporting progress")
        assert (await c.post(f"/tasks/{slow}/cancel")).status_code == 202
        assert (await c.post(f"/tasks/{failed}/retry")).status_code == 202  # API redrive
        await wait_until(lambda: _status(c, slow, "CANCELLED"), what="sleep cancelled")
        await wait_until(lambda: _status(c, failed, "FAILED", attempt=2), what="failed again")

    records = await env.read_log()
    docs = [orjson.loads(r.value or b"") for r in records]
    assert docs and all(len(d["chainhash"]) == 64 for d in docs)
    types = {(d["subject"], d["type"]) for d in docs}
    for tid, etype in [(done, "task.done"), (failed, "task.redriven"),
                       (slow, "task.cancel_requested"), (slow, "task.cancelled"),
                       (slow, "task.progress")]:
        assert (tid, etype) in types  # API, worker, redrive: all of them chained
    ok = taskflow(env, "audit", "verify")
    assert ok.returncode == 0 and ok.stdout == "", ok.stderr
    assert f"{len(docs)} task event(s), {len(docs)} chained, 0 break(s)" in ok.stderr

    # A copy of the topic with the echo's result edited and the cancel request left out.
    copy = env.topic + ".copy"
    await ensure_topic(env.bootstrap, copy, 6)
    producer = EventProducer(bootstrap=env.bootstrap, topic=copy, timeout_s=30)
    edited = removed = None
    try:
        for r, d in zip(records, docs, strict=True):
            value = r.value or b""
            if d["subject"] == slow and d["type"] == "task.cancel_requested":
                removed = d["chainhash"]
                continue
            if d["subject"] == done and d["type"] == "task.done":
                d["data"]["result"] = "forged"
                value = orjson.dumps(d)
                edited = await producer.append_raw(copy, r.key, value)
                continue
            await producer.append_raw(copy, r.key, value)
    finally:
        await producer.stop()
    assert edited is not None and removed is not None
    try:
        bad = taskflow(env, "audit", "verify", TASKFLOW_TOPIC=copy)
        assert bad.returncode == 1, bad.stderr
        found = [orjson.loads(line) for line in bad.stdout.splitlines()]
        assert {"partition": edited.partition, "offset": edited.offset, "task_id": done,
                "reason": "hash mismatch"} in found
        after = [b for b in found if b["task_id"] == slow]
        assert after and all(b["reason"] == "unknown previous" for b in after)
        assert {b["task_id"] for b in found} == {done, slow}  # the retried task is intact
        one = taskflow(env, "audit", "verify", "--task", failed, TASKFLOW_TOPIC=copy)
        assert one.returncode == 0 and "0 break(s)" in one.stderr
    finally:
        await delete_topics(env.bootstrap, [copy])


async def test_audit_bundle_verifies_offline_and_an_edited_one_fails(
        env: Env, tmp_path: Path) -> None:
    key = tmp_path / "audit.pem"
    assert taskflow(env, "audit", "keygen", "--out", str(key)).returncode == 0
    pub = tmp_path / "audit.pem.pub"
    env.extra.update({**CHAIN, "TASKFLOW_AUDIT_SIGNING_KEY": str(key)})
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await _submit(c, {"title": "echo", "payload": {"message": "kept"}})

        async def history_done() -> bool:
            r = await c.get(f"/tasks/{tid}/events")
            return r.status_code == 200 and r.json()["items"][-1]["type"] == "task.done"

        await wait_until(history_done, what="task.done in the history")
        r = await c.get(f"/tasks/{tid}/audit")
        assert r.status_code == 200, r.text
        bundle = r.json()
        missing = await c.get(f"/tasks/{uuid.uuid4()}/audit")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
    assert [e["event"]["type"] for e in bundle["events"]] == [
        "task.created", "task.processing", "task.done"]
    assert bundle["chain"]["head"] == bundle["events"][-1]["event"]["chainhash"]

    # Offline: no Kafka, no Postgres, only the bundle and the public key.
    offline = {"TASKFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:9", "TASKFLOW_DATABASE_URL":
               "postgresql+asyncpg://nobody@127.0.0.1:9/none"}
    good = tmp_path / "bundle.json"
    good.write_bytes(orjson.dumps(bundle))
    ok = taskflow(env, "audit", "verify-bundle", str(good), "--public-key", str(pub), **offline)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 3 event(s)"), ok.stdout + ok.stderr

    bundle["events"][-1]["event"]["data"]["result"] = "changed"
    bad = tmp_path / "edited.json"
    bad.write_bytes(orjson.dumps(bundle))
    no = taskflow(env, "audit", "verify-bundle", str(bad), "--public-key", str(pub), **offline)
    assert no.returncode == 1
    assert "signature does not match" in no.stdout
    last = bundle["events"][-1]["position"]
    assert f"chain break at {last['partition']}:{last['offset']}: hash mismatch" in no.stdout


async def test_audit_bundle_without_a_key_is_a_503_problem(env: Env) -> None:
    env.proc("projector")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.get(f"/tasks/{uuid.uuid4()}/audit")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "TASKFLOW_AUDIT_SIGNING_KEY" in r.json()["detail"]
