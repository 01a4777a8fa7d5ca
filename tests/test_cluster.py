"""A three-broker cluster that loses a broker while tasks flow.

The module starts its own ``taskflow stack up --brokers 3`` (three combined KRaft
broker+controller nodes on free ports, and a Postgres, in a directory of its own), runs
an API, a worker and a projector against it, and ``kill -9``s the broker that leads the
most partitions of the event topic while tasks are submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack import ROOT, Stack
from events.log import describe_partitions
from events.models import EventType
from events.settings import Settings
from tests.helpers import Env, free_port, new_name, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]

TASKFLOW = str(Path(sys.executable).parent / "taskflow")
TERMINAL = {EventType.DONE, EventType.FAILED, EventType.CANCELLED, EventType.DEAD_LETTERED}


@dataclass
class Cluster:
    dir: Path
    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        fields: dict[str, Any] = {k.removeprefix("TASKFLOW_").lower(): v
                                  for k, v in self.env.items() if k.startswith("TASKFLOW_")}
        return Settings(**fields)

    @property
    def stack(self) -> Stack:
        return Stack(self.settings)

    def taskflow(self, *argv: str, check: bool = True, timeout: float = 240,
                 extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TASKFLOW, *argv], env={**os.environ, **self.env, **(extra or {})},
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              check=check, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    d = Path(tempfile.mkdtemp(prefix="taskflow-cluster-", dir="/tmp"))
    d.chmod(0o755)  # Postgres runs as its own user and must reach its data
    shared_libs = Stack(Settings()).kafka_dir / "libs"
    if shared_libs.exists():
        (d / "kafka").mkdir()
        (d / "kafka" / "libs").symlink_to(shared_libs)
    ports = [free_port() for _ in range(6)]
    env = {
        "TASKFLOW_STACK_DIR": str(d),
        "TASKFLOW_STACK_BROKERS": "3",
        "TASKFLOW_KAFKA_PORTS": ",".join(map(str, ports[:3])),
        "TASKFLOW_KAFKA_CONTROLLER_PORTS": ",".join(map(str, ports[3:])),
        "TASKFLOW_PG_PORT": str(free_port()),
        "TASKFLOW_REPLICATION_FACTOR": "3",
        "TASKFLOW_MIN_INSYNC_REPLICAS": "2",
    }
    c = Cluster(d, env)
    try:
        c.taskflow("stack", "up", "--brokers", "3")
        c.taskflow("migrate")
        yield c
    finally:
        with contextlib.suppress(Exception):
            c.stack.kafka_down()
        with contextlib.suppress(Exception):
            c.stack.pg_down()
        shutil.rmtree(d, ignore_errors=True)


async def test_stack_up_makes_a_replicated_cluster(cluster: Cluster) -> None:
    s = cluster.settings
    assert s.kafka_bootstrap.count(",") == 2  # every node is a bootstrap server
    assert all(pid is not None for pid in cluster.stack.kafka_pids().values())
    parts = await describe_partitions(s.kafka_bootstrap, s.topic)
    assert len(parts) == s.partitions
    assert {len(p["replicas"]) for p in parts.values()} == {3}
    assert len({p["leader"] for p in parts.values()}) == 3  # leadership is spread
    for node in cluster.stack.nodes:
        conf = (node.dir / "server.properties").read_text()
        assert "min.insync.replicas=2" in conf and "transaction.state.log.min.isr=2" in conf
    status = cluster.taskflow("stack", "status").stdout
    assert status.count(" up ") >= 4, status  # three nodes and Postgres


async def test_losing_the_busiest_broker(cluster: Cluster) -> None:
    s = cluster.settings
    env = Env(name=new_name("cluster_"), database_url=s.database_url, topic=s.topic,
              bootstrap=s.kafka_bootstrap, api_port=free_port(),
              extra={**cluster.env, "TASKFLOW_PRODUCE_TIMEOUT_S": "3"})
    try:
        await env.api()
        env.proc("worker")
        env.proc("projector")
        await _lose_a_broker_while_tasks_flow(cluster, env)
    finally:
        env.stop_all()


async def _lose_a_broker_while_tasks_flow(cluster: Cluster, env: Env) -> None:
    s = cluster.settings
    statuses: list[tuple[float, int]] = []  # (monotonic time, HTTP status)
    accepted: list[uuid.UUID] = []
    stop = asyncio.Event()

    async def submitter(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            r = await c.post(f"{env.base_url}/tasks",
                             json={"title": "flow", "payload": {"message": "hi"}})
            statuses.append((time.monotonic(), r.status_code))
            if r.status_code == 202:
                accepted.append(uuid.UUID(r.json()["task_id"]))
            elif r.status_code == 503:
                assert r.headers["content-type"].startswith("application/problem+json")
                await asyncio.sleep(0.1)

    async with httpx.AsyncClient(timeout=30) as c:
        tasks = [asyncio.create_task(submitter(c)) for _ in range(4)]
        try:
            await wait_until(lambda: _n(accepted, 50), timeout=60, what="tasks to flow")
            parts = await describe_partitions(s.kafka_bootstrap, s.topic)
            leaders = Counter(p["leader"] for p in parts.values())
            victim, led = leaders.most_common(1)[0]
            pid = cluster.stack.kafka_pids()[victim]
            assert pid is not None
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            async def recovered() -> bool:  # 202s again, for a while, after the kill
                after = [st for t, st in statuses if t > killed_at]
                return len(after) > 20 and after[-20:] == [202] * 20

            await wait_until(recovered, timeout=90, interval=0.5,
                             what="submits to be accepted again")
            # The cluster elected new leaders without the dead broker.
            parts = await describe_partitions(s.kafka_bootstrap, s.topic)
            assert victim not in {p["leader"] for p in parts.values()}
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    codes = Counter(st for _, st in statuses)
    first_503 = min((t for t, st in statuses if st == 503), default=killed_at)
    print(f"broker {victim} (leader of {led} partitions) killed: {dict(codes)}; 503s from "
          f"{first_503 - killed_at:.1f} s to "
          f"{max((t for t, st in statuses if st == 503), default=killed_at) - killed_at:.1f} s "
          "after the kill")
    assert set(codes) <= {202, 503}, codes  # never a 500
    unavailable = [t for t, st in statuses if st == 503]
    assert all(t > killed_at for t in unavailable)  # only while leaders were elected
    last_503 = max(unavailable, default=killed_at)
    assert [st for t, st in statuses if t > last_503] and \
        {st for t, st in statuses if t > last_503} == {202}

    # Every accepted task ends, once.
    conn = await env.db()
    try:
        async def all_ended() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE task_id = ANY($1::uuid[]) "
                "AND status IN ('DONE', 'FAILED', 'CANCELLED')", accepted)
            return bool(n == len(accepted))

        await wait_until(all_ended, timeout=120, interval=0.5, what="every task to end")
    finally:
        await conn.close()
    terminal: Counter[uuid.UUID] = Counter()
    created: set[uuid.UUID] = set()
    for _, ev in await env.log_events():
        task_id = uuid.UUID(str(ev.subject))
        if ev.type == EventType.CREATED:
            created.add(task_id)
        elif ev.type in TERMINAL:
            terminal[task_id] += 1
    assert set(accepted) <= created
    assert {t: n for t, n in terminal.items() if n != 1} == {}
    assert set(terminal) == created  # a 503'd submit that did land also ran, once

    r = cluster.taskflow("projections", "verify", check=False, extra=_service_env(env))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 difference(s)" in r.stderr

    # The broker comes back and catches up: every replica in sync again.
    cluster.taskflow("stack", "up", "--brokers", "3")

    async def rejoined() -> bool:
        parts = await describe_partitions(s.kafka_bootstrap, s.topic)
        return all(len(p["isr"]) == 3 for p in parts.values())

    await wait_until(rejoined, timeout=120, interval=1, what="the broker to rejoin")
    assert leaders[victim] == led and led >= 1


async def _n(items: list[Any], n: int) -> bool:
    return len(items) >= n


def _service_env(env: Env) -> dict[str, str]:
    return {k: v for k, v in env.vars.items() if k.startswith("TASKFLOW_")}
