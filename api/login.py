"""Dashboard login: ``POST /session`` trades an API key for an HttpOnly cookie.

A browser page cannot keep a key out of reach of scripts, and ``EventSource`` cannot send
headers, so the dashboard pastes its key once and is given the ``taskflow_session``
cookie: HttpOnly, SameSite=Strict, Secure over https. The cookie holds a random token;
Postgres keeps only its SHA-256 (``events/login_db.py``). ``authenticate`` accepts it in
place of a key, writes only with the ``X-CSRF-Token`` that ``POST`` and ``GET /session``
return.
"""

from __future__ import annotations

import math
import secrets

from fastapi import APIRouter, Request, Response

from api.auth import KeyRing, Unauthorized, check_cookie_write, csrf_token, same_origin
from api.deps import DbDep, SettingsDep
from api.problems import Conflict, Forbidden, documented
from api.schemas import LoginIn, LoginOut
from events import constants, login_db
from events.settings import Settings

router = APIRouter(tags=["auth"])


def _open(settings: Settings) -> None:
    if not settings.auth:
        raise Conflict("TASKFLOW_AUTH is off: the API is open and there is nothing to log in to")


def _secure(request: Request, settings: Settings) -> bool:
    """Whether the browser reached us over https: directly (or through a proxy uvicorn's
    FORWARDED_ALLOW_IPS trusts), or through one TASKFLOW_TRUST_FORWARDED_PROTO vouches for."""
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return settings.trust_forwarded_proto and proto == "https"


def _out(login: login_db.Login, token: str) -> LoginOut:
    return LoginOut(tenant=login.tenant, key_id=login.key_id, expires_at=login.expires_at,
                    csrf_token=csrf_token(token))


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


@router.post("/session", response_model=LoginOut,
             responses=documented(401, 403, 409, 422, 429))
async def log_in(body: LoginIn, request: Request, response: Response, db: DbDep,
                 settings: SettingsDep) -> LoginOut:
    """Log in with an API key: sets the ``taskflow_session`` cookie (HttpOnly,
    SameSite=Strict; Secure over https) for ``TASKFLOW_SESSION_TTL_S`` seconds."""
    _open(settings)
    if not same_origin(request):  # another site must not log a browser in as itself
        raise Forbidden("a cross-origin page cannot log in")
    ring: KeyRing = request.app.state.keys
    tenant = await ring.tenant_of(body.key, client=_client(request))
    if tenant is None or tenant.name is None or tenant.key_id is None:
        raise Unauthorized("the API key is not valid or has been revoked")
    await ring.spend(tenant.key_id)  # a login is one of the key's requests
    token = secrets.token_urlsafe(32)
    login = await login_db.create(db, token=token, key_id=tenant.key_id, tenant=tenant.name,
                                  role=tenant.role, ttl_s=settings.session_ttl_s)
    response.set_cookie(constants.LOGIN_COOKIE, token, max_age=math.ceil(settings.session_ttl_s),
                        path="/", secure=_secure(request, settings), httponly=True,
                        samesite="strict")
    response.headers["Cache-Control"] = "no-store"
    return _out(login, token)


@router.get("/session", response_model=LoginOut, responses=documented(401, 409, 429))
async def who(request: Request, response: Response, settings: SettingsDep) -> LoginOut:
    """Who is logged in with this browser's cookie, until when, and its ``X-CSRF-Token``."""
    _open(settings)
    token = request.cookies.get(constants.LOGIN_COOKIE, "")
    if not token:
        raise Unauthorized("not logged in (POST /session with an API key)")
    ring: KeyRing = request.app.state.keys
    login = await ring.login_of(token, client=_client(request))
    if login is None:
        raise Unauthorized("the login has expired or ended; log in again")
    response.headers["Cache-Control"] = "no-store"
    return _out(login, token)


@router.delete("/session", status_code=204, responses=documented(403))
async def log_out(request: Request, db: DbDep, settings: SettingsDep) -> Response:
    """Log out: the login ends in every API process, and the cookie is cleared."""
    token = request.cookies.get(constants.LOGIN_COOKIE, "")
    if token:
        check_cookie_write(request, token)
        await login_db.end(db, token=token)
    response = Response(status_code=204)
    response.delete_cookie(constants.LOGIN_COOKIE, path="/", secure=_secure(request, settings),
                           httponly=True, samesite="strict")
    return response
