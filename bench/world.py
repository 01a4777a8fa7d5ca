"""Private TaskFlow worlds on the running local stack.

A ``Lab`` is one bench run: it migrates a template database once, and every scenario
asks it for a ``World``: a fresh topic (6 partitions) and a database cloned from the
template, plus the TaskFlow services it starts as subprocesses with ``TASKFLOW_*``
variables pointing at them. ``Lab.close`` stops the services and drops the databases
and topics it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bench.http import Connection, HTTPError
from bench.procs import (
    BenchError,
    Proc,
    cpu_seconds,
    free_port,
    group_cpu_seconds,
    python,
    service_env,
    tree_cpu_seconds,
)
from events import chain, constants, crypto
from events.db import asyncpg_dsn, drop_database, ensure_database, migrate
from events.log import EventProducer, dead_letter_topic, delete_topics, ensure_topic
from events.models import TaskCreated, TaskDone, TaskProcessing, new_event
from events.settings import Settings, get_settings

TEMPLATE = "taskflow_bench_template"
PARTITIONS = 6
TERMINAL_SQL = "SELECT count(*) FROM tasks WHERE status IN ('DONE', 'FAILED', 'CANCELLED')"


def db_url(base: str, name: str) -> str:
    return make_url(base).set(database=name).render_as_string(hide_password=False)


async def poll_until(pred: Callable[[], Awaitable[bool]], *, timeout: float, what: str,
                     interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class World:
    """One scenario's topic, database and services."""

    name: str
    topic: str
    database_url: str
    bootstrap: str
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    kafka_pid: int | None = None  # the local broker, whose CPU counts too
    pg_pid: int | None = None  # the local postmaster: its backends count too

    @property
    def env(self) -> dict[str, str]:
        return {
            **service_env(database_url=self.database_url, topic=self.topic,
                          bootstrap=self.bootstrap, api_port=self.api_port),
            "TASKFLOW_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
            **self.extra_env,
        }

    def start(self, kind: str, *args: str) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith(f"{self.name}-{kind}"))
        p = Proc(f"{self.name}-{kind}{n}", python("-m", "cli.main", kind, *args), self.env,
                 self.log_dir).start()
        self.procs.append(p)
        return p

    async def start_api(self, *, workers: int = 1) -> Proc:
        p = self.start("api", "--port", str(self.api_port), "--workers", str(workers))

        async def up() -> bool:
            if not p.alive():
                raise BenchError(f"api exited; see {p.log_path}:\n{p.tail()}")
            conn = Connection("127.0.0.1", self.api_port)
            try:
                return (await conn.request("GET", "/healthz")).status == 200
            except (OSError, HTTPError):
                return False
            finally:
                await conn.close()

        await poll_until(up, timeout=60, what=f"the API on port {self.api_port}", interval=0.1)
        return p

    async def restart_api(self, old: Proc, *, workers: int = 1) -> Proc:
        """A fresh API process on the same port in place of ``old``."""
        old.stop()
        return await self.start_api(workers=workers)

    async def start_all(self, *, api_workers: int = 1, workers: int = 1,
                        projectors: int = 1) -> None:
        """API, worker(s) and projector(s); returns once a probe task is terminal."""
        for _ in range(projectors):
            self.start("projector")
        for _ in range(workers):
            self.start("worker")
        await self.start_api(workers=api_workers)
        conn = Connection("127.0.0.1", self.api_port)
        try:
            resp = await conn.request("POST", "/tasks",
                                      b'{"title": "warm-up", "type": "noop", "payload": {}}')
        finally:
            await conn.close()
        if resp.status != 202:
            raise BenchError(f"warm-up POST /tasks answered {resp.status}: {resp.body[:300]!r}")
        db = await self.connect()
        try:
            async def probe_done() -> bool:
                for p in self.procs:
                    if not p.alive():
                        raise BenchError(f"{p.name} exited; see {p.log_path}:\n{p.tail()}")
                return int(await db.fetchval(TERMINAL_SQL)) >= 1

            await poll_until(probe_done, timeout=90, what="the warm-up task", interval=0.1)
        finally:
            await db.close()

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each running service, and by this process.

        A service is its whole process group (each starts its own session), so an API
        run as several uvicorn processes counts them all.
        """
        out = {p.name.removeprefix(self.name + "-"): group_cpu_seconds(p.pid)
               for p in self.procs if p.alive()}
        out["bench-client"] = time.process_time()
        if self.kafka_pid is not None:
            out["kafka"] = cpu_seconds(self.kafka_pid)
        if self.pg_pid is not None:
            out["postgres"] = tree_cpu_seconds(self.pg_pid)
        return out

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float],
              seconds: float) -> dict[str, float]:
        """Average cores each process used between two ``cpu()`` snapshots."""
        return {k: round((after[k] - v) / seconds, 2) for k, v in before.items() if k in after}

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(asyncpg_dsn(self.database_url))

    async def applied(self, db: asyncpg.Connection) -> int:
        """Events the live projection has applied: the sum of checkpoint + 1."""
        v = await db.fetchval(
            'SELECT coalesce(sum("offset" + 1), 0) FROM projector_offsets '
            "WHERE projection = $1 AND topic = $2", constants.PROJECTION, self.topic)
        return int(v)


@dataclass
class Lab:
    """One bench run on the local stack: the template database and every world."""

    settings: Settings
    run_id: str
    log_dir: Path
    worlds: list[World] = field(default_factory=list)

    async def prepare(self) -> None:
        from events.log import ping

        await ping(self.settings.kafka_bootstrap, timeout_s=10)
        url = db_url(self.settings.database_url, TEMPLATE)
        await drop_database(url)
        await ensure_database(url)
        await asyncio.to_thread(migrate, url)

    async def world(self, scenario: str, *, partitions: int = PARTITIONS,
                    **extra_env: str) -> World:
        name = f"bench_{self.run_id}_{scenario}"
        url = db_url(self.settings.database_url, name)
        await ensure_database(url, template=TEMPLATE)
        topic = f"bench.{self.run_id}.{scenario}"
        await ensure_topic(self.settings.kafka_bootstrap, topic, partitions)
        from cli.stack import Stack

        stack = Stack(self.settings)  # the local broker and server, whose CPU counts too
        w = World(name=name, topic=topic, database_url=url,
                  bootstrap=self.settings.kafka_bootstrap, log_dir=self.log_dir,
                  extra_env=dict(extra_env), kafka_pid=stack.kafka_pid(),
                  pg_pid=stack.pg_pid())
        self.worlds.append(w)
        return w

    async def close(self, *, keep: bool = False) -> None:
        for w in self.worlds:
            w.stop()
        if keep:
            return
        for w in self.worlds:
            with contextlib.suppress(Exception):
                await drop_database(w.database_url)
        with contextlib.suppress(Exception):
            await drop_database(db_url(self.settings.database_url, TEMPLATE))
        # The worker creates each topic's dead-letter topic when it starts.
        await delete_topics(self.settings.kafka_bootstrap,
                            [t for w in self.worlds for t in (w.topic, dead_letter_topic(w.topic))])


async def fill_topic(bootstrap: str, topic: str, tasks: int,
                     progress: Callable[[int], object], chunk: int = 2000) -> int:
    """Append ``tasks`` complete no-op histories (created, processing, done) to ``topic``.

    Returns the number of events appended. This is what the projector will have to fold.
    """
    producer = EventProducer(bootstrap=bootstrap, topic=topic, timeout_s=60)
    await producer.start()
    chain.configure(get_settings())
    sealing = bool(get_settings().encryption_key)  # as the API and worker would seal
    worker = constants.WORKER_SOURCE_PREFIX + "bench"
    created = TaskCreated(title="bench", type="noop", payload={})
    processing = TaskProcessing(worker_id="bench")
    done = TaskDone(result=None)
    sent = 0
    try:
        pending: list[asyncio.Task[object]] = []
        for start in range(0, tasks, chunk):
            evs = []
            for _ in range(min(chunk, tasks - start)):
                tid = uuid.uuid4()
                if sealing:
                    key = crypto.new_key()
                    created = TaskCreated(title="bench", type="noop", payload=crypto.seal_value(
                        key, tid, "payload", {}))
                    done = TaskDone(result=crypto.seal_value(key, tid, "result", None))
                # With TASKFLOW_AUDIT_CHAIN set, the histories are chained as the
                # services would chain them (events.chain; a no-op otherwise).
                c = chain.seal(new_event(created, task_id=tid, source=constants.API_SOURCE))
                p = chain.seal(new_event(processing, task_id=tid, source=worker, attempt=1),
                               c.chainhash or chain.GENESIS)
                evs += [c, p, chain.seal(new_event(done, task_id=tid, source=worker, attempt=1),
                                         p.chainhash or chain.GENESIS)]
            # Two chunks in flight: encoding the next one overlaps the broker's acks.
            pending.append(asyncio.create_task(producer.append(evs)))
            if len(pending) > 1:
                await pending.pop(0)
            sent += len(evs)
            progress(len(evs))
        for t in pending:
            await t
    finally:
        await producer.stop()
    return sent
