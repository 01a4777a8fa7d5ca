"""Erasure by crypto-shredding: payloads and results sealed with a key per task.

With ``TASKFLOW_ENCRYPTION_KEY`` (a base64 32-byte master key) set, a task's
``payload`` (in ``task.created``) and ``result`` (in ``task.done``) go into the log as
``{"$enc": "<base64 nonce + AES-GCM ciphertext>"}``, sealed with the task's own data key.
Data keys live in Postgres (``task_keys``), wrapped with the master key. Deleting a task's
key (``DELETE /tasks/{id}/data``, ``taskflow erase``) makes every copy of those fields
unreadable, in the log, its archives and the read model alike. Readers then show
``{"$erased": true}`` in their place, and keep the metadata (type, times, status).

The log keeps the ciphertext, and the read model stores it unchanged. So verify and
rebuild are not affected, and the audit hash chain, which covers the ciphertext, still
verifies after an erasure.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED: Final = "$enc"
ERASED: Final = {"$erased": True}
KEY_BYTES: Final = 32  # AES-256
NONCE_BYTES: Final = 12  # AES-GCM's standard nonce


class Erased(Exception):
    """The task's key is gone: its sealed fields can never be read again."""

    def __init__(self, task_id: uuid.UUID, field: str) -> None:
        super().__init__(f"the {field} of task {task_id} was erased")
        self.task_id, self.field = task_id, field


def master_key(encoded: str) -> bytes:
    """``TASKFLOW_ENCRYPTION_KEY``: base64 of 32 random bytes (``openssl rand -base64 32``)."""
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("TASKFLOW_ENCRYPTION_KEY is not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"TASKFLOW_ENCRYPTION_KEY must be {KEY_BYTES} bytes, not {len(key)}")
    return key


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def wrap(master: bytes, task_id: uuid.UUID, key: bytes) -> bytes:
    return _seal(master, key, task_id.bytes)


def unwrap(master: bytes, task_id: uuid.UUID, wrapped: bytes) -> bytes:
    return _open(master, wrapped, task_id.bytes)


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(SEALED), str)


def seal_value(key: bytes, task_id: uuid.UUID, field: str, value: Any) -> dict[str, str]:
    blob = _seal(key, orjson.dumps(value), f"{task_id}:{field}".encode())
    return {SEALED: base64.b64encode(blob).decode()}


def open_value(key: bytes | None, task_id: uuid.UUID, field: str, sealed: dict[str, Any]) -> Any:
    """The plaintext of a sealed field; ``Erased`` without a key."""
    if key is None:
        raise Erased(task_id, field)
    try:
        blob = base64.b64decode(sealed[SEALED])
        return orjson.loads(_open(key, blob, f"{task_id}:{field}".encode()))
    except (InvalidTag, ValueError, binascii.Error):
        raise Erased(task_id, field) from None


def reveal(value: Any, key: bytes | None, task_id: uuid.UUID, field: str) -> Any:
    """What a reader shows for a field: as it is, its plaintext, or ``ERASED``."""
    if not is_sealed(value):
        return value
    try:
        return open_value(key, task_id, field, value)
    except Erased:
        return dict(ERASED)


def reveal_event(doc: dict[str, Any], keys: dict[uuid.UUID, bytes]) -> dict[str, Any]:
    """A CloudEvent's JSON with its sealed fields revealed (``task.created``'s payload,
    ``task.redriven``'s spec payload, ``task.done``'s result)."""
    data = doc.get("data")
    if not isinstance(data, dict):
        return doc
    tid = uuid.UUID(str(doc.get("subject")))
    key = keys.get(tid)
    out = dict(data)
    if "payload" in out:
        out["payload"] = reveal(out["payload"], key, tid, "payload")
    if "result" in out:
        out["result"] = reveal(out["result"], key, tid, "result")
    spec = out.get("spec")
    if isinstance(spec, dict) and "payload" in spec:
        out["spec"] = {**spec, "payload": reveal(spec["payload"], key, tid, "payload")}
    return {**doc, "data": out}
