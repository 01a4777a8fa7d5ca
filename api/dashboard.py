"""The dashboard: one HTML page and its assets, served by the API at ``/``.

The page is hand-written HTML, CSS and JavaScript in ``api/static/``: no build step, and
nothing is loaded from the network. The script talks to the public HTTP API only
(``/tasks``, ``/events``, ``/stats``, ``/handlers``).

The one thing the server adds to the page is the change position the feed has reached
when the page was rendered. The script reads the task list after that and then opens
``/events?after=<position>``, so every change the list does not reflect is streamed:
there is no gap between the first read and the live stream. It also says whether
the API is open (``TASKFLOW_AUTH`` off: the page says so in a banner) or closed: then the
page asks for an API key once (``POST /session``) and works with the login cookie.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from api.deps import FeedDep, SettingsDep
from api.problems import NotFound

STATIC = Path(__file__).resolve().parent / "static"

# The only files served from /static/, with their media types: nothing else in the folder
# (or outside it) can be reached through the URL.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "workflow.js": "text/javascript; charset=utf-8",  # the workflow page (api/workflows.py)
    "workflow.css": "text/css; charset=utf-8",
}

# Everything comes from this origin; no inline script or style is needed by the page.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

POSITION_MARK = "__CHANGE_POSITION__"
AUTH_MARK = "__AUTH__"

router = APIRouter(include_in_schema=False)


@functools.cache
def _page() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def dashboard(feed: FeedDep, settings: SettingsDep) -> HTMLResponse:
    """The live dashboard."""
    html = (_page().replace(POSITION_MARK, str(int(feed.last)))
            .replace(AUTH_MARK, "on" if settings.auth else "off"))
    return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                       "Content-Security-Policy": CSP,
                                       "X-Content-Type-Options": "nosniff"})


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    """A dashboard asset (``app.js``, ``app.css``)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no asset {name!r}")
    return FileResponse(STATIC / name, media_type=media_type,
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
