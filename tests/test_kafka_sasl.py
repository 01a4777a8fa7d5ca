"""TaskFlow over Kafka SASL/SCRAM, in the clear and over TLS, against a real broker.

The broker (``tests.sasl_broker``) accepts only SCRAM logins. The API, worker and projector
run as processes with the ``TASKFLOW_KAFKA_*`` security settings: a task goes through the
whole system; a wrong password, or TLS without the broker's CA, gets nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import Env, free_port, wait_until
from tests.sasl_broker import SaslBroker, sasl_broker
from tests.test_api import cli


@pytest.fixture(scope="module")
def sasl() -> Iterator[SaslBroker]:
    with sasl_broker() as broker:
        yield broker


@pytest.mark.parametrize(("protocol", "mechanism"), [
    ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")])
async def test_a_task_runs_end_to_end_over_scram(env: Env, sasl: SaslBroker, protocol: str,
                                                 mechanism: str) -> None:
    env.extra.update(sasl.env(protocol, mechanism))  # every process and command of the test
    cli(env, "migrate")  # creates the topics on the SASL broker
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "scram", "type": "echo",
                                         "payload": {"message": "over " + protocol}})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]

        async def done() -> dict[str, Any] | None:
            got = await c.get(f"/tasks/{tid}")
            return got.json() if got.status_code == 200 and got.json()["status"] == "DONE" \
                else None

        task = await wait_until(done, timeout=90, what="the task to be DONE over SASL")
        assert task is not None and task["result"] == "over " + protocol
        ready = await c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["kafka"] == "ok"


@pytest.mark.parametrize("wrong", ["password", "ca"])
async def test_a_wrong_password_or_an_untrusted_broker_gets_nowhere(
        env: Env, sasl: SaslBroker, wrong: str) -> None:
    if wrong == "password":
        kafka = sasl.env("SASL_PLAINTEXT", password="not-the-password")
    else:  # TLS, trusting the system's CAs only: the broker's self-signed certificate fails
        kafka = {**sasl.env("SASL_SSL"), "TASKFLOW_KAFKA_SSL_CAFILE": ""}
    env.extra.update(kafka)
    port = free_port()
    await env.api(port, TASKFLOW_PRODUCE_TIMEOUT_S="2")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["kafka"] == "unavailable"
        r = await c.post("/tasks", json={"title": "refused"})
        assert r.status_code == 503, r.text
