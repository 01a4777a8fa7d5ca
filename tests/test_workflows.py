"""Workflows over HTTP with the coordinator, worker, projector and API as real processes.

Node starts are checked in the log itself: one ``task.created`` per node and round, with
the id derived from the workflow, the key and the round.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from api.workflows import WORKFLOW_IDEMPOTENCY_NS
from events.codec import decode
from events.log import EventProducer, delete_topics, ensure_topic, task_key
from events.models import EventType, WorkflowNodeStarted
from events.workflows import node_task_id, workflow_topic
from tests.helpers import ROOT, Env, SSEReader, wait_until


@pytest.fixture
async def wenv(env: Env) -> AsyncIterator[Env]:
    try:
        yield env
    finally:
        env.stop_all()
        await delete_topics(env.bootstrap, [workflow_topic(env.topic)])


TYPES = "echo,sleep,fail,noop,gate,big"


async def services(env: Env, coordinator: bool = True) -> None:
    env.proc("projector")
    env.proc("worker", TASKFLOW_HANDLER_MODULES="tests.workflow_handlers",
             TASKFLOW_TASK_TYPES=TYPES)
    if coordinator:
        env.proc("coordinator")
    await env.api(TASKFLOW_TASK_TYPES=TYPES)


def echo(key: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "title": key.upper(), "payload": {"message": key},
            "depends_on": list(deps), **extra}


async def submit(c: httpx.AsyncClient, tasks: list[dict[str, Any]], **body: Any
                 ) -> dict[str, Any]:
    r = await c.post("/workflows", json={"name": "w", "tasks": tasks, **body})
    assert r.status_code == 202, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def finished(c: httpx.AsyncClient, wid: str, timeout: float = 60, round: int = 0
                   ) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await c.get(f"/workflows/{wid}")
        if r.status_code != 200:
            return None
        doc: dict[str, Any] = r.json()
        return doc if doc["status"] != "RUNNING" and doc["round"] == round else None

    doc = await wait_until(done, timeout=timeout, what=f"workflow {wid} to finish")
    assert doc is not None
    return doc


def nodes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["key"]: n for n in doc["nodes"]}


async def node_events(env: Env, task_ids: set[uuid.UUID]
                      ) -> tuple[Counter[uuid.UUID], Counter[uuid.UUID]]:
    """Per task: the number of task.created and of terminal events in the log."""
    created: Counter[uuid.UUID] = Counter()
    terminal: Counter[uuid.UUID] = Counter()
    ends = {EventType.DONE, EventType.FAILED, EventType.CANCELLED}
    for _, ev in await env.log_events():
        if ev.subject not in task_ids:
            continue
        if ev.type is EventType.CREATED:
            created[ev.subject] += 1
        elif ev.type in ends:
            terminal[ev.subject] += 1
    return created, terminal


def taskflow(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env.vars}, capture_output=True, text=True,
                          timeout=300)


async def test_diamond_d_sees_both_results_and_rebuild_equals_live(wenv: Env) -> None:
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, [echo("a"), echo("b", "a"), echo("c", "a"),
                               echo("d", "b", "c")])
        wid = doc["workflow_id"]
        assert doc["tasks"]["d"] == str(node_task_id(uuid.UUID(wid), "d", 0))
        wf = await finished(c, wid)
        assert wf["status"] == "DONE", wf
        assert wf["summary"] == {"DONE": 4}
        ns = nodes(wf)
        assert [n["status"] for n in ns.values()] == ["DONE"] * 4
        assert ns["d"]["result"] == "d"
        d = (await c.get(f"/tasks/{doc['tasks']['d']}")).json()
        assert d["payload"]["parents"] == {"b": "b", "c": "c"}
        b = (await c.get(f"/tasks/{doc['tasks']['b']}")).json()
        assert b["payload"]["parents"] == {"a": "a"}
        # As it was: at its creation every node waited; before it, it did not exist.
        then = (await c.get(f"/workflows/{wid}", params={"as_of": wf["created_at"]})).json()
        assert then["status"] == "RUNNING" and then["summary"] == {"WAITING": 4}, then
        now = (await c.get(f"/workflows/{wid}",
                           params={"as_of": "2999-01-01T00:00:00Z"})).json()
        assert now["status"] == "DONE" and nodes(now)["d"]["result"] == "d"
        r = await c.get(f"/workflows/{wid}", params={"as_of": "2000-01-01T00:00:00Z"})
        assert r.status_code == 404
        r = await c.get(f"/workflows/{wid}", params={"as_of": "yesterday"})
        assert r.status_code == 422 and "problem+json" in r.headers["content-type"]
        listed = (await c.get("/workflows", params={"status": "DONE"})).json()
        assert [w["workflow_id"] for w in listed["items"]] == [wid]
        assert listed["items"][0]["summary"] == {"DONE": 4} and "nodes" not in listed["items"][0]
        assert (await c.get("/workflows", params={"status": "FAILED"})).json()["items"] == []
        # Paging, newest first, and the name filter.
        more = [(await submit(c, [echo("x")], name="p"))["workflow_id"] for _ in range(2)]
        for m in more:
            await finished(c, m)
        seen, cursor = [], None
        while True:
            page = (await c.get("/workflows", params={"limit": 1, **(
                {"cursor": cursor} if cursor else {})})).json()
            seen += [w["workflow_id"] for w in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [more[1], more[0], wid]
        named = (await c.get("/workflows", params={"name": "p"})).json()["items"]
        assert [w["workflow_id"] for w in named] == [more[1], more[0]]
        assert (await c.get("/workflows", params={"cursor": "nope"})).status_code == 400
    ids = {uuid.UUID(t) for t in doc["tasks"].values()}
    created, terminal = await node_events(wenv, ids)
    assert created == Counter(dict.fromkeys(ids, 1)) and terminal == created
    # The live projection equals a fold of the log, and a rebuild writes the same.
    v = taskflow(wenv, "projections", "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    conn = await wenv.db()
    try:
        before = [dict(row) for row in await conn.fetch(
            "SELECT * FROM workflows ORDER BY workflow_id")]
        # Tamper with the read model: verify names each change, and the rebuild mends it.
        edited, dropped = before[0]["workflow_id"], before[1]["workflow_id"]
        await conn.execute("UPDATE workflows SET status = 'FAILED' WHERE workflow_id = $1",
                           edited)
        await conn.execute("DELETE FROM workflows WHERE workflow_id = $1", dropped)
        v = taskflow(wenv, "projections", "verify")
        assert v.returncode == 1, v.stdout + v.stderr
        named = [ln for ln in v.stdout.splitlines() if str(edited) in ln or str(dropped) in ln]
        assert len(named) == 2 and len(v.stdout.splitlines()) == 2, v.stdout
        assert any("status" in ln for ln in named), named
        rb = taskflow(wenv, "projections", "rebuild")
        assert rb.returncode == 0, rb.stderr
        assert "workflows from" in rb.stderr
        after = [dict(row) for row in await conn.fetch(
            "SELECT * FROM workflows ORDER BY workflow_id")]
    finally:
        await conn.close()
    strip = ("partition", "last_offset")
    assert [{k: v for k, v in row.items() if k not in strip} for row in after] == \
        [{k: v for k, v in row.items() if k not in strip} for row in before]
    assert len(after) == 3


@pytest.mark.parametrize("tasks,field,value", [
    ([echo("a", "c"), echo("b", "a"), echo("c", "b"), echo("x")], "cycle", None),
    ([echo("a", "a")], "cycle", ["a", "a"]),
    ([echo("a"), echo("b", "nope")], "unknown_key", "nope"),
])
async def test_bad_graph_is_422_naming_the_cycle_or_key(
        wenv: Env, tasks: list[dict[str, Any]], field: str, value: Any) -> None:
    await wenv.api()
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        r = await c.post("/workflows", json={"name": "bad", "tasks": tasks})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    doc = r.json()
    if value is not None:
        assert doc[field] == value
    if field == "cycle":
        cycle = doc["cycle"]
        assert cycle[0] == cycle[-1] and " -> ".join(cycle) in doc["detail"]
        if len(tasks) == 4:
            assert set(cycle) == {"a", "b", "c"}
    else:
        assert "nope" in doc["detail"]


async def test_size_and_key_checks_and_idempotency(wenv: Env) -> None:
    await wenv.api()
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        many = [{"key": f"n{i}", "title": "t"} for i in range(1001)]
        r = await c.post("/workflows", json={"name": "big", "tasks": many})
        assert r.status_code == 422 and "problem+json" in r.headers["content-type"]
        r = await c.post("/workflows", json={"name": "dup", "tasks": [echo("a"), echo("a")]})
        assert r.status_code == 422 and "duplicate" in r.json()["detail"]
        r = await c.post("/workflows", json={"name": "t", "tasks": [
            {"key": "a", "title": "A", "type": "no_such_type"}]})
        assert r.status_code == 422
        body = {"name": "once", "tasks": [echo("a"), echo("b", "a")]}
        h = {"Idempotency-Key": "wf-1"}
        first = await c.post("/workflows", json=body, headers=h)
        again = await c.post("/workflows", json=body, headers=h)
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json() == again.json()
        assert again.headers.get("Idempotent-Replayed") == "true"
        other = await c.post("/workflows", json={**body, "name": "changed"}, headers=h)
        assert other.status_code == 422, other.text
        thousand = [{"key": f"n{i}", "title": "t", "type": "noop"} for i in range(1000)]
        r = await c.post("/workflows", json={"name": "max", "tasks": thousand})
        assert r.status_code == 202, r.text
        assert len(r.json()["tasks"]) == 1000


# a fails at once; b runs a while; c depends on a, d on b.
def policy_graph(tmp: str) -> list[dict[str, Any]]:
    return [{"key": "a", "title": "A", "type": "fail", "max_attempts": 1},
            {"key": "b", "title": "B", "type": "sleep", "payload": {"seconds": 1.5}},
            echo("c", "a"), echo("d", "b")]


async def test_fail_fast_cancels_everything_not_started(wenv: Env) -> None:
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, policy_graph(""), on_failure="fail_fast")
        wf = await finished(c, doc["workflow_id"])
    ns = nodes(wf)
    assert wf["status"] == "FAILED"
    assert ns["a"]["status"] == "FAILED" and ns["b"]["status"] == "DONE"
    for k in "cd":
        assert ns[k]["status"] == "CANCELLED" and ns[k]["reason"] == "upstream_failed", ns[k]
    assert wf["summary"] == {"FAILED": 1, "DONE": 1, "CANCELLED": 2}
    created, _ = await node_events(wenv, {uuid.UUID(t) for t in doc["tasks"].values()})
    assert set(created) == {uuid.UUID(doc["tasks"][k]) for k in "ab"}  # c, d never ran


async def test_continue_runs_what_does_not_depend_on_the_failure(wenv: Env) -> None:
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, policy_graph(""), on_failure="continue")
        wf = await finished(c, doc["workflow_id"])
    ns = nodes(wf)
    assert wf["status"] == "FAILED"
    assert ns["c"]["status"] == "CANCELLED" and ns["c"]["reason"] == "upstream_failed"
    assert ns["d"]["status"] == "DONE" and ns["b"]["status"] == "DONE"


async def test_retry_reruns_from_the_failure_keeping_done_results(wenv: Env,
                                                                   tmp_path: Any) -> None:
    await services(wenv)
    gate = str(tmp_path / "fixed")
    tasks = [echo("a"), echo("x"),
             {"key": "b", "title": "B", "type": "gate", "payload": {"gate": gate},
              "depends_on": ["a"], "max_attempts": 1},
             echo("c", "b", "x")]
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, tasks, on_failure="continue")
        wid = doc["workflow_id"]
        wf = await finished(c, wid)
        assert wf["status"] == "FAILED"
        assert nodes(wf)["c"]["reason"] == "upstream_failed"
        before = nodes(wf)
        (tmp_path / "fixed").touch()  # the fix
        r = await c.post(f"/workflows/{wid}/retry")
        assert r.status_code == 202, r.text
        again = r.json()
        assert again["round"] == 1 and set(again["tasks"]) == {"b", "c"}
        assert again["tasks"]["b"] == str(node_task_id(uuid.UUID(wid), "b", 1))
        wf = await finished(c, wid, round=1)
        assert wf["status"] == "DONE", wf
        ns = nodes(wf)
        for k in "ax":  # kept: same task, same result
            assert ns[k]["task_id"] == before[k]["task_id"] == doc["tasks"][k]
            assert ns[k]["result"] == k and ns[k]["round"] == 0
        assert ns["b"]["result"] == {"passed": ["a"]} and ns["b"]["round"] == 1
        assert (await c.post(f"/workflows/{wid}/retry")).status_code == 409
    ids = {uuid.UUID(t) for t in [*doc["tasks"].values(), *again["tasks"].values()]}
    created, terminal = await node_events(wenv, ids)
    assert created[uuid.UUID(doc["tasks"]["a"])] == 1  # a did not run again
    assert uuid.UUID(doc["tasks"]["c"]) not in created  # skipped in round 0: no task
    assert all(n == 1 for n in created.values()) and terminal == created


async def test_fan_out_200_then_fan_in(wenv: Env) -> None:
    await services(wenv)
    fan = [echo(f"f{i}", "root") for i in range(200)]
    tasks = [echo("root"), *fan, echo("sink", *(t["key"] for t in fan))]
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, tasks)
        wf = await finished(c, doc["workflow_id"], timeout=180)
        assert wf["status"] == "DONE" and wf["summary"] == {"DONE": 202}
        sink = (await c.get(f"/tasks/{doc['tasks']['sink']}")).json()
    assert sink["payload"]["parents"] == {f"f{i}": f"f{i}" for i in range(200)}


def layered(layers: int, width: int) -> list[dict[str, Any]]:
    """``layers`` of ``width`` noop nodes; each depends on two nodes of the layer above."""
    out: list[dict[str, Any]] = []
    for layer in range(layers):
        for i in range(width):
            deps = [] if layer == 0 else sorted({f"n{layer - 1}_{i}",
                                                 f"n{layer - 1}_{(i + 1) % width}"})
            out.append({"key": f"n{layer}_{i}", "title": "n", "type": "noop",
                        "depends_on": deps})
    return out


async def test_kill_9_coordinator_mid_workflow_starts_each_node_once(wenv: Env) -> None:
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, layered(20, 25))
        wid = doc["workflow_id"]
        assert len(doc["tasks"]) == 500

        async def some_done() -> bool:
            r = await c.get(f"/workflows/{wid}")
            return r.status_code == 200 and 100 <= r.json()["summary"].get("DONE", 0) < 450

        await wait_until(some_done, timeout=120, interval=0.05, what="a fifth of the nodes")
        [coord] = [p for p in wenv.procs if p.argv[0] == "coordinator"]
        coord.kill9()
        wenv.proc("coordinator")
        wf = await finished(c, wid, timeout=240)
    assert wf["status"] == "DONE" and wf["summary"] == {"DONE": 500}
    ids = {uuid.UUID(t) for t in doc["tasks"].values()}
    created, terminal = await node_events(wenv, ids)
    assert set(created) == ids and set(terminal) == ids
    assert max(created.values()) == 1 and max(terminal.values()) == 1
    # ... and the coordinator's own record: one node_started per node.
    starts: Counter[str] = Counter()
    for r in await wenv.read_log(workflow_topic(wenv.topic)):
        ev = decode(r.value)
        if isinstance(ev.data, WorkflowNodeStarted):
            starts[ev.data.key] += 1
    assert len(starts) == 500 and max(starts.values()) == 1


async def test_cancel_stops_running_and_skips_waiting_nodes(wenv: Env) -> None:
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, [{"key": "a", "title": "A", "type": "sleep",
                                "payload": {"seconds": 60}}, echo("b", "a")])
        wid = doc["workflow_id"]

        async def a_running() -> bool:
            r = await c.get(f"/tasks/{doc['tasks']['a']}")
            return r.status_code == 200 and r.json()["status"] == "PROCESSING"

        await wait_until(a_running, timeout=60, what="node a to run")
        r = await c.post(f"/workflows/{wid}/cancel")
        assert r.status_code == 202, r.text
        wf = await finished(c, wid, timeout=60)
        assert wf["status"] == "CANCELLED", wf
        ns = nodes(wf)
        assert ns["a"]["status"] == "CANCELLED"
        assert ns["b"]["status"] == "CANCELLED" and ns["b"]["reason"] == "workflow_cancelled"
        assert (await c.post(f"/workflows/{wid}/cancel")).status_code == 409
        assert (await c.post(f"/workflows/{uuid.uuid4()}/cancel")).status_code == 404


async def test_sse_events_filter_and_workflow_stream(wenv: Env) -> None:
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        other = await c.post("/tasks", json={"title": "unrelated",
                                             "payload": {"message": "x"}})
        assert other.status_code == 202
        slow = {"type": "sleep", "payload": {"seconds": 0.3}}
        doc = await submit(c, [{"key": "a", "title": "A", **slow},
                               {"key": "b", "title": "B", "depends_on": ["a"], **slow}])
        wid = doc["workflow_id"]
        url = f"{wenv.base_url}/workflows/{wid}/stream"
        async with SSEReader(url) as live, \
                SSEReader(f"{wenv.base_url}/events?after=0&workflow_id={wid}") as feed:
            assert live.status == 200 and feed.status == 200

            async def ended() -> bool:
                return any(e.get("event") == "workflow" for e in live.events) and \
                    sum(e.get("event") == "task.done" for e in feed.events) == 2

            await wait_until(ended, timeout=60, what="both streams to see the end")
    assert live.events[0]["event"] == "snapshot"
    assert orjson.loads(live.events[0]["data"])["workflow_id"] == wid
    node_changes = [orjson.loads(e["data"]) for e in live.events if e.get("event") == "node"]
    assert {(n["key"], n["status"]) for n in node_changes} >= {("a", "DONE"), ("b", "DONE")}
    last = [e for e in live.events if e.get("event") == "workflow"][-1]
    assert orjson.loads(last["data"])["status"] == "DONE"
    seen = {orjson.loads(e["data"])["task_id"] for e in feed.events if "data" in e}
    assert seen == {doc["tasks"]["a"], doc["tasks"]["b"]}  # not the unrelated task


async def test_rebalance_between_coordinators_starts_each_node_once(wenv: Env) -> None:
    """A second coordinator joins mid-workflow, then the first leaves (SIGTERM): the group
    rebalances twice, the workflow's partition changes owner, and every node starts once."""
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, layered(12, 25))
        wid = doc["workflow_id"]

        async def done_at_least(n: int) -> bool:
            r = await c.get(f"/workflows/{wid}")
            return r.status_code == 200 and r.json()["summary"].get("DONE", 0) >= n

        await wait_until(lambda: done_at_least(50), timeout=120, interval=0.05,
                         what="50 nodes done")
        first = next(p for p in wenv.procs if p.argv[0] == "coordinator")
        wenv.proc("coordinator")
        await wait_until(lambda: done_at_least(120), timeout=120, interval=0.05,
                         what="120 nodes done")
        assert first.terminate() == 0
        wf = await finished(c, wid, timeout=240)
    assert wf["status"] == "DONE" and wf["summary"] == {"DONE": 300}
    ids = {uuid.UUID(t) for t in doc["tasks"].values()}
    created, terminal = await node_events(wenv, ids)
    assert set(created) == ids and max(created.values()) == 1
    assert set(terminal) == ids and max(terminal.values()) == 1


