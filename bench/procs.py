"""Child processes the bench starts, and stops again by PID (the tests start theirs
with ``spawn`` and ``service_env`` too).

Every child runs in its own session, so its PID is also its process-group id: a peer
worker that forks its pool (Celery prefork, Dramatiq) is stopped with SIGTERM to the
parent first, and only if that does not work within the grace period, SIGKILL to the
group that we created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "bench" / "logs"  # per-run service logs (ignored by git)


class BenchError(RuntimeError):
    """Something the bench needs did not come up; the message says what and where."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for(pred: Callable[[], bool], *, timeout: float, what: str,
             alive: Callable[[], bool] | None = None, interval: float = 0.05) -> None:
    """Poll ``pred`` until it is true; fail early if ``alive`` says the child died."""
    deadline = time.monotonic() + timeout
    while not pred():
        if alive is not None and not alive():
            raise BenchError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def spawn(argv: list[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the repository root in a session of its own, with ``env`` over
    this process's environment, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def service_env(*, database_url: str, topic: str, bootstrap: str,
                api_port: int) -> dict[str, str]:
    """The ``TASKFLOW_*`` variables that point a service at one topic and database."""
    return {
        "TASKFLOW_DATABASE_URL": database_url,
        "TASKFLOW_TOPIC": topic,
        "TASKFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "TASKFLOW_WORKER_GROUP": f"{topic}.worker",
        "TASKFLOW_API_PORT": str(api_port),
        # Tests and benchmarks run on 127.0.0.1, open on purpose (the default is closed).
        "TASKFLOW_AUTH": "off",
    }


@dataclass
class Proc:
    """One child process with its log file."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = LOGS
    popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> Proc:
        self.popen = spawn(self.argv, env=self.env, log_path=self.log_path)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        # The group is ours (start_new_session): this reaps a pool a parent left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def venv_script(name: str) -> str:
    """A console script installed next to the interpreter (celery, dramatiq)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise BenchError(f"{name} is not installed: run `make bench` (pip install -e '.[bench]')")
    return found


@dataclass
class Redis:
    """A private ``redis-server``: no persistence, its own free port."""

    port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> Redis:
        exe = shutil.which("redis-server")
        if exe is None:
            raise BenchError("redis-server is not installed: run `make bench` "
                             "(apt-get install redis-server)")
        self.proc = Proc("redis", [exe, "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--daemonize", "no"],
                         log_dir=log_dir).start()
        wait_for(lambda: port_open(self.port), timeout=15, what="redis-server",
                 alive=self.proc.alive)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields after the command name) of every live process in /proc/*/stat."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited meanwhile


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every live process in a process group (a worker and its pool)."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(f[11]) + int(f[12])) / tick for _, f in _proc_stats() if int(f[2]) == pgid)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process, its live children and the children it has reaped.

    Postgres: each backend is a child of the postmaster in its own process group.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p, f in _proc_stats():
        if p == pid:
            total += sum(int(x) for x in f[11:15]) / tick  # own + reaped children
        elif int(f[1]) == pid:
            total += (int(f[11]) + int(f[12])) / tick
    return total


def meminfo_kib(field: str) -> int | None:
    """One field of /proc/meminfo (``MemTotal``, ``Dirty``, ...), in KiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
