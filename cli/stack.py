"""The local stack: a KRaft Kafka (one node, or ``--brokers N``) and a private PostgreSQL
cluster under .stack/.

Kafka comes from Maven Central (``stack/pom.xml``) and runs on the machine's Java 17.
PostgreSQL comes from Debian's ``postgresql`` package and runs as the ``postgres`` user
when we are root, because initdb refuses root. Every step is idempotent: a second
``up`` finds what is there and only starts what is not running.
"""

from __future__ import annotations

import base64
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from events.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "stack" / "pom.xml"
LOG4J = ROOT / "stack" / "log4j2.properties"


class StackError(RuntimeError):
    pass


# A fixed heap, as Kafka's own start script (kafka-run-class.sh) sets it: a heap that
# starts small grows through slow young collections. The collector is ZGC, not the
# script's G1: even with a short pause goal, G1 stopped the broker every few seconds, and
# the tasks in flight through it then made the bench's latency tail (the slow ones came
# in bursts at the times gc.log gives). ZGC collects while the broker runs, for the same
# CPU; the figures are in docs/benchmarks.md. Each collection is logged to
# .stack/kafka/gc.log.
KAFKA_JVM = ("-Xms1g", "-Xmx1g", "-XX:+UseZGC", "-Djava.awt.headless=true")