async def test_a_poison_record_on_the_workflow_topic_is_parked(wenv: Env) -> None:
    """An undecodable record ahead of a workflow in its partition is parked with its
    coordinates, and the workflow behind it runs."""
    wid = uuid.uuid5(WORKFLOW_IDEMPOTENCY_NS, "\npoisoned")
    topic = workflow_topic(wenv.topic)
    await ensure_topic(wenv.bootstrap, topic, 6)
    producer = EventProducer(bootstrap=wenv.bootstrap, topic=topic, timeout_s=10)
    await producer.start()
    try:
        poison = await producer.append_raw(topic, task_key(wid), b"\x00 not an event")
    finally:
        await producer.stop()
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        r = await c.post("/workflows", json={"name": "w", "tasks": [echo("a"), echo("b", "a")]},
                         headers={"Idempotency-Key": "poisoned"})
        assert r.status_code == 202 and r.json()["workflow_id"] == str(wid)
        wf = await finished(c, str(wid))
    assert wf["status"] == "DONE"
    conn = await wenv.db()
    try:
        rows = await conn.fetch("SELECT projection, topic, partition, \"offset\", error "
                                "FROM dead_letters WHERE projection = 'workflows'")
    finally:
        await conn.close()
    assert [(r["topic"], r["partition"], r["offset"]) for r in rows] == \
        [(topic, poison.partition, poison.offset)]
    assert rows[0]["error"]


