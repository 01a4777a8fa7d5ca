"""Security that holds on every path (issue 29): no existence oracle, no amplification.

* another tenant's task and a missing one answer the same, in the same time;
* failed authentications are rate limited per client address, before any lookup;
* the rate limit and the ``Idempotency-Key`` check hold across two API processes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from typing import Any

import httpx

from api.app import create_app
from cli.services import DEV_OPEN_NOTE, dev_profile
from events.log import delete_topics
from events.schedules import schedule_topic
from events.settings import Settings
from tests.helpers import ARTIFACTS, ROOT, Env, Proc, free_port, wait_until
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
    # The least role that may read: the answer is the same for every role that may.
    b = {"Authorization":
         f"Bearer {cli(env, 'keys', 'create', '--tenant', 'globex', '--role', 'reader')}"}
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
        problem(await c.get("/tasks", headers={"Authorization": "Bearer not-a-key"}), 429)


# -- limits that hold across API processes -------------------------------------------------

async def test_an_idempotency_key_reused_with_another_body_is_422_on_any_process(
        env: Env) -> None:
    """No projector runs, so no process can learn of the first submit from the read
    model: only the claim both processes share can refuse the second body."""
    one, two = free_port(), free_port()
    await env.api(one)
    await env.api(two)
    urls = (f"http://127.0.0.1:{one}", f"http://127.0.0.1:{two}")
    async with httpx.AsyncClient(timeout=30) as c:
        first = await c.post(f"{urls[0]}/tasks", json={"title": "a"},
                             headers={"Idempotency-Key": "k-seq"})
        assert first.status_code == 202, first.text
        other = await c.post(f"{urls[1]}/tasks", json={"title": "b"},
                             headers={"Idempotency-Key": "k-seq"})
        doc = problem(other, 422)
        assert doc["errors"][0]["type"] == "idempotency"
        again = await c.post(f"{urls[1]}/tasks", json={"title": "a"},
                             headers={"Idempotency-Key": "k-seq"})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["task_id"] == first.json()["task_id"]
        assert again.json()["position"] == first.json()["position"]
        # At the same moment, on both processes: one body wins, the other is refused.
        keys = [f"k-race-{i}" for i in range(10)]
        answers = await asyncio.gather(*[
            c.post(f"{url}/tasks", json={"title": title}, headers={"Idempotency-Key": k})
            for k in keys for url, title in ((urls[0], "a"), (urls[1], "b"))])
        # ... and a batch item with a used key is refused by the other process too.
        batch = await c.post(f"{urls[1]}/tasks:batch?partial=true", json={"tasks": [
            {"title": "b", "idempotency_key": "k-seq"}, {"title": "new"}]})
    for i, k in enumerate(keys):
        codes = sorted(r.status_code for r in answers[2 * i:2 * i + 2])
        assert codes == [202, 422], (k, [r.text for r in answers[2 * i:2 * i + 2]])
    items = batch.json()["items"]
    assert batch.status_code == 207 and items[0]["problem"]["status"] == 422, items
    assert "task_id" in items[1]
    created = Counter(str(ev.subject) for _, ev in await env.log_events()
                      if ev.type.value == "task.created")
    assert len(created) == 1 + len(keys) + 1 and set(created.values()) == {1}, created


async def test_the_rate_limit_holds_across_api_processes(env: Env) -> None:
    burst, rate = 6, 0.1
    one, two = free_port(), free_port()
    limits = {"TASKFLOW_AUTH": "true", "TASKFLOW_RATE_LIMIT_PER_S": str(rate),
              "TASKFLOW_RATE_LIMIT_BURST": str(burst)}
    await env.api(one, **limits)
    await env.api(two, **limits)
    key = {"Authorization": f"Bearer {cli(env, 'keys', 'create', '--tenant', 'acme')}"}
    answers: list[tuple[int, httpx.Response]] = []
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(4 * burst):  # alternating: each process alone would allow `burst`
            port = (one, two)[i % 2]
            answers.append((port, await c.get(f"http://127.0.0.1:{port}/tasks",
                                              headers=key)))
    elapsed = time.monotonic() - start
    allowed = sum(r.status_code == 200 for _, r in answers)
    assert burst <= allowed <= burst + elapsed * rate, (allowed, elapsed)
    assert [r.status_code for _, r in answers[:burst]] == [200] * burst
    for port in (one, two):
        limited = [r for p, r in answers if p == port and r.status_code == 429]
        assert limited, port
        problem(limited[-1], 429)
        assert int(limited[-1].headers["retry-after"]) >= 1


# -- /readyz ------------------------------------------------------------------------------

async def test_readyz_names_the_dependency_that_is_down_not_how(env: Env) -> None:
    dead_port = free_port()  # nothing listens here
    dead = f"127.0.0.1:{dead_port}"
    await env.api(TASKFLOW_KAFKA_BOOTSTRAP=dead, TASKFLOW_PRODUCE_TIMEOUT_S="1")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.get("/readyz")
    doc = problem(r, 503)
    assert doc["checks"] == {"kafka": "unavailable", "postgres": "ok", "migrations": "ok"}
    assert "kafka" in doc["detail"]
    assert str(dead_port) not in r.text and "rror" not in r.text, r.text  # no error text
    assert str(dead_port) in env.procs[-1].output()  # ... which the server log keeps


# -- closed by default ----------------------------------------------------------------------

async def test_taskflow_api_starts_closed_unless_auth_is_turned_off(env: Env) -> None:
    """No TASKFLOW_AUTH at all: keys are required. Only an explicit ``off`` opens it."""
    unset = {k: v for k, v in env.vars.items() if k != "TASKFLOW_AUTH"}
    port = free_port()
    proc = Proc("api-default", ["api", "--port", str(port)], unset,
                ARTIFACTS / env.name / "api-default.log").start()
    env.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:

        async def up() -> bool:
            assert proc.alive(), proc.output()[-3000:]
            try:
                return (await c.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(up, timeout=30, what="api to answer")
        problem(await c.get("/tasks"), 401)
        problem(await c.post("/tasks", json={"title": "anonymous"}), 401)
    assert "open" not in proc.output()
    await env.api(TASKFLOW_AUTH="off")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        assert (await c.get("/tasks")).status_code == 200
    assert "TASKFLOW_AUTH is off: the API is open" in env.procs[-1].output()


async def test_only_the_local_development_profile_runs_open_and_says_so(env: Env) -> None:
    environ: dict[str, str] = {}
    note = dev_profile(environ)
    assert environ == {"TASKFLOW_AUTH": "off"} and note is not None and "OPEN" in note
    chosen = {"TASKFLOW_AUTH": "true"}
    assert dev_profile(chosen) is None and chosen == {"TASKFLOW_AUTH": "true"}
    assert "taskflow run" in (ROOT / "Makefile").read_text()  # `make run`
    # `taskflow run` itself, with no TASKFLOW_AUTH: open, and it says so at start.
    unset = {k: v for k, v in env.vars.items() if k != "TASKFLOW_AUTH"}
    run = Proc("run", ["run"], unset, ARTIFACTS / env.name / "run.log").start()
    env.procs.append(run)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:

        async def open_() -> bool:
            assert run.alive(), run.output()[-3000:]
            try:
                return (await c.get("/tasks")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(open_, timeout=60, what="taskflow run to answer without a key")
    assert run.output().startswith(DEV_OPEN_NOTE)


async def test_another_tenants_schedule_answers_as_a_missing_one_in_the_same_time(
        env: Env) -> None:
    env.proc("scheduler")
    await env.api(TASKFLOW_AUTH="true", TASKFLOW_READ_WAIT_S=READ_WAIT_S)
    a = {"Authorization": f"Bearer {cli(env, 'keys', 'create', '--tenant', 'acme')}"}
    b = {"Authorization": f"Bearer {cli(env, 'keys', 'create', '--tenant', 'globex')}"}
    try:
        async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
            r = await c.post("/schedules", headers=a, json={
                "name": "acme", "every_s": 3600,
                "task": {"title": "t", "type": "echo", "payload": {"message": "m"}}})
            assert r.status_code == 201, r.text
            sid = r.json()["schedule_id"]
            times: dict[str, list[float]] = {"foreign": [], "missing": []}
            shapes = {}
            for _ in range(15):
                for which in ("foreign", "missing"):
                    some = sid if which == "foreign" else str(uuid.uuid4())
                    took, got = await _timed(c, f"/schedules/{some}", b)
                    shapes[which] = _shape(problem(got, 404), some)
                    times[which].append(took)
    finally:
        await delete_topics(env.bootstrap, [schedule_topic(env.topic)])
    assert shapes["foreign"] == shapes["missing"]
    foreign, missing = (statistics.median(times[k]) for k in ("foreign", "missing"))
    assert missing / 2 < foreign < missing * 2, (foreign, missing)


async def test_the_rate_limit_falls_back_to_the_process_while_postgres_is_away(
        env: Env) -> None:
    """Submits go to the log and work through a database outage; the shared bucket is
    in Postgres, so while it is away each process limits on its own, never all open."""
    dead = f"postgresql+asyncpg://taskflow:taskflow@127.0.0.1:{free_port()}/nowhere"
    app = create_app(Settings(database_url=dead, topic=env.topic, kafka_bootstrap=env.bootstrap,
                              auth=False, rate_limit_per_s=0.01, rate_limit_burst=2))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        codes = [(await c.post("/tasks", json={"title": f"t{i}"})).status_code
                 for i in range(4)]
    assert codes == [202, 202, 429, 429], codes
    assert len(await env.log_events()) == 2
    # With keys, a key this process has not cached cannot be checked: 503, never a 500.
    app = create_app(Settings(database_url=dead, topic=env.topic, kafka_bootstrap=env.bootstrap,
                              auth=True))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for path in ("/tasks", "/tasks:batch"):
            body = {"title": "t"} if path == "/tasks" else {"tasks": [{"title": "t"}]}
            r = await c.post(path, json=body, headers={"Authorization": "Bearer tfk_a_b"})
            problem(r, 503)