def new_cluster_id() -> str:
    """A random KRaft cluster id, as Kafka's own ``Uuid.randomUuid`` makes them.

    Like Kafka, never one that starts with ``-``: the storage tool would read it as an
    option (one id in 64 did, and formatting failed).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _say(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _alive(pidfile: Path) -> int | None:
    """The pid on the pid file's first line, if that process runs."""
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except PermissionError:
        return pid  # it runs, as another user (the postmaster, when not root)
    except (OSError, ValueError, IndexError):
        return None
    return pid


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node (broker and controller) of the local stack."""

    node_id: int
    dir: Path
    port: int
    controller_port: int

    @property
    def pidfile(self) -> Path:
        return self.dir / "kafka.pid"


@dataclass(frozen=True)
class Stack:
    settings: Settings
    brokers: int = 0  # 0: settings.stack_brokers

    @property
    def dir(self) -> Path:
        return Path(self.settings.stack_dir) if self.settings.stack_dir else ROOT / ".stack"

    # ---------------------------------------------------------------- kafka
    @property
    def kafka_dir(self) -> Path:
        return self.dir / "kafka"

    @property
    def nodes(self) -> list[KafkaNode]:
        """Node 1 lives in kafka/ (as the single node always has), node N in kafka-N/."""
        n = self.brokers or self.settings.stack_brokers
        return [KafkaNode(i, self.kafka_dir if i == 1 else self.dir / f"kafka-{i}", port, ctl)
                for i, (port, ctl) in enumerate(self.settings.stack_node_ports(n), start=1)]

    def _kafka_libs(self) -> Path:
        libs = self.kafka_dir / "libs"
        stamp = libs / ".resolved"
        pom_sig = POM.read_bytes()
        if stamp.exists() and stamp.read_bytes() == pom_sig:
            return libs
        _say("resolving Apache Kafka from Maven Central (stack/pom.xml)")
        if libs.exists():
            shutil.rmtree(libs)
        libs.mkdir(parents=True)
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
            check=True, stdin=subprocess.DEVNULL,
        )
        stamp.write_bytes(pom_sig)
        return libs

    def _node_config(self, node: KafkaNode, nodes: list[KafkaNode]) -> str:
        s = self.settings
        # The internal topics (group offsets, transactions) are replicated like the event
        # topic: on three nodes, 3 copies of which 2 must hold a write.
        rf = min(3, len(nodes))
        isr = max(1, rf - 1)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"controller.quorum.voters={voters}",
            f"log.dirs={node.dir / 'data'}",
            f"num.partitions={s.partitions}",
            "auto.create.topics.enable=false",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            "transaction.state.log.num.partitions=10",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "group.initial.rebalance.delay.ms=0",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms=10000",
            "transaction.max.timeout.ms=900000",
            "",
        ])

    def _cluster_id(self, nodes: list[KafkaNode]) -> str:
        """The id the formatted nodes already share, or a new one."""
        for n in nodes:
            meta = n.dir / "data" / "meta.properties"
            if meta.exists():
                for line in meta.read_text().splitlines():
                    if line.startswith("cluster.id="):
                        return line.split("=", 1)[1].strip()
        return new_cluster_id()

    def kafka_up(self) -> None:
        """Start every node that is not running, then wait until each has its port open."""
        nodes = self.nodes
        libs = self._kafka_libs()
        cp = f"{libs}/*"
        cluster_id = self._cluster_id(nodes)
        started: list[tuple[KafkaNode, subprocess.Popen[bytes]]] = []
        for node in nodes:
            if _alive(node.pidfile) and _port_open(node.port):
                _say(f"kafka node {node.node_id} already running on 127.0.0.1:{node.port}")
                continue
            node.dir.mkdir(parents=True, exist_ok=True)
            data = node.dir / "data"
            conf = node.dir / "server.properties"
            conf.write_text(self._node_config(node, nodes))
            if not (data / "meta.properties").exists():
                _say(f"formatting KRaft storage in {data}")
                subprocess.run(
                    ["java", "-cp", cp, f"-Dlog4j2.configurationFile={LOG4J}",
                     "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(conf)],
                    check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                )
            if _port_open(node.port):
                var = "TASKFLOW_KAFKA_PORT" if len(nodes) == 1 else "TASKFLOW_KAFKA_PORTS"
                raise StackError(f"port {node.port} is taken by another process; set {var}")
            # Several nodes share the machine: each gets a smaller heap than the single one.
            heap = KAFKA_JVM if len(nodes) == 1 else ("-Xms512m", "-Xmx512m", *KAFKA_JVM[2:])
            with open(node.dir / "kafka.log", "ab") as log:
                proc = subprocess.Popen(
                    ["java", *heap, f"-Xlog:gc:file={node.dir / 'gc.log'}:time,uptime:"
                     "filecount=2,filesize=10m", f"-Dlog4j2.configurationFile={LOG4J}",
                     "-cp", cp, "kafka.Kafka", str(conf)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            node.pidfile.write_text(str(proc.pid))
            _say(f"starting kafka node {node.node_id} (pid {proc.pid}) on "
                 f"127.0.0.1:{node.port}")
            started.append((node, proc))
        # A node of a cluster opens its port only once the quorum has a leader, so the
        # nodes are all started before any is waited for.
        deadline = time.monotonic() + 90
        for node, proc in started:
            log_path = node.dir / "kafka.log"
            while not _port_open(node.port):
                if proc.poll() is not None:
                    raise StackError(f"kafka exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise StackError(f"kafka did not open port {node.port}; see {log_path}")
                time.sleep(0.2)

    # ------------------------------------------------------------- postgres
    @property
    def pg_dir(self) -> Path:
        return self.dir / "pg"

    @staticmethod
    def _pg_bin() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise StackError("PostgreSQL is not installed: run `make install` "
                             "(apt-get install postgresql)")
        return Path(found[-1]).parent

    def _as_pg(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def pg_up(self) -> None:
        s = self.settings
        bin_dir = self._pg_bin()
        pd = self.pg_dir
        data = pd / "data"
        run = pd / "run"
        if os.geteuid() == 0:
            pd.mkdir(parents=True, exist_ok=True)
            shutil.chown(pd, "postgres", "postgres")
            probe = subprocess.run(self._as_pg(["test", "-w", str(pd)]), check=False)
            if probe.returncode != 0:
                raise StackError(f"user postgres cannot write {pd}; make its parents traversable")
        pd.mkdir(parents=True, exist_ok=True)
        if not (data / "PG_VERSION").exists():
            _say(f"initdb {data}")
            pw = pd / "pwfile"
            pw.write_text("taskflow\n")
            if os.geteuid() == 0:
                shutil.chown(pw, "postgres", "postgres")
            subprocess.run(
                self._as_pg([str(bin_dir / "initdb"), "-D", str(data), "-U", "taskflow",
                             f"--pwfile={pw}", "-A", "scram-sha-256", "-E", "UTF8",
                             "--locale=C.UTF-8", "--no-instructions"]),
                check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
            pw.unlink()
        run.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(run, "postgres", "postgres")
        status = subprocess.run(
            self._as_pg([str(bin_dir / "pg_ctl"), "-D", str(data), "status"]),
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if status.returncode == 0:
            _say(f"postgres already running on 127.0.0.1:{s.pg_port}")
            return
        if _port_open(s.pg_port):
            raise StackError(f"port {s.pg_port} is taken by another process; set TASKFLOW_PG_PORT")
        opts = (f"-p {s.pg_port} -k {run} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                "-c shared_buffers=256MB -c synchronous_commit=on -c wal_level=replica")
        _say(f"starting postgres on 127.0.0.1:{s.pg_port}")
        subprocess.run(
            self._as_pg([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(pd / "postgres.log"),
                         "-o", opts, "-w", "-t", "60", "start"]),
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )

    def pg_down(self) -> None:
        data = self.pg_dir / "data"
        if not (data / "postmaster.pid").exists():
            return
        subprocess.run(
            self._as_pg([str(self._pg_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                         "stop"]),
            check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        _say("postgres stopped")

    def _all_nodes(self) -> list[KafkaNode]:
        """The nodes configured, and any others this directory holds (kafka-N/)."""
        nodes = {n.dir: n for n in self.nodes}
        for d in sorted(self.dir.glob("kafka-*")):
            if d not in nodes and d.name.removeprefix("kafka-").isdigit():
                nodes[d] = KafkaNode(int(d.name.removeprefix("kafka-")), d, 0, 0)
        return list(nodes.values())

    def kafka_down(self) -> None:
        for node in self._all_nodes():
            self.kafka_node_down(node)

    def kafka_node_down(self, node: KafkaNode) -> None:
        pid = _alive(node.pidfile)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(node.pidfile) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(node.pidfile):
            os.kill(pid, signal.SIGKILL)
        node.pidfile.unlink(missing_ok=True)
        _say(f"kafka node {node.node_id} stopped" if node.node_id > 1 else "kafka stopped")

    def kafka_pid(self) -> int | None:
        """The broker this stack started (node 1), if it runs."""
        return _alive(self.kafka_dir / "kafka.pid")

    def kafka_pids(self) -> dict[int, int | None]:
        """Each node's pid, if it runs, by node id (the broker id)."""
        return {n.node_id: _alive(n.pidfile) for n in self.nodes}

    def pg_pid(self) -> int | None:
        """The postmaster of this stack's cluster, if it runs."""
        return _alive(self.pg_dir / "data" / "postmaster.pid")

    def status(self) -> dict[str, str]:
        s = self.settings
        out = {}
        for n in self.nodes:
            pid = _alive(n.pidfile)
            ok = pid is not None and _port_open(n.port)
            key = "kafka" if len(self.nodes) == 1 else f"kafka-{n.node_id}"
            out[key] = (f"{'up' if ok else 'down'} 127.0.0.1:{n.port}"
                        + (f" pid {pid}" if pid else ""))
        pg_ok = _port_open(s.pg_port) and (self.pg_dir / "data" / "postmaster.pid").exists()
        out["postgres"] = f"{'up' if pg_ok else 'down'} 127.0.0.1:{s.pg_port}"
        out["dir"] = str(self.dir)
        return out
