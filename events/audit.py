"""Signed audit bundles: one task's history, its hash chain and an Ed25519 signature.

A bundle is a JSON object::

    {"format": "taskflow.audit-bundle/1", "task_id": ..., "exported_at": ...,
     "events": [{"position": {"partition": P, "offset": O}, "event": {...}}, ...],
     "chain": {"head": <last chainhash>, "breaks": [...]},
     "key_id": <first 16 hex of sha256(raw public key)>,
     "signature": <base64 Ed25519 signature>}

The signature covers the bundle without ``signature``, as JSON with sorted keys and no
spaces (``events.chain.canonical``'s form). ``verify_bundle`` needs nothing but the
bundle and the public key: no Kafka, no Postgres (``taskflow audit verify-bundle``).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events.chain import ChainCheck

FORMAT: Final = "taskflow.audit-bundle/1"
SIGNATURE: Final = "signature"


class BadKey(ValueError):
    """A key file that is not an Ed25519 key in PEM."""


def _signed_bytes(bundle: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in bundle.items() if k != SIGNATURE},
                        option=orjson.OPT_SORT_KEYS)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(path: Path) -> Path:
    """Write a new private key to ``path`` (mode 0600) and its public key to
    ``path.pub``; returns the latter."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def load_private(path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BadKey(f"cannot read the private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey(f"{path} is not an Ed25519 private key")
    return key


def load_public(path: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise BadKey(f"cannot read the public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadKey(f"{path} is not an Ed25519 public key")
    return key


def check_events(events: Sequence[dict[str, Any]]) -> ChainCheck:
    """The chain of one task's ``{"position", "event"}`` items, in log order."""
    check = ChainCheck()
    for item in events:
        pos, doc = item.get("position") or {}, item.get("event") or {}
        check.check(int(pos.get("partition", -1)), int(pos.get("offset", -1)),
                    str(doc.get("subject")), doc)
    return check


def make_bundle(task_id: uuid.UUID, events: Sequence[dict[str, Any]],
                key: Ed25519PrivateKey, *, now: datetime | None = None) -> dict[str, Any]:
    """Sign one task's history (``{"position", "event"}`` items in log order)."""
    check = check_events(events)
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "task_id": str(task_id),
        "exported_at": (now or datetime.now(UTC)).isoformat(),
        "events": list(events),
        "chain": {"head": check.heads.get(str(task_id)),
                  "breaks": [b.as_dict() for b in check.breaks]},
        "key_id": key_id(key.public_key()),
    }
    bundle[SIGNATURE] = base64.b64encode(key.sign(_signed_bytes(bundle))).decode()
    return bundle


def verify_bundle(bundle: Any, public: Ed25519PublicKey) -> list[str]:
    """What is wrong with ``bundle`` (an empty list: it is intact and signed by the
    holder of ``public``'s private key)."""
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        return [f"not a {FORMAT} bundle"]
    problems: list[str] = []
    try:
        public.verify(base64.b64decode(str(bundle.get(SIGNATURE, ""))), _signed_bytes(bundle))
    except (InvalidSignature, ValueError):
        problems.append("signature does not match the bundle and this public key")
    events = bundle.get("events")
    if not isinstance(events, list):
        return [*problems, "events is not a list"]
    for b in check_events(events).breaks:
        problems.append(f"chain break at {b.partition}:{b.offset}: {b.reason}")
    return problems
