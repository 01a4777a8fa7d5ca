"""A task's ``callback_url``: a webhook for that task alone.

Submitting a task with ``callback_url`` first appends a ``webhook.created`` scoped to the
task (its id derived from the task id), subscribed to the task's terminal events, then
the task itself. The 202 carries ``callback: {webhook_id, secret}``, the secret shown
once, as for any webhook; deliveries are signed and retried like any other.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import orjson
from fastapi import Request, Response

from api.auth import Tenant
from api.problems import Invalid
from api.schemas import TaskIn
from events import constants
from events import webhooks as wh
from events.models import EventType
from events.outbound import OutboundRefused, check_url, outbound_settings

CALLBACK_EVENTS: Final = [EventType.DONE.value, EventType.FAILED.value,
                          EventType.CANCELLED.value, EventType.DEAD_LETTERED.value]
NAMESPACE: Final = uuid.UUID("0c9a3f4e-51b7-4d0e-8f6a-2b7e9c1d3a55")


def refuse_in_batch(t: TaskIn, i: int) -> None:
    if t.callback_url is not None:
        raise Invalid("callback_url is only taken by POST /tasks",
                      errors=[{"loc": ["body", "tasks", i, "callback_url"],
                               "msg": "not supported in a batch", "type": "callback"}])


async def subscribe(request: Request, url: str, tenant: Tenant,
                    task_id: uuid.UUID) -> dict[str, Any]:
    """Append the task's webhook; ``{webhook_id, secret}``. 422 for a refused URL."""
    from api.webhooks import append  # the webhook routes import the task schemas

    try:
        await check_url(url, outbound_settings().allowed())
    except OutboundRefused as exc:
        raise Invalid(f"callback_url refused: {exc.reason}",
                      errors=[{"loc": ["body", "callback_url"], "msg": exc.reason,
                               "type": "outbound_refused"}]) from None
    webhook_id = uuid.uuid5(NAMESPACE, str(task_id))
    secret = wh.new_secret()
    state = request.app.state
    await append(request, state.producer, state.settings, wh.HookEvent(
        source=constants.API_SOURCE, type=wh.HookType.CREATED, subject=webhook_id,
        tenant=tenant.name, actor=tenant.actor,
        data={"url": url, "events": CALLBACK_EVENTS, "secret": secret,
              "description": f"callback of task {task_id}", "task_id": str(task_id)}))
    return {"webhook_id": str(webhook_id), "secret": secret}


def with_callback(resp: Response, sub: dict[str, Any]) -> Response:
    """The 202 with ``callback`` added; a keyed replay (200) keeps the first secret
    unsaid, and an error stays as it is."""
    if resp.status_code != 202:
        return resp
    body = orjson.loads(bytes(resp.body))
    body["callback"] = sub
    return Response(orjson.dumps(body), status_code=202, media_type="application/json",
                    headers={"Location": resp.headers["location"]})
