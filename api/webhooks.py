"""Webhook routes: subscriptions, their secrets, and their deliveries.

Every change is an event appended to the webhook topic (``events.webhooks``); the
projector folds it into ``webhooks``/``webhook_deliveries``, which the reads use. A write
answers once the log acknowledged it and (bounded by ``TASKFLOW_READ_WAIT_S``) the
projection has applied it, so a read right after it sees it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.auth import Tenant, TenantDep
from api.deps import DbDep, LogDep, SettingsDep
from api.problems import Invalid, NotFound, documented
from api.schemas import EventPage
from api.tasks import parse_as_of
from events import constants, hook_queries
from events import webhooks as wh
from events.log import EventProducer, ensure_topic
from events.models import EventType
from events.outbound import OutboundRefused, check_url, outbound_settings
from events.settings import Settings

router = APIRouter(tags=["webhooks"])
SOURCE = constants.API_SOURCE
URL_MAX = 2048  # characters of a webhook URL
EVENT_TYPES = tuple(t.value for t in EventType)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=URL_MAX, examples=["https://example.com/hook"])
    events: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES),
                              examples=[["task.done", "task.failed", "task.dead_lettered"]])
    description: str | None = Field(default=None, max_length=500)

    @field_validator("events")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if e not in EVENT_TYPES]
        if bad:
            raise ValueError(f"unknown event type(s) {bad}; known: {list(EVENT_TYPES)}")
        return list(dict.fromkeys(v))

    @field_validator("url", "description")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("must not contain NUL")
        return v


class WebhookOut(BaseModel):
    webhook_id: uuid.UUID
    url: str
    events: list[str]
    description: str | None = None
    tenant: str | None = None
    task_id: uuid.UUID | None = Field(default=None, description="set for a task's callback_url")
    created_at: datetime | None = None
    updated_at: datetime | None = None


class WebhookCreated(BaseModel):
    webhook_id: uuid.UUID
    secret: str = Field(description="Shown once: keep it to verify signatures.")
    url: str
    events: list[str]
    description: str | None = None


class SecretRotated(BaseModel):
    webhook_id: uuid.UUID
    secret: str


class DeliveryOut(BaseModel):
    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: uuid.UUID | None = None
    event_type: str | None = None
    task_id: uuid.UUID | None = None
    status: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class WebhookPage(BaseModel):
    items: list[WebhookOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]


async def append(request: Request, producer: EventProducer, settings: Settings,
                 ev: wh.HookEvent) -> None:
    """Append ``ev`` to the webhook topic and wait (bounded) for the projection."""
    topic = wh.topic_for(settings.topic)
    if not getattr(request.app.state, "webhook_topic_ready", False):
        await ensure_topic(settings.kafka_bootstrap, topic, settings.partitions,
                           replication_factor=settings.replication_factor,
                           min_insync_replicas=settings.min_insync_replicas)
        request.app.state.webhook_topic_ready = True
    pos = await producer.append_raw(topic, ev.key(), ev.encode())
    deadline = time.monotonic() + settings.read_wait_s
    while time.monotonic() < deadline:
        if await hook_queries.applied(request.app.state.engine, projection=wh.PROJECTION,
                                      topic=topic, partition=pos.partition,
                                      offset=pos.offset):
            return
        await asyncio.sleep(0.02)


async def _owned(db: DbDep, webhook_id: uuid.UUID, tenant: Tenant, *,
                 deleted: bool = False) -> dict[str, Any]:
    row = await hook_queries.get_webhook(db, webhook_id=webhook_id, scoped=tenant.scoped,
                                         tenant=tenant.name, deleted=deleted)
    if row is None:
        raise NotFound(f"no webhook {webhook_id}")
    return row


@router.post("/webhooks", status_code=201, response_model=WebhookCreated,
             responses=documented(401, 413, 415, 422, 429, 503))
async def create_webhook(body: WebhookIn, request: Request, tenant: TenantDep,
                         producer: LogDep, settings: SettingsDep) -> WebhookCreated:
    """Subscribe ``url`` to the tenant's task events of ``events``; the secret is shown once."""
    try:
        await check_url(body.url, outbound_settings().allowed())
    except OutboundRefused as exc:
        raise Invalid(f"url refused: {exc.reason}",
                      errors=[{"loc": ["body", "url"], "msg": exc.reason,
                               "type": "outbound_refused"}]) from None
    webhook_id = uuid.uuid4()
    secret = wh.new_secret()
    await append(request, producer, settings, wh.HookEvent(
        source=SOURCE, type=wh.HookType.CREATED, subject=webhook_id, tenant=tenant.name,
        actor=tenant.actor, data={"url": body.url, "events": body.events,
                                  "description": body.description, "secret": secret}))
    return WebhookCreated(webhook_id=webhook_id, secret=secret, url=body.url,
                          events=body.events, description=body.description)


@router.get("/webhooks", response_model=WebhookPage, responses=documented(401, 429))
async def list_webhooks(db: DbDep, tenant: TenantDep, settings: SettingsDep) -> WebhookPage:
    rows = await hook_queries.list_webhooks(db, scoped=tenant.scoped, tenant=tenant.name,
                                            limit=settings.list_limit_max)
    return WebhookPage(items=[WebhookOut(**r) for r in rows])


