"""``POST /tasks:batch?partial=true``: each task accepted or refused on its own, with
per-task idempotency keys that mean what ``Idempotency-Key`` means on ``POST /tasks``."""

from __future__ import annotations

import httpx

from api.schemas import BatchOutcome
from tests.helpers import Env


async def test_partial_batch_answers_each_task(env: Env) -> None:
    env.proc("projector")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as c:
        r = await c.post("/tasks:batch?partial=true", json={"tasks": [
            {"title": "ok"},
            {"title": ""},
            {"title": "x", "type": "no-such-type"},
            {"title": "keyed", "idempotency_key": "k1"},
            {"title": "keyed", "idempotency_key": "k1"},
            {"title": "other body", "idempotency_key": "k1"},
            "not an object",
            {"title": "bad key", "idempotency_key": "has space"},
        ]})
        assert r.status_code == 207, r.text
        doc = r.json()
        assert BatchOutcome.model_validate(doc)
        ok, empty, unknown, keyed, again, clash, junk, badkey = doc["items"]
        assert ok["status"] == "PENDING" and "problem" not in ok
        assert empty["problem"]["status"] == 422
        assert empty["problem"]["errors"][0]["loc"] == ["body", "tasks", 1, "title"]
        assert unknown["problem"]["errors"][0]["loc"] == ["body", "tasks", 2, "type"]
        assert not keyed.get("replayed") and again["replayed"]
        assert again["task_id"] == keyed["task_id"] and again["position"] == keyed["position"]
        assert clash["problem"]["errors"] == [{"loc": ["body", "tasks", 5, "idempotency_key"],
                                               "msg": "reused with a different body",
                                               "type": "idempotency"}]
        assert junk["problem"]["errors"][0]["loc"] == ["body", "tasks", 6]
        assert badkey["problem"]["errors"][0]["loc"] == ["body", "tasks", 7,
                                                        "idempotency_key"]
        # The key names the same task alone as in a batch, and in a later batch.
        single = await c.post("/tasks", json={"title": "keyed"},
                              headers={"Idempotency-Key": "k1"})
        assert single.status_code == 200 and single.json()["task_id"] == keyed["task_id"]
        later = await c.post("/tasks:batch?partial=true",
                             json={"tasks": [{"title": "keyed", "idempotency_key": "k1"}]})
        assert later.json()["items"][0]["task_id"] == keyed["task_id"]
        assert later.json()["items"][0]["replayed"] is True
        changed = await c.post("/tasks:batch?partial=true", json={"tasks": [
            {"title": "fine"}, {"title": "changed", "idempotency_key": "k1"}]})
        assert changed.json()["items"][1]["problem"]["errors"][0]["loc"] == [
            "body", "tasks", 1, "idempotency_key"]
        # Without the flag the batch stays all-or-nothing.
        strict = await c.post("/tasks:batch", json={"tasks": [{"title": "fine"},
                                                               {"title": ""}]})
        assert strict.status_code == 422
    created = sorted(str(ev.subject) for _, ev in await env.log_events()
                     if ev.type == "task.created")
    fine = changed.json()["items"][0]["task_id"]
    assert created == sorted([ok["task_id"], keyed["task_id"], fine])
