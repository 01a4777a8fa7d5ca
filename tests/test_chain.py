"""The audit hash chain and signed bundles, without Kafka or Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from events import audit, chain
from events.codec import decode_verbatim, encode
from events.models import TaskCancelRequested, TaskCreated, TaskDone, TaskProcessing, new_event
from events.settings import Settings


@pytest.fixture
def chained() -> Iterator[None]:
    chain.configure(Settings(audit_chain=True))
    yield
    chain.configure(Settings(audit_chain=False))


def _history(tid: uuid.UUID) -> list[bytes]:
    created = chain.seal(new_event(TaskCreated(title="t", payload={"message": "m"}),
                                   task_id=tid, source="taskflow/api"))
    proc = chain.seal(new_event(TaskProcessing(worker_id="w"), task_id=tid,
                                source="taskflow/worker/w", attempt=1), created.chainhash or "")
    # The API's cancel knew only task.created: a side branch, still linked.
    cancel = chain.seal(new_event(TaskCancelRequested(reason="api"), task_id=tid,
                                  source="taskflow/api"), created.chainhash or "")
    done = chain.seal(new_event(TaskDone(result="m"), task_id=tid,
                                source="taskflow/worker/w", attempt=1), proc.chainhash or "")
    return [encode(e) for e in (created, proc, cancel, done)]


def _check(raws: list[bytes]) -> chain.ChainCheck:
    check = chain.ChainCheck()
    for offset, raw in enumerate(raws):
        check.feed(0, offset, raw)
    return check


def test_off_by_default_the_wire_bytes_carry_no_chain() -> None:
    ev = chain.seal(new_event(TaskDone(result=1), task_id=uuid.uuid4(), source="s"))
    raw = encode(ev)
    assert b"chain" not in raw and ev.chainhash is None
    assert decode_verbatim(raw) == (ev, True)


def test_sealed_events_link_and_decode_verbatim(chained: None) -> None:
    tid = uuid.uuid4()
    raws = _history(tid)
    docs = [orjson.loads(r) for r in raws]
    assert docs[0]["chainprev"] == "" and all(len(d["chainhash"]) == 64 for d in docs)
    assert docs[1]["chainprev"] == docs[0]["chainhash"]
    for raw in raws:
        ev, verbatim = decode_verbatim(raw)
        assert verbatim and encode(ev) == raw
    check = _check(raws)
    assert check.breaks == [] and check.chained == 4
    assert check.heads[str(tid)] == docs[3]["chainhash"]


def test_an_edited_record_is_a_hash_mismatch_at_its_offset(chained: None) -> None:
    raws = _history(uuid.uuid4())
    raws[3] = raws[3].replace(b'"result":"m"', b'"result":"forged"')
    [b] = _check(raws).breaks
    assert (b.partition, b.offset, b.reason) == (0, 3, "hash mismatch")


def test_a_removed_record_breaks_the_link_after_it(chained: None) -> None:
    raws = _history(uuid.uuid4())
    del raws[1]  # task.processing: task.done names its hash
    [b] = _check(raws).breaks
    assert (b.offset, b.reason) == (2, "unknown previous")


def test_a_rehashed_forgery_or_a_stripped_chain_is_caught(chained: None) -> None:
    raws = _history(uuid.uuid4())
    doc = orjson.loads(raws[1])
    doc["data"]["worker_id"] = "mallory"
    doc["chainhash"] = chain.digest(doc["chainprev"], doc)  # consistent in itself
    check = _check([raws[0], orjson.dumps(doc), *raws[2:]])
    assert [(b.offset, b.reason) for b in check.breaks] == [(3, "unknown previous")]
    stripped = orjson.loads(raws[2])
    del stripped["chainprev"], stripped["chainhash"]
    check = _check([raws[0], raws[1], orjson.dumps(stripped), raws[3]])
    assert [(b.offset, b.reason) for b in check.breaks] == [(2, "unchained")]
    restarted = orjson.loads(raws[2])
    restarted["chainprev"] = ""
    restarted["chainhash"] = chain.digest("", restarted)
    check = _check([raws[0], raws[1], orjson.dumps(restarted), raws[3]])
    assert [(b.offset, b.reason) for b in check.breaks] == [(2, "chain restarts")]


def test_bundle_verifies_with_the_public_key_only(chained: None, tmp_path: Path) -> None:
    tid = uuid.uuid4()
    items = [{"position": {"partition": 0, "offset": i}, "event": orjson.loads(r)}
             for i, r in enumerate(_history(tid))]
    key_file = tmp_path / "signing.pem"
    pub = audit.load_public(str(audit.generate(key_file)))
    bundle = orjson.loads(orjson.dumps(audit.make_bundle(tid, items,
                                                          audit.load_private(str(key_file)))))
    assert audit.verify_bundle(bundle, pub) == []
    assert bundle["chain"] == {"head": items[-1]["event"]["chainhash"], "breaks": []}
    bundle["events"][3]["event"]["data"]["result"] = "forged"
    problems = audit.verify_bundle(bundle, pub)
    assert any("signature" in p for p in problems)
    assert "chain break at 0:3: hash mismatch" in problems
    other = audit.load_public(str(audit.generate(tmp_path / "other.pem")))
    fresh = audit.make_bundle(tid, items, audit.load_private(str(key_file)))
    assert audit.verify_bundle(fresh, other) == [
        "signature does not match the bundle and this public key"]