async def test_parents_results_too_large_fail_the_node_not_the_coordinator(wenv: Env) -> None:
    await services(wenv)
    bigs = [{"key": k, "title": k, "type": "big", "payload": {"n": 500_000}} for k in "pq"]
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, [*bigs, echo("d", "p", "q"), echo("after", "d"), echo("free")],
                           on_failure="continue")
        wf = await finished(c, doc["workflow_id"], timeout=120)
        ns = nodes(wf)
        assert ns["d"]["status"] == "FAILED" and ns["d"]["reason"] == "parents_too_large"
        assert ns["after"]["reason"] == "upstream_failed"
        assert ns["free"]["status"] == "DONE" and wf["status"] == "FAILED"
        # The coordinator is still running workflows.
        ok = await submit(c, [echo("a"), echo("b", "a")])
        assert (await finished(c, ok["workflow_id"]))["status"] == "DONE"


async def test_the_coordinators_tasks_join_the_audit_chain(wenv: Env) -> None:
    """With ``TASKFLOW_AUDIT_CHAIN`` on, the tasks the coordinator starts and cancels are
    chained like any other, so ``taskflow audit verify`` finds no break."""
    wenv.extra["TASKFLOW_AUDIT_CHAIN"] = "1"
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, [echo("a"), {"key": "b", "title": "B", "type": "sleep",
                                           "payload": {"seconds": 60}, "depends_on": ["a"]},
                               echo("c", "b")])

        async def b_running() -> bool:
            r = await c.get(f"/tasks/{doc['tasks']['b']}")
            return r.status_code == 200 and r.json()["status"] == "PROCESSING"

        await wait_until(b_running, timeout=60, what="node b to run")
        assert (await c.post(f"/workflows/{doc['workflow_id']}/cancel")).status_code == 202
        wf = await finished(c, doc["workflow_id"], timeout=60)
    assert wf["status"] == "CANCELLED" and nodes(wf)["a"]["status"] == "DONE", wf
    docs = [orjson.loads(r.value or b"") for r in await wenv.read_log()]
    b = doc["tasks"]["b"]
    assert {(d["subject"], d["type"]) for d in docs} >= {
        (doc["tasks"]["a"], "task.created"), (b, "task.created"),
        (b, "task.cancel_requested")}  # the coordinator's own events
    assert all(len(d.get("chainhash") or "") == 64 for d in docs), docs
    ok = taskflow(wenv, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert f"{len(docs)} chained, 0 break(s)" in ok.stderr
