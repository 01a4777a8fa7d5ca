"""A private Kafka broker with SCRAM listeners, for the transport-security tests.

One KRaft node on free ports, from the same Kafka jars as the local stack: a
``SASL_PLAINTEXT`` and a ``SASL_SSL`` listener, both SCRAM-SHA-256 and SCRAM-SHA-512, with
the users made when its storage is formatted. Its TLS certificate is self-signed for
127.0.0.1 (keytool); ``ca`` is that certificate in PEM, what a client trusts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.stack import LOG4J, Stack, new_cluster_id
from events.settings import Settings
from tests.helpers import free_port

USER, PASSWORD = "taskflow", "tf-scram-secret"
ADMIN, ADMIN_PASSWORD = "admin", "admin-scram-secret"
STORE_PASSWORD = "store-secret"


@dataclass(frozen=True)
class SaslBroker:
    plain_port: int  # SASL_PLAINTEXT
    tls_port: int  # SASL_SSL
    ca: Path
    dir: Path

    def env(self, protocol: str, mechanism: str = "SCRAM-SHA-256",
            password: str = PASSWORD) -> dict[str, str]:
        """The TASKFLOW_KAFKA_* settings of a service that uses this broker."""
        port = self.tls_port if protocol == "SASL_SSL" else self.plain_port
        env = {"TASKFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
               "TASKFLOW_KAFKA_SECURITY_PROTOCOL": protocol,
               "TASKFLOW_KAFKA_SASL_MECHANISM": mechanism,
               "TASKFLOW_KAFKA_SASL_USERNAME": USER,
               "TASKFLOW_KAFKA_SASL_PASSWORD": password}
        if protocol == "SASL_SSL":
            env["TASKFLOW_KAFKA_SSL_CAFILE"] = str(self.ca)
        return env


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _config(d: Path, plain: int, tls: int, controller: int) -> str:
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
            f'username="{ADMIN}" password="{ADMIN_PASSWORD}";')
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners=SASL_PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{tls},"
        f"CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{plain},"
        f"SASL_SSL://127.0.0.1:{tls}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,"
        "CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256",
        # Every SASL listener needs a login module for each mechanism it offers.
        *(f"listener.name.{listener}.{mech}.sasl.jaas.config={jaas}"
          for listener in ("sasl_plaintext", "sasl_ssl")
          for mech in ("scram-sha-256", "scram-sha-512")),
        f"controller.quorum.voters=1@127.0.0.1:{controller}",
        f"log.dirs={d / 'data'}",
        f"ssl.keystore.location={d / 'broker.p12'}",
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.password={STORE_PASSWORD}",
        f"ssl.key.password={STORE_PASSWORD}",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=3",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=3",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "",
    ]
    return "\n".join(lines)


def _certificate(d: Path) -> Path:
    store = d / "broker.p12"
    subprocess.run(["keytool", "-genkeypair", "-keystore", str(store), "-storetype", "PKCS12",
                    "-storepass", STORE_PASSWORD, "-keypass", STORE_PASSWORD,
                    "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
                    "-validity", "2", "-dname", "CN=127.0.0.1",
                    "-ext", "SAN=ip:127.0.0.1,dns:localhost"],
                   check=True, capture_output=True, timeout=60)
    ca = d / "ca.pem"
    subprocess.run(["keytool", "-exportcert", "-rfc", "-alias", "broker", "-keystore",
                    str(store), "-storepass", STORE_PASSWORD, "-file", str(ca)],
                   check=True, capture_output=True, timeout=60)
    return ca


@contextlib.contextmanager
def sasl_broker() -> Iterator[SaslBroker]:
    libs = Stack(Settings()).kafka_dir / "libs"
    assert libs.exists(), f"no Kafka jars in {libs}: run `taskflow stack up` once"
    d = Path(tempfile.mkdtemp(prefix="taskflow-sasl-"))
    plain, tls, controller = free_port(), free_port(), free_port()
    ca = _certificate(d)
    conf = d / "server.properties"
    conf.write_text(_config(d, plain, tls, controller))
    cp = f"{libs}/*"
    scram = []
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        for name, pw in ((ADMIN, ADMIN_PASSWORD), (USER, PASSWORD)):
            scram += ["--add-scram", f"{mech}=[name={name},password={pw}]"]
    subprocess.run(["java", "-cp", cp, f"-Dlog4j2.configurationFile={LOG4J}",
                    "kafka.tools.StorageTool", "format", "-t", new_cluster_id(),
                    "-c", str(conf), *scram],
                   check=True, capture_output=True, timeout=120)
    with open(d / "kafka.log", "ab") as log:
        proc = subprocess.Popen(
            ["java", "-Xms256m", "-Xmx512m", f"-Dlog4j2.configurationFile={LOG4J}",
             "-cp", cp, "kafka.Kafka", str(conf)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (_open(plain) and _open(tls)):
            assert proc.poll() is None, (d / "kafka.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the SASL broker did not open its ports"
            time.sleep(0.3)
        yield SaslBroker(plain, tls, ca, d)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)
