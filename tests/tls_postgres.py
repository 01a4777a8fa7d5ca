"""A private PostgreSQL that accepts TLS connections only, for the transport-security tests.

``taskflow stack``'s own ``pg_up`` makes the cluster (Debian's binaries, as the postgres
user) in a new directory on a free port; then it gets a server certificate for 127.0.0.1
signed by a CA made here (openssl), ``ssl = on``, and a pg_hba.conf with ``hostssl``
lines only: a connection without TLS is refused. ``ca`` is what a client verifies with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.stack import Stack
from events.settings import Settings
from tests.helpers import free_port


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    ca: Path
    dir: Path

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://taskflow:taskflow@127.0.0.1:{self.port}/{database}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(d: Path) -> None:
    """ca.pem/ca.key, and server.crt/server.key for 127.0.0.1 signed by that CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=taskflow test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=d)


@contextlib.contextmanager
def tls_postgres() -> Iterator[TlsPostgres]:
    # Under /tmp and traversable: Postgres runs as its own user and must reach its data.
    d = Path(tempfile.mkdtemp(prefix="taskflow-pgtls-", dir="/tmp"))
    d.chmod(0o755)
    port = free_port()
    stack = Stack(Settings(stack_dir=str(d), pg_port=port))
    try:
        stack.pg_up()
        data = stack.pg_dir / "data"
        _certificates(d)
        for name in ("server.crt", "server.key"):
            shutil.copy(d / name, data / name)
            (data / name).chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(data / name, "postgres", "postgres")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\nssl = on\nssl_cert_file = 'server.crt'\n"
                       "ssl_key_file = 'server.key'\n")
        hba = data / "pg_hba.conf"
        lines = [ln.replace("host ", "hostssl ", 1) if ln.startswith("host ") else ln
                 for ln in hba.read_text().splitlines()]
        hba.write_text("\n".join(lines) + "\n")
        stack.pg_down()
        stack.pg_up()
        yield TlsPostgres(port=port, ca=d / "ca.pem", dir=d)
    finally:
        stack.pg_down()
        shutil.rmtree(d, ignore_errors=True)
