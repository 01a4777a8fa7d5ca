"""aiokafka's private internals that ``events/log/internals.py`` relies on are still there.

No Kafka is needed. An aiokafka upgrade that renames or reshapes one of them fails here,
naming the attribute, instead of quietly turning off the fetch policy or the short
transaction backoff (which would only show as slower benchmarks).
"""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from importlib import metadata
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.producer import sender
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from events.log import internals
from tests.helpers import ROOT


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def _method_source(cls: type, name: str) -> str:
    method = getattr(cls, name, None)
    assert method is not None, f"{cls.__name__}.{name} is gone"
    return _source(method)


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_installed_aiokafka_is_the_pinned_one() -> None:
    """The checks below were written against the pinned version: a different one installed
    means they may be checking the wrong thing."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if re.match(r"aiokafka\s*==", d)]
    assert len(pins) == 1, f"pyproject.toml must pin aiokafka exactly once: {pins}"
    pinned = pins[0].split("==")[1].strip()
    assert metadata.version("aiokafka") == pinned == aiokafka.__version__, (
        f"aiokafka {metadata.version('aiokafka')} installed, {pinned} pinned: re-check "
        "events/log/internals.py against the installed version, then move the pin")


def test_the_senders_txn_conflict_backoff_is_a_module_constant_read_at_retry_time() -> None:
    assert isinstance(getattr(sender, "BACKOFF_OVERRIDE", None), float), (
        "aiokafka.producer.sender.BACKOFF_OVERRIDE is gone or no longer a float")
    assert "return BACKOFF_OVERRIDE" in _source(sender), (
        "aiokafka.producer.sender no longer returns BACKOFF_OVERRIDE as the retry wait of "
        "a CONCURRENT_TRANSACTIONS refusal: set_txn_conflict_backoff has no effect")
    before = sender.BACKOFF_OVERRIDE
    try:
        internals.set_txn_conflict_backoff(0.001)
        assert sender.BACKOFF_OVERRIDE == 0.001
    finally:
        sender.BACKOFF_OVERRIDE = before


def test_the_consumer_builds_its_fetcher_and_client_where_expected() -> None:
    start = _source(AIOKafkaConsumer.start)
    assert "self._fetcher = Fetcher(" in start, (
        "AIOKafkaConsumer.start no longer sets self._fetcher to a Fetcher")
    assert "self._client = AIOKafkaClient(" in _source(AIOKafkaConsumer.__init__), (
        "AIOKafkaConsumer.__init__ no longer sets self._client to an AIOKafkaClient")
    assert inspect.iscoroutinefunction(AIOKafkaClient.close), (
        "AIOKafkaClient.close is no longer a coroutine")
    assert _params(AIOKafkaClient.close) == ["self"], "AIOKafkaClient.close takes arguments"
    assert _params(AIOKafkaClient.force_metadata_update) == ["self"], (
        "AIOKafkaClient.force_metadata_update changed its signature")


def test_the_fetch_request_method_is_looked_up_on_the_instance_per_request() -> None:
    proc = getattr(Fetcher, "_proc_fetch_request", None)
    assert proc is not None, "Fetcher._proc_fetch_request is gone"
    assert inspect.iscoroutinefunction(proc), "Fetcher._proc_fetch_request is not a coroutine"
    assert _params(proc) == ["self", "assignment", "node_id", "request"], (
        f"Fetcher._proc_fetch_request's signature changed: {inspect.signature(proc)}")
    # Replacing it on the instance works only while the fetch loop calls it through self.
    assert "self._proc_fetch_request(" in _method_source(Fetcher, "_fetch_requests_routine"), (
        "Fetcher._fetch_requests_routine no longer calls self._proc_fetch_request")
    # ... and new limits apply to the next request only if it is built from them.
    build = _method_source(Fetcher, "_get_actions_per_node")
    for attr in ("self._fetch_min_bytes", "self._fetch_max_wait_ms"):
        assert attr in build, f"Fetcher._get_actions_per_node no longer reads {attr}"


async def test_a_real_fetcher_has_what_the_fetch_policy_touches() -> None:
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")  # never connected
    fetcher = Fetcher(client, SubscriptionState(), fetch_min_bytes=7, fetch_max_wait_ms=9)
    try:
        for attr in internals.FETCHER_ATTRS:
            assert hasattr(fetcher, attr), f"Fetcher instances have no {attr}"
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (7, 9), (
            "Fetcher no longer keeps fetch_min_bytes / fetch_max_wait_ms as "
            "_fetch_min_bytes / _fetch_max_wait_ms")
        assert isinstance(getattr(fetcher, "_records", None), dict), (
            "Fetcher._records is no longer a dict of answers per partition")
        internals.set_fetch_limits(fetcher, 1, 250)
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 250)
    finally:
        await fetcher.close()
        await client.close()


def test_a_held_answer_exposes_its_record_set_and_size() -> None:
    assert _params(FetchResult.__init__)[:2] == ["self", "tp"] and "partition_records" in (
        _params(FetchResult.__init__)), "FetchResult no longer takes partition_records"
    assert "self._partition_records = partition_records" in _source(FetchResult.__init__), (
        "FetchResult no longer keeps its PartitionRecords as _partition_records")
    assert "self._records = records" in _source(PartitionRecords.__init__), (
        "PartitionRecords no longer keeps the response's records as _records")
    assert MemoryRecords(b"").size_in_bytes() == 0, "MemoryRecords.size_in_bytes changed"

    # The whole path new_answer_bytes walks, on aiokafka's own classes.
    records = MemoryRecords(b"\0" * 61)
    parts = PartitionRecords(("t", 0), records, [], 0, None, None, False, 0)
    result = FetchResult(("t", 0), assignment=None, partition_records=parts, backoff=0)
    fetcher: Any = type("F", (), {})()
    fetcher._records = {}
    held = internals.held_answers(fetcher)
    fetcher._records = {("t", 0): result}
    assert internals.new_answer_bytes(fetcher, held) == 61, (
        "FetchResult._partition_records._records.size_in_bytes() no longer sizes an answer")


def test_a_fetch_request_keeps_its_minimum_as_min_bytes() -> None:
    request = FetchRequest(10, 1, 1024, 0, [])
    assert getattr(request, "_min_bytes", None) == 1, (
        "FetchRequest no longer keeps min_bytes as _min_bytes: the fetch policy would read "
        "the fetcher's next setting instead of this request's")
    assert internals.request_min_bytes(type("F", (), {"_fetch_min_bytes": 5})(), request) == 1


# aiokafka's private names the adapter uses; ``_proc_fetch_request`` is also the name of
# the fetch policy's own wrapper, which may be reached through ``self`` or ``adaptive``.
AIOKAFKA_PRIVATE = {"_client", "_fetcher", "_proc_fetch_request", "_fetch_min_bytes",
                    "_fetch_max_wait_ms", "_records", "_partition_records", "_min_bytes",
                    "BACKOFF_OVERRIDE"}


def _private_uses(tree: ast.AST) -> list[str]:
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in AIOKAFKA_PRIVATE:
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if not (node.attr == "_proc_fetch_request" and owner in ("self", "adaptive")):
                hits.append(f"line {node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant)
              and node.args[1].value in AIOKAFKA_PRIVATE):
            hits.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return hits


def test_internals_is_the_only_module_touching_private_aiokafka_attributes() -> None:
    """The rest of the adapter reaches aiokafka's privates only through ``internals``."""
    internals_hits = _private_uses(ast.parse(inspect.getsource(internals)))
    assert internals_hits, "the check below no longer recognises internals' own uses"
    for path in sorted((ROOT / "events" / "log").glob("*.py")):
        if path.name != "internals.py":
            hits = _private_uses(ast.parse(path.read_text()))
            assert not hits, f"events/log/{path.name} touches aiokafka internals: {hits}"


async def test_a_consumer_that_never_started_has_no_fetcher_to_adapt() -> None:
    """``fetcher_of`` finds no fetcher on a consumer that never started, rather than
    raising: the consumer then keeps its fixed fetch settings."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    try:
        assert internals.fetcher_of(consumer) is None
    finally:
        await consumer.stop()
