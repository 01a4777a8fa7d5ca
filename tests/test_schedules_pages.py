"""``GET /schedules`` pages and ``Idempotency-Key`` on ``POST /schedules``, on the real
stack (API, projector, worker and scheduler as processes)."""

from __future__ import annotations

import httpx

from events.models import EventType
from tests.helpers import Env, free_port, wait_until
from tests.test_schedules import TASK, create, schedule_log, senv, services

__all__ = ["senv"]


async def test_list_pages_with_a_keyset_cursor(senv: Env) -> None:
    await services(senv)
    async with httpx.AsyncClient(base_url=senv.base_url, timeout=30) as c:
        made = [await create(c, every_s=3600, name=f"s{i}") for i in range(5)]

        async def all_projected() -> bool:
            return len((await c.get("/schedules")).json()["items"]) == 5

        await wait_until(all_projected, timeout=30, what="five schedules projected")
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            doc = (await c.get("/schedules", params=params)).json()
            assert len(doc["items"]) <= 2
            seen += [s["schedule_id"] for s in doc["items"]]
            pages += 1
            cursor = doc["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == made  # oldest first, each once
        whole = (await c.get("/schedules")).json()
        assert whole["next_cursor"] is None and len(whole["items"]) == 5
        bad = await c.get("/schedules", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")


async def test_idempotency_key_names_one_schedule(senv: Env) -> None:
    await services(senv)
    body = {"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
            "task": TASK}
    key = {"Idempotency-Key": "nightly-1"}
    async with httpx.AsyncClient(base_url=senv.base_url, timeout=30) as c:
        first = await c.post("/schedules", json=body, headers=key)
        assert first.status_code == 201, first.text
        sid = first.json()["schedule_id"]
        again = await c.post("/schedules", json=body, headers=key)
        assert again.status_code == 200, again.text
        assert again.json()["schedule_id"] == sid
        assert again.headers["idempotent-replayed"] == "true"
        other = await c.post("/schedules", json={**body, "cron": "0 3 * * *"}, headers=key)
        assert other.status_code == 422
        assert other.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
        fresh = await c.post("/schedules", json=body, headers={"Idempotency-Key": "nightly-2"})
        assert fresh.status_code == 201 and fresh.json()["schedule_id"] != sid
        await wait_until(lambda: _projected(c, sid), timeout=30, what="projected")
    # A second API instance knows nothing in memory: it answers from the read model.
    port = free_port()
    await senv.api(port=port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        again = await c.post("/schedules", json=body, headers=key)
        assert again.status_code == 200 and again.json()["schedule_id"] == sid
        assert again.json()["next_run_at"] is not None
        other = await c.post("/schedules", json={**body, "name": "x"}, headers=key)
        assert other.status_code == 422
        bad = await c.post("/schedules", json=body, headers={"Idempotency-Key": "a b"})
        assert bad.status_code == 422
    created = [ev for ev in await schedule_log(senv)
               if ev.type is EventType.SCHEDULE_CREATED and str(ev.subject) == sid]
    assert len(created) == 1


async def _projected(c: httpx.AsyncClient, sid: str) -> bool:
    return (await c.get(f"/schedules/{sid}")).status_code == 200
