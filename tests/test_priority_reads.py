"""Priority in the reads: ``GET /tasks`` filters and sorts by it, ``/stats`` counts
unfinished tasks by priority and by tenant, in the caller's scope."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import Env, wait_until
from tests.test_api import cli, problem


async def _all_pages(c: httpx.AsyncClient, params: dict[str, Any],
                     headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await c.get("/tasks", params={**params, **({"cursor": cursor} if cursor else {})},
                        headers=headers)
        assert r.status_code == 200, r.text
        out += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out


async def test_list_filters_and_sorts_by_priority_and_stats_count_it(env: Env) -> None:
    env.proc("projector")  # no worker: everything stays PENDING
    await env.api(TASKFLOW_AUTH="true")
    a = {"X-API-Key": cli(env, "keys", "create", "--tenant", "acme")}
    b = {"X-API-Key": cli(env, "keys", "create", "--tenant", "globex")}
    levels = ["low", "normal", "high", "critical", 7, -100, "high"]
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks:batch", headers=a, json={"tasks": [
            {"title": f"t{i}", "payload": {"message": "m"}, "priority": p}
            for i, p in enumerate(levels)]})
        assert r.status_code == 202, r.text
        r = await c.post("/tasks", headers=b, json={"title": "g", "priority": "critical"})
        assert r.status_code == 202, r.text

        async def projected() -> bool:
            got = (await c.get("/tasks", params={"limit": 100}, headers=a)).json()["items"]
            return len(got) == len(levels)

        await wait_until(projected, timeout=60, what="tasks projected")
        by_prio = await _all_pages(c, {"sort": "priority", "limit": 2}, a)
        assert [t["priority"] for t in by_prio] == [100, 50, 50, 7, 0, -50, -100]
        asc = await _all_pages(c, {"sort": "priority", "order": "asc", "limit": 3}, a)
        assert [t["task_id"] for t in asc] == [t["task_id"] for t in reversed(by_prio)]
        high = await _all_pages(c, {"priority": "high"}, a)
        assert sorted(t["title"] for t in high) == ["t2", "t6"]
        at_least = await _all_pages(c, {"min_priority": "7"}, a)
        assert {t["priority"] for t in at_least} == {7, 50, 100}
        for bad in ({"priority": "urgent"}, {"min_priority": "101"}, {"sort": "title"}):
            problem(await c.get("/tasks", params=bad, headers=a), 422)
        created_cursor = (await c.get("/tasks", params={"limit": 1}, headers=a)).json()
        problem(await c.get("/tasks", params={"sort": "priority",
                                              "cursor": created_cursor["next_cursor"]},
                            headers=a), 400)
        stats_a = (await c.get("/stats", headers=a)).json()["open"]
        stats_b = (await c.get("/stats", headers=b)).json()["open"]
    assert stats_a["by_priority"] == {"-100": {"PENDING": 1}, "-50": {"PENDING": 1},
                                      "0": {"PENDING": 1}, "7": {"PENDING": 1},
                                      "50": {"PENDING": 2}, "100": {"PENDING": 1}}
    assert stats_a["by_tenant"] == {"acme": {"PENDING": 7}}  # globex's is not in scope
    assert stats_b == {"by_priority": {"100": {"PENDING": 1}},
                       "by_tenant": {"globex": {"PENDING": 1}}}
