"""Test helpers: real service processes, an SSE reader, and log/read-model access."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import orjson

from bench.procs import service_env, spawn
from events.codec import decode
from events.db import asyncpg_dsn
from events.errors import UndecodableEvent
from events.fold import TaskState, apply
from events.log import LogReader, Record
from events.models import CloudEvent, EventType

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(pred: Callable[[], Awaitable[T]], *, timeout: float = 30,
                     interval: float = 0.1, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        value = await pred()
        last = value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


@dataclass
class Proc:
    """A TaskFlow service in its own process (``python -m cli.main <argv>``)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.popen = spawn([sys.executable, "-m", "cli.main", *self.argv], env=self.env,
                           log_path=self.log_path)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.terminate(20)
        if self.popen.poll() is None:
            self.kill9()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Env:
    """One test's private world: its own topic, database, groups and API port."""

    name: str
    database_url: str
    topic: str
    bootstrap: str
    api_port: int
    extra: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    @property
    def vars(self) -> dict[str, str]:
        return {
            **service_env(database_url=self.database_url, topic=self.topic,
                          bootstrap=self.bootstrap, api_port=self.api_port),
            "TASKFLOW_RETRY_BASE_S": "0.05",
            "TASKFLOW_RETRY_CAP_S": "0.5",
            "TASKFLOW_LOG_LEVEL": "info",
            **self.extra,
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def proc(self, kind: str, *args: str, port: int | None = None, **env: str) -> Proc:
        argv = [kind, *args]
        if kind == "api":
            argv += ["--port", str(port or self.api_port)]
        n = sum(1 for p in self.procs if p.argv[0] == kind)
        p = Proc(f"{kind}{n}", argv, {**self.vars, **env},
                 ARTIFACTS / self.name / f"{kind}{n}.log")
        self.procs.append(p)
        return p.start()

    async def api(self, port: int | None = None, **env: str) -> Proc:
        p = self.proc("api", port=port, **env)
        url = f"http://127.0.0.1:{port or self.api_port}/healthz"
        async with httpx.AsyncClient() as c:

            async def up() -> bool:
                if not p.alive():
                    raise AssertionError(f"api exited:\n{p.output()[-3000:]}")
                try:
                    return (await c.get(url)).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(up, timeout=30, what="api to answer")
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(asyncpg_dsn(self.database_url))

    async def read_log(self, topic: str | None = None) -> list[Record]:
        """Every committed record of the topic (or ``topic``), in partition then offset
        order."""
        reader = LogReader(bootstrap=self.bootstrap, topic=topic or self.topic)
        parts = await reader.start()
        try:
            bounds = await reader.bounds()
            out: list[Record] = []
            for p in parts:
                reader.seek(p, bounds[p][0])
            remaining = {p for p in parts if bounds[p][1] > bounds[p][0]}
            while remaining:
                for r in await reader.poll(timeout_ms=500):
                    if r.offset < bounds[r.partition][1]:
                        out.append(r)
                for p in list(remaining):
                    if await reader.position(p) >= bounds[p][1]:
                        remaining.discard(p)
            return sorted(out, key=lambda r: (r.partition, r.offset))
        finally:
            await reader.stop()

    async def log_events(self) -> list[tuple[Record, CloudEvent]]:
        out = []
        for r in await self.read_log():
            with contextlib.suppress(UndecodableEvent):
                out.append((r, decode(r.value)))
        return out


def new_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class SSEReader:
    """Reads an SSE stream over real HTTP into a list of parsed events."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.events: list[dict[str, str]] = []
        self.comments: list[str] = []
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.status: int | None = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as c, \
                c.stream("GET", self.url, headers=self.headers) as resp:
            self.status = resp.status_code
            self.connected.set()
            cur: dict[str, str] = {}
            async for line in resp.aiter_lines():
                if line == "":
                    if cur:
                        self.events.append(cur)
                        cur = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    k, _, v = line.partition(":")
                    v = v[1:] if v.startswith(" ") else v
                    cur[k] = cur[k] + "\n" + v if k in cur else v

    async def __aenter__(self) -> SSEReader:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self.task


async def parked_coordinates(env: Env) -> set[tuple[int, int]]:
    """(partition, offset) of every record the projector parked."""
    conn = await env.db()
    try:
        return {(r["partition"], r["offset"]) for r in await conn.fetch(
            'SELECT partition, "offset" FROM dead_letters')}
    finally:
        await conn.close()


async def assert_read_model_is_fold_of_log(env: Env) -> None:
    """The read model is the fold of the log, less the records the projector parked."""
    records = await env.read_log()
    parked = await parked_coordinates(env)
    logged = []
    for r in records:
        if (r.partition, r.offset) not in parked:
            with contextlib.suppress(UndecodableEvent):
                logged.append((r, decode(r.value)))
    states: dict[object, TaskState] = {}
    expected_changes = 0
    for _, ev in logged:
        old = states.get(ev.subject)
        new = apply(old, ev)
        expected_changes += new != old
        states[ev.subject] = new
    conn = await env.db()
    try:
        await wait_until(lambda: journal_count(conn, len(logged)), timeout=30,
                         what="journal to hold every logged event")
        journal = await conn.fetch(
            'SELECT partition, "offset", event_id::text AS eid FROM task_events '
            'ORDER BY partition, "offset"')
        tasks = {r["task_id"]: r for r in await conn.fetch("SELECT * FROM tasks")}
        changes = await conn.fetch('SELECT partition, "offset" FROM task_changes')
        cps = {r["partition"]: r["offset"] for r in await conn.fetch(
            'SELECT partition, "offset" FROM projector_offsets')}
    finally:
        await conn.close()
    assert [(r["partition"], r["offset"], r["eid"]) for r in journal] == [
        (rec.partition, rec.offset, str(ev.id)) for rec, ev in logged]
    assert len(changes) == expected_changes
    assert len({(c["partition"], c["offset"]) for c in changes}) == len(changes)
    last = {}
    for rec in records:  # a parked record moves its partition's checkpoint too
        last[rec.partition] = rec.offset
    assert {p: o for p, o in cps.items() if o >= 0} == last
    assert set(tasks) == set(states)
    for tid, st in states.items():
        row = tasks[tid]
        assert row["status"] == st.status.value
        assert row["attempt"] == st.attempt
        assert (orjson.loads(row["result"]) if row["result"] else None) == st.result
        assert row["error"] == st.error
        assert row["dead_lettered"] == st.dead_lettered
    assert all(ev.type in set(EventType) for _, ev in logged)


async def journal_count(conn: object, n: int) -> bool:
    assert isinstance(conn, asyncpg.Connection)
    return bool(await conn.fetchval("SELECT count(*) FROM task_events") == n)
