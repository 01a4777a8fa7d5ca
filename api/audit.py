"""``GET /tasks/{id}/audit``: the task's history as a signed audit bundle (events.audit)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Request, Response

from api.auth import TenantDep
from api.deps import DbDep, SettingsDep
from api.problems import NotFound, Unavailable, documented
from api.reads import visible
from events import audit, queries

router = APIRouter()


def _key(request: Request, path: str) -> Ed25519PrivateKey:
    key = getattr(request.app.state, "audit_key", None)
    if key is None:
        if not path:
            raise Unavailable("audit bundles need a signing key: set TASKFLOW_AUDIT_SIGNING_KEY")
        try:
            key = audit.load_private(path)
        except audit.BadKey as exc:
            raise Unavailable(str(exc)) from None
        request.app.state.audit_key = key
    return key


@router.get("/tasks/{task_id}/audit", tags=["tasks"], responses=documented(404, 503))
async def task_audit(task_id: uuid.UUID, request: Request, db: DbDep, settings: SettingsDep,
                     tenant: TenantDep) -> Response:
    """The task's history with its hash chain, signed with the deployment's Ed25519 key.
    Verify it offline with ``taskflow audit verify-bundle FILE --public-key KEY.pub``."""
    key = _key(request, settings.audit_signing_key)
    items = await queries.task_history(db, task_id=task_id)
    if not items or not visible(items[0].get("tenant"), tenant):
        raise NotFound(f"no task {task_id}")
    events: list[dict[str, Any]] = [
        {"position": it["position"], "event": {k: v for k, v in it.items() if k != "position"}}
        for it in items]
    return Response(orjson.dumps(audit.make_bundle(task_id, events, key)),
                    media_type="application/json")
