"""Webhook events, their fold, and Standard Webhooks signing.

Subscriptions and delivery attempts are events like the tasks' own, in a topic of their
own (``<topic>.webhooks``, keyed by webhook id): the task topic's consumers (worker,
projector) never see them, and a webhook's history reads in order from one partition.

    webhook.created                 a subscription: url, event types, secret
    webhook.secret_rotated          its new secret
    webhook.deleted                 gone; nothing is delivered to it from then on
    webhook.delivery_attempted      one HTTP attempt of one delivery, with its outcome
    webhook.redeliver_requested     POST .../deliveries/{id}:redeliver

A delivery is one task event for one webhook. Its id is derived from the two, so every
notifier instance, and every retry after a crash, sends it under the same ``webhook-id``.

The fold (``apply_webhook``, ``apply_delivery``) is pure: the projector, verify and
rebuild all call it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from events import constants, ids
from events.errors import UndecodableEvent
from events.models import ACTOR_MAX

TOPIC_SUFFIX: Final = ".webhooks"
PROJECTION: Final = "webhooks"  # its checkpoints in projector_offsets
SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32  # bytes of HMAC key behind each secret
# Delivery ids are uuid5(namespace, "<webhook id>/<event id>"): stable across retries.
DELIVERY_NAMESPACE: Final = uuid.UUID("6b0f1f2e-9a1c-4c53-9d43-4f0d7d2a61c1")


def topic_for(task_topic: str) -> str:
    """The webhook topic that goes with a task topic."""
    return task_topic + TOPIC_SUFFIX


class HookType(StrEnum):
    CREATED = "webhook.created"
    SECRET_ROTATED = "webhook.secret_rotated"
    DELETED = "webhook.deleted"
    DELIVERY_ATTEMPTED = "webhook.delivery_attempted"
    REDELIVER_REQUESTED = "webhook.redeliver_requested"


Outcome = Literal["delivered", "retrying", "dead_lettered"]


class HookEvent(BaseModel):
    """A webhook event, in the CloudEvents 1.0 shape; ``subject`` is the webhook id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = constants.SPEC_VERSION
    id: uuid.UUID = Field(default_factory=ids.uuid4)
    source: str
    type: HookType
    subject: uuid.UUID
    time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: Literal["application/json"] = "application/json"
    tenant: str | None = None
    # As on task events (``events.models.CloudEvent``): the key id of the command that
    # wrote it; unset, and left out of the JSON, on the notifier's own events.
    actor: str | None = Field(default=None, max_length=ACTOR_MAX, exclude_if=lambda v: v is None)
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def webhook_id(self) -> uuid.UUID:
        return self.subject

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    def key(self) -> bytes:
        return str(self.subject).encode()


def decode_hook(raw: bytes | None) -> HookEvent:
    if raw is None:
        raise UndecodableEvent("tombstone", raw)
    try:
        return HookEvent.model_validate_json(raw)
    except ValidationError as exc:
        raise UndecodableEvent(str(exc), raw) from exc


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def delivery_id(webhook_id: uuid.UUID, event_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(DELIVERY_NAMESPACE, f"{webhook_id}/{event_id}")


def message_id(delivery: uuid.UUID) -> str:
    """The ``webhook-id`` header of a delivery."""
    return f"msg_{delivery.hex}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256>`` of
    ``<msg_id>.<timestamp>.<body>`` keyed by the secret's decoded bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, msg_id: str, body: bytes,
                   timestamp: int | None = None) -> dict[str, str]:
    ts = int(datetime.now(UTC).timestamp()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body),
            "content-type": constants.CONTENT_TYPE}


class Webhook(BaseModel):
    """The read model of one subscription (the row of ``webhooks``)."""

    model_config = ConfigDict(frozen=True)

    webhook_id: uuid.UUID
    tenant: str | None = None
    url: str = ""
    events: list[str] = []
    description: str | None = None
    secret: str = ""
    task_id: uuid.UUID | None = None  # a task's callback_url: that task's events only
    deleted: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Delivery(BaseModel):
    """The read model of one delivery (the row of ``webhook_deliveries``)."""

    model_config = ConfigDict(frozen=True)

    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    tenant: str | None = None
    event_id: uuid.UUID | None = None
    event_type: str | None = None
    task_id: uuid.UUID | None = None
    status: str = "pending"  # pending | delivered | retrying | dead_lettered
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    body: Any = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


def apply_webhook(state: Webhook | None, ev: HookEvent) -> Webhook | None:
    """The subscription after ``ev``; a duplicate ``webhook.created`` is ignored."""
    d = ev.data
    if ev.type is HookType.CREATED:
        if state is not None:
            return state
        return Webhook(webhook_id=ev.subject, tenant=ev.tenant, url=d["url"],
                       events=list(d["events"]), description=d.get("description"),
                       secret=d["secret"], created_at=ev.time, updated_at=ev.time,
                       task_id=uuid.UUID(d["task_id"]) if d.get("task_id") else None)
    if state is None or state.deleted:
        return state
    if ev.type is HookType.SECRET_ROTATED:
        return state.model_copy(update={"secret": d["secret"], "updated_at": ev.time})
    if ev.type is HookType.DELETED:
        return state.model_copy(update={"deleted": True, "updated_at": ev.time})
    return state


def apply_delivery(state: Delivery | None, ev: HookEvent) -> Delivery | None:
    """The delivery after ``ev``; events that are not about a delivery leave it."""
    d = ev.data
    if ev.type not in (HookType.DELIVERY_ATTEMPTED, HookType.REDELIVER_REQUESTED):
        return state
    if state is None:
        state = Delivery(delivery_id=uuid.UUID(d["delivery_id"]), webhook_id=ev.subject,
                         tenant=ev.tenant, created_at=ev.time)
    if ev.type is HookType.REDELIVER_REQUESTED:
        return state.model_copy(update={"status": "pending", "updated_at": ev.time})
    update: dict[str, Any] = {
        "status": d["outcome"], "attempts": max(state.attempts, int(d["attempt"])),
        "last_status_code": d.get("status_code"), "last_error": d.get("error"),
        "updated_at": ev.time,
    }
    for k in ("event_type", "body"):
        if d.get(k) is not None:
            update[k] = d[k]
    for k in ("event_id", "task_id"):
        if d.get(k) is not None:
            update[k] = uuid.UUID(d[k])
    return state.model_copy(update=update)


def delivery_key(ev: HookEvent) -> uuid.UUID | None:
    """The delivery an event is about, if any."""
    raw = ev.data.get("delivery_id")
    return uuid.UUID(raw) if raw else None