@router.post("/webhooks/{webhook_id}:rotate-secret", response_model=SecretRotated,
             responses=documented(401, 404, 429, 503))
async def rotate_secret(webhook_id: uuid.UUID, request: Request, db: DbDep, tenant: TenantDep,
                        producer: LogDep, settings: SettingsDep) -> SecretRotated:
    """A new secret, shown once; deliveries are signed with it from now on."""
    await _owned(db, webhook_id, tenant)
    secret = wh.new_secret()
    await append(request, producer, settings, wh.HookEvent(
        source=SOURCE, type=wh.HookType.SECRET_ROTATED, subject=webhook_id,
        tenant=tenant.name, actor=tenant.actor, data={"secret": secret}))
    return SecretRotated(webhook_id=webhook_id, secret=secret)


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut,
            responses=documented(401, 404, 422, 429))
async def get_webhook(
    webhook_id: uuid.UUID, db: DbDep, tenant: TenantDep,
    as_of: Annotated[str | None, Query(
        max_length=64, description="RFC 3339 time, or PARTITION:OFFSET: the subscription then",
        examples=["2026-11-22T10:00:00Z", "3:41"])] = None,
) -> WebhookOut:
    """The subscription; with ``as_of``, as it was then (folded from its journal)."""
    if as_of is None:
        return WebhookOut(**await _owned(db, webhook_id, tenant))
    point = parse_as_of(as_of)
    state: wh.Webhook | None = None
    for p, o, raw in await hook_queries.webhook_history(db, webhook_id=webhook_id):
        ev = wh.HookEvent.model_validate(raw)
        if (p, o) > point if isinstance(point, tuple) else ev.time > point:
            break
        state = wh.apply_webhook(state, ev)
    if (state is None or state.deleted
            or (tenant.scoped and state.tenant != tenant.name)):
        raise NotFound(f"webhook {webhook_id} did not exist at {as_of}")
    return WebhookOut(**state.model_dump(exclude={"secret", "deleted"}))


@router.get("/webhooks/{webhook_id}/events", response_model=EventPage,
            responses=documented(401, 404, 429))
async def webhook_events(webhook_id: uuid.UUID, db: DbDep, tenant: TenantDep
                         ) -> dict[str, Any]:
    """The subscription's changes in log order (created, secret rotated, redelivery
    requested, deleted; not the delivery attempts), each CloudEvent with its position
    and ``actor``: the API key id that made it. Secrets are left out of ``data``. A
    deleted webhook keeps its history."""
    await _owned(db, webhook_id, tenant, deleted=True)
    rows = await hook_queries.webhook_history(db, webhook_id=webhook_id)
    return {"items": [{**ev, "data": {k: v for k, v in ev.get("data", {}).items()
                                      if k != "secret"},
                       "position": {"partition": p, "offset": o}} for p, o, ev in rows]}


@router.delete("/webhooks/{webhook_id}", status_code=204,
               responses=documented(401, 404, 429, 503))
async def delete_webhook(webhook_id: uuid.UUID, request: Request, db: DbDep, tenant: TenantDep,
                         producer: LogDep, settings: SettingsDep) -> Response:
    await _owned(db, webhook_id, tenant)
    await append(request, producer, settings, wh.HookEvent(
        source=SOURCE, type=wh.HookType.DELETED, subject=webhook_id, tenant=tenant.name,
        actor=tenant.actor))
    return Response(status_code=204)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryPage,
            responses=documented(401, 404, 429))
async def list_deliveries(
    webhook_id: uuid.UUID, db: DbDep, tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryPage:
    """The webhook's deliveries, newest first: status, attempts, last response code."""
    await _owned(db, webhook_id, tenant)
    rows = await hook_queries.list_deliveries(db, webhook_id=webhook_id, limit=limit)
    return DeliveryPage(items=[DeliveryOut(**r) for r in rows])


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}:redeliver", status_code=202,
             responses=documented(401, 404, 429, 503))
async def redeliver(webhook_id: uuid.UUID, delivery_id: uuid.UUID, request: Request,
                    db: DbDep, tenant: TenantDep, producer: LogDep,
                    settings: SettingsDep) -> dict[str, Any]:
    """Send a delivery again, under its ``webhook-id``, with a fresh round of retries."""
    await _owned(db, webhook_id, tenant)
    row = await hook_queries.get_delivery(db, webhook_id=webhook_id, delivery_id=delivery_id)
    if row is None or row["body"] is None:
        raise NotFound(f"no delivery {delivery_id} of webhook {webhook_id}")
    await append(request, producer, settings, wh.HookEvent(
        source=SOURCE, type=wh.HookType.REDELIVER_REQUESTED, subject=webhook_id,
        tenant=tenant.name, actor=tenant.actor, data={"delivery_id": str(delivery_id)}))
    return {"delivery_id": str(delivery_id), "status": "pending"}
