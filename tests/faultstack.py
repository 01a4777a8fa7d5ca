"""A private Kafka and Postgres for tests that stop, restart or stall them.

The shared stack on the default ports serves every other test, so a fault test never
touches it. ``private_stack`` (a session fixture; import it into a test module, or into
a conftest, to use it) starts a second ``taskflow stack up`` in a temporary directory on
free ports, migrates its database, and hands back a ``FaultStack``:

    from tests.faultstack import FaultStack, private_stack  # noqa: F401 (the fixture)

    def test_x(private_stack: FaultStack) -> None:
        private_stack.env           # TASKFLOW_* variables pointing at the private stack
        private_stack.restart_postgres()
        private_stack.restart_kafka()
        with private_stack.kafka_stalled():  # SIGSTOP ... SIGCONT of the broker's JVM
            ...

Every service a test starts against it gets ``private_stack.env`` (plus its own topic,
group or API port if it wants them). The broker's libraries are linked from the shared
stack's ``.stack/kafka/libs`` (Maven is not asked again); the stack is stopped and its
directory removed at the end of the pytest run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.stack import ROOT, Stack
from events.settings import Settings
from tests.helpers import free_port

TASKFLOW = str(Path(sys.executable).parent / "taskflow")


@dataclass
class FaultStack:
    """A private stack: its settings, its environment, and ways to hurt it."""

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

    def taskflow(self, *argv: str, timeout: float = 180, check: bool = True,
                 extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``taskflow ARGV`` against this stack (``extra_env`` on top, e.g. a test's
        own topic and database); its output is returned."""
        return subprocess.run([TASKFLOW, *argv], env={**os.environ, **self.env,
                                                      **(extra_env or {})}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, check=check,
                              stdin=subprocess.DEVNULL)

    def kafka_pid(self) -> int:
        pid = self.stack.kafka_pid()
        assert pid is not None, "the private broker is not running"
        return pid

    def stop_kafka(self) -> None:
        self.stack.kafka_down()

    def start_kafka(self) -> None:
        # Through the command: in this process the broker's Popen and log file would be
        # left open (a ResourceWarning, an error under the tests' warning filter).
        self.taskflow("stack", "up")

    def restart_kafka(self, down_s: float = 0.0) -> None:
        """Stop the broker's JVM (SIGTERM, by its pid), wait ``down_s``, start it again."""
        self.stop_kafka()
        time.sleep(down_s)
        self.start_kafka()

    def stop_postgres(self) -> None:
        self.stack.pg_down()

    def start_postgres(self) -> None:
        self.taskflow("stack", "up")

    def restart_postgres(self, down_s: float = 0.0) -> None:
        """``pg_ctl stop -m fast`` (every connection is cut), wait ``down_s``, start again."""
        self.stop_postgres()
        time.sleep(down_s)
        self.start_postgres()

    @contextlib.contextmanager
    def kafka_stalled(self) -> Iterator[int]:
        """The broker frozen with SIGSTOP for the block, thawed with SIGCONT after it."""
        pid = self.kafka_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            os.kill(pid, signal.SIGCONT)


def start_private_stack() -> FaultStack:
    """``taskflow stack up`` and ``taskflow migrate`` in a new directory on free ports."""
    # Under /tmp and traversable: Postgres runs as its own user and must reach its data.
    d = Path(tempfile.mkdtemp(prefix="taskflow-faults-", dir="/tmp"))
    d.chmod(0o755)
    shared_libs = Stack(Settings()).kafka_dir / "libs"
    if shared_libs.exists():
        (d / "kafka").mkdir()
        (d / "kafka" / "libs").symlink_to(shared_libs)
    env = {
        "TASKFLOW_STACK_DIR": str(d),
        "TASKFLOW_KAFKA_PORT": str(free_port()),
        "TASKFLOW_KAFKA_CONTROLLER_PORT": str(free_port()),
        "TASKFLOW_PG_PORT": str(free_port()),
    }
    fs = FaultStack(dir=d, env=env)
    try:
        fs.taskflow("stack", "up")
        fs.taskflow("migrate")
    except BaseException:
        stop_private_stack(fs)
        raise
    return fs


def stop_private_stack(fs: FaultStack) -> None:
    """Stop the private broker and cluster (both even if stalled) and remove their files."""
    with contextlib.suppress(Exception):
        pid = fs.stack.kafka_pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
    with contextlib.suppress(Exception):
        fs.stack.kafka_down()
    with contextlib.suppress(Exception):
        fs.stack.pg_down()
    shutil.rmtree(fs.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def private_stack() -> Iterator[FaultStack]:
    """A private Kafka and Postgres for the whole pytest run (see the module docstring)."""
    fs = start_private_stack()
    try:
        yield fs
    finally:
        stop_private_stack(fs)


BANNER = re.compile(r"taskflow: pids ((?:\w+=\d+ ?)+)")
SERVICES = ("projector", "worker", "api", "scheduler", "notifier", "coordinator")


def run_pids(output: str) -> dict[str, int]:
    """The pids ``taskflow run`` printed, by service; it must have started every one."""
    m = BANNER.search(output)
    assert m, output[-2000:]
    pids = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    assert tuple(pids) == SERVICES, pids
    return pids
