"""The webhook fold and Standard Webhooks signing, without I/O."""

from __future__ import annotations

import uuid

import orjson
import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from events import webhooks as wh
from events.errors import UndecodableEvent


def ev(type_: wh.HookType, hid: uuid.UUID, **data: object) -> wh.HookEvent:
    return wh.HookEvent(source="test", type=type_, subject=hid, tenant="acme", data=data)


def test_signatures_verify_with_the_standardwebhooks_package() -> None:
    secret = wh.new_secret()
    body = orjson.dumps({"id": "e1", "type": "task.done"})
    msg_id = wh.message_id(wh.delivery_id(uuid.uuid4(), uuid.uuid4()))
    headers = wh.signed_headers(secret, msg_id, body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Verifier(secret).verify(body, headers) == {"id": "e1", "type": "task.done"}
    with pytest.raises(WebhookVerificationError):
        Verifier(wh.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(body + b" ", headers)


def test_delivery_ids_are_stable_per_webhook_and_event() -> None:
    h, e = uuid.uuid4(), uuid.uuid4()
    assert wh.delivery_id(h, e) == wh.delivery_id(h, e)
    assert wh.delivery_id(h, e) != wh.delivery_id(uuid.uuid4(), e)
    assert wh.message_id(wh.delivery_id(h, e)).startswith("msg_")


def test_subscription_fold() -> None:
    hid = uuid.uuid4()
    created = ev(wh.HookType.CREATED, hid, url="https://x/", events=["task.done"],
                 description=None, secret="whsec_a")
    state = wh.apply_webhook(None, created)
    assert state is not None and state.secret == "whsec_a" and state.tenant == "acme"
    again = ev(wh.HookType.CREATED, hid, url="https://y/", events=["task.done"],
               secret="whsec_b")
    assert wh.apply_webhook(state, again) == state  # the first created wins
    state = wh.apply_webhook(state, ev(wh.HookType.SECRET_ROTATED, hid, secret="whsec_c"))
    assert state is not None and state.secret == "whsec_c"
    state = wh.apply_webhook(state, ev(wh.HookType.DELETED, hid))
    assert state is not None and state.deleted
    after = wh.apply_webhook(state, ev(wh.HookType.SECRET_ROTATED, hid, secret="whsec_d"))
    assert after == state  # deleted absorbs
    assert wh.apply_webhook(None, ev(wh.HookType.DELETED, hid)) is None


def test_delivery_fold_keeps_the_highest_attempt_and_the_body() -> None:
    hid, did, eid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    def attempt(n: int, outcome: str, **extra: object) -> wh.HookEvent:
        return ev(wh.HookType.DELIVERY_ATTEMPTED, hid, delivery_id=str(did), attempt=n,
                  outcome=outcome, status_code=extra.get("code"), error=extra.get("error"),
                  event_id=str(eid), event_type="task.done", task_id=None,
                  **({"body": {"id": str(eid)}} if n == 1 else {}))

    d = wh.apply_delivery(None, attempt(1, "retrying", error="refused"))
    assert d is not None and d.status == "retrying" and d.body == {"id": str(eid)}
    d = wh.apply_delivery(d, attempt(3, "delivered", code=204))
    # A restarted notifier counts again from 1: the count never goes down.
    d = wh.apply_delivery(d, attempt(1, "delivered", code=204))
    assert d is not None and d.attempts == 3 and d.status == "delivered"
    assert d.last_status_code == 204 and d.body == {"id": str(eid)}
    d = wh.apply_delivery(d, ev(wh.HookType.REDELIVER_REQUESTED, hid, delivery_id=str(did)))
    assert d is not None and d.status == "pending" and d.attempts == 3


def test_undecodable_records_raise() -> None:
    for raw in (None, b"", b"{}", b'{"type": "webhook.nope"}'):
        with pytest.raises(UndecodableEvent):
            wh.decode_hook(raw)
    e = ev(wh.HookType.DELETED, uuid.uuid4())
    assert wh.decode_hook(e.encode()) == e
