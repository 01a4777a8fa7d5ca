"""The audit hash chain: every event of a task commits to an earlier one of the same task.

Two CloudEvents extension attributes carry it (``TASKFLOW_AUDIT_CHAIN=1`` turns it on):

* ``chainprev``: the ``chainhash`` of the task's latest event its producer knew of, or
  ``""`` for the first event of a task (``task.created``).
* ``chainhash``: ``sha256(chainprev + "\\n" + canonical(event))`` in hex, where the
  canonical form is the record's JSON without ``chainhash``, keys sorted, no spaces.

The hash is over the JSON as it sits in the log, never over a decoded model, so an
upcast or a new optional field cannot change what an old record hashes to; an encrypted
field is hashed as its ciphertext.

Several producers write to one task (the API's cancel while a worker runs it), so a
producer names the latest hash *it* knew, which is not always the record just before it
in the log: the links form a chain with short side branches. ``ChainCheck`` accepts a
``chainprev`` that is any earlier hash of the same task and reports everything else:

* ``hash mismatch``: the record is not what was hashed (edited after it was written);
* ``unknown previous``: it names a hash no earlier record of the task has (a record
  before it was removed or edited, hash and all);
* ``chain restarts``: it claims to be a first event although the task had chained ones;
* ``unchained``: it carries no chain although an earlier event of its task did.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from events.codec import encode
from events.models import CloudEvent
from events.settings import Settings

PREV: Final = "chainprev"
HASH: Final = "chainhash"
GENESIS: Final = ""

_enabled = False


def configure(settings: Settings) -> None:
    """Read ``TASKFLOW_AUDIT_CHAIN`` once, at a producing process's start."""
    global _enabled
    _enabled = settings.audit_chain


def enabled() -> bool:
    return _enabled


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes ``chainhash`` covers: the event's JSON without ``chainhash``."""
    return orjson.dumps({k: v for k, v in doc.items() if k != HASH},
                        option=orjson.OPT_SORT_KEYS)


def digest(prev: str, doc: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + canonical(doc)).hexdigest()


def seal(event: CloudEvent, prev: str = GENESIS) -> CloudEvent:
    """``event`` linked after ``prev`` with its own hash, when the chain is on."""
    if not _enabled:
        return event
    linked = event.model_copy(update={PREV: prev})
    return linked.model_copy(update={HASH: digest(prev, orjson.loads(encode(linked)))})


@dataclass(frozen=True)
class Break:
    """One place where the chain does not hold, with the record's coordinates."""

    partition: int
    offset: int
    task_id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset,
                "task_id": self.task_id, "reason": self.reason}


@dataclass
class ChainCheck:
    """Walks records in log order (per partition) and collects the breaks.

    Holds the hashes seen per task: memory grows with the tasks checked, which is what
    ``--task`` is for on a large log.
    """

    task: uuid.UUID | None = None
    records: int = 0
    chained: int = 0
    breaks: list[Break] = field(default_factory=list)
    seen: dict[str, set[str]] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)

    def feed(self, partition: int, offset: int, value: bytes | None) -> None:
        try:
            doc = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return  # not an event at all: parked by every consumer, no task to check
        if not isinstance(doc, dict) or not str(doc.get("type", "")).startswith("task."):
            return
        tid = str(doc.get("subject"))
        if self.task is not None and tid != str(self.task):
            return
        self.records += 1
        self.check(partition, offset, tid, doc)

    def check(self, partition: int, offset: int, tid: str, doc: dict[str, Any]) -> None:
        seen = self.seen.get(tid)
        prev, own = doc.get(PREV), doc.get(HASH)
        if own is None and prev is None:
            if seen:
                self._break(partition, offset, tid, "unchained")
            return
        self.chained += 1
        if not isinstance(prev, str) or not isinstance(own, str):
            self._break(partition, offset, tid, "malformed chain attributes")
            return
        if digest(prev, doc) != own:
            self._break(partition, offset, tid, "hash mismatch")
        elif prev == GENESIS:
            if seen:
                self._break(partition, offset, tid, "chain restarts")
        elif seen is None or prev not in seen:
            self._break(partition, offset, tid, "unknown previous")
        self.seen.setdefault(tid, set()).add(own)
        self.heads[tid] = own

    def _break(self, partition: int, offset: int, tid: str, reason: str) -> None:
        self.breaks.append(Break(partition, offset, tid, reason))
