"""Security that holds on every path (issue 29): no existence oracle, no amplification.

* another tenant's task and a missing one answer the same, in the same time;
* failed authentications are rate limited per client address, before any lookup.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import httpx

from tests.helpers import Env, wait_until
from tests.test_api import cli, problem

READ_WAIT_S = "0.3"  # short, so that 100 waits fit in a test; the shape is the same


async def _timed(c: httpx.AsyncClient, path: str, headers: dict[str, str]
                 ) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    r = await c.get(path, headers=headers)
    return time.perf_counter() - start, r


def _shape(doc: dict[str, Any], task_id: str) -> dict[str, Any]:
    return {**doc, "detail": doc["detail"].replace(task_id, "ID"),
            "instance": doc["instance"].replace(task_id, "ID")}


async def test_another_tenants_task_answers_as_a_missing_one_in_the_same_time(
        env: Env) -> None:
    env.proc("projector")
    await env.api(TASKFLOW_AUTH="true", TASKFLOW_READ_WAIT_S=READ_WAIT_S)
    a = {"Authorization": f"Bearer {cli(env, 'keys', 'create', '--tenant', 'acme')}"}
    b = {"Authorization": f"Bearer {cli(env, 'keys', 'create', '--tenant', 'globex')}"}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        theirs = (await c.post("/tasks", json={"title": "acme only"}, headers=a)).json()
        tid = theirs["task_id"]

        async def projected() -> bool:
            return (await c.get(f"/tasks/{tid}", headers=a)).status_code == 200

        await wait_until(projected, timeout=30, what="the task to be projected")
        for suffix in ("", "/events", "/stream"):
            unknown = str(uuid.uuid4())
            seen = {}
            for which, task_id in (("foreign", tid), ("missing", unknown)):
                _, r = await _timed(c, f"/tasks/{task_id}{suffix}", b)
                seen[which] = _shape(problem(r, 404), task_id)
            assert seen["foreign"] == seen["missing"], suffix
        times: dict[str, list[float]] = {"foreign": [], "missing": []}
        for _ in range(50):  # interleaved, so that load on the machine hits both alike
            for which in ("foreign", "missing"):
                task_id = tid if which == "foreign" else str(uuid.uuid4())
                took, r = await _timed(c, f"/tasks/{task_id}", b)
                assert r.status_code == 404
                times[which].append(took)
    foreign, missing = (statistics.median(times[k]) for k in ("foreign", "missing"))
    # Without the fix the foreign one answers at once, the missing one after the wait.
    assert missing / 2 < foreign < missing * 2, (foreign, missing)


async def test_failed_authentications_are_rate_limited_before_any_lookup(env: Env) -> None:
    await env.api(TASKFLOW_AUTH="true", TASKFLOW_AUTH_FAIL_RATE_PER_S="0.5",
                  TASKFLOW_AUTH_FAIL_BURST="5")
    key = cli(env, "keys", "create", "--tenant", "acme")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        good = {"Authorization": f"Bearer {key}"}
        assert (await c.get("/tasks", headers=good)).status_code == 200  # now cached
        codes = [(await c.get("/tasks", headers={
            "Authorization": f"Bearer tfk_made{i}_up"})).status_code for i in range(8)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3, codes
        limited = await c.get("/tasks", headers={"Authorization": "Bearer tfk_x_y"})
        doc = problem(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1 and "authentication" in doc["detail"]
        # A wrong secret for a real key id is limited too: no guessing of secrets.
        key_id = key[4:].partition("_")[0]
        problem(await c.get("/tasks", headers={"Authorization": f"Bearer tfk_{key_id}_no"}),
                429)
