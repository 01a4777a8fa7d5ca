"""The dashboard in a real browser: Debian's chromium, driven by Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``make
system-deps`` installs it). Every test runs the real services as processes on its own
topic and database, and the page talks to them over real HTTP and SSE.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright

from projector.store import trim_changes
from tests.helpers import ARTIFACTS, ROOT, Env, Proc, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = ARTIFACTS / "screenshots"
README_SHOT = ROOT / "docs" / "dashboard.png"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000
PARTITIONS = 6  # what the env fixture creates


def _chromium() -> str:
    assert CHROMIUM.exists(), "chromium is missing: run `make system-deps`"
    return str(CHROMIUM)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


class Dashboard:
    """One browser tab on the dashboard, recording what went wrong in it."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []        # uncaught exceptions in the page
        self.console: list[str] = []       # console errors (CSP violations show up here)
        self.posts: list[str] = []         # every POST the page sent
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: self.posts.append(r.url) if r.method == "POST" else None)

    async def js(self, expression: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expression, arg)

    async def until(self, expression: str, arg: Any = None, *, timeout: float = WAIT_MS) -> Any:
        """Poll ``expression`` in the page until it is truthy.

        Not ``wait_for_function``: that evaluates a string inside the page, which the
        dashboard's Content-Security-Policy (no 'unsafe-eval') rightly refuses.
        """

        async def check() -> Any:
            return await self.js(expression, arg)

        return await wait_until(check, timeout=timeout / 1000, interval=0.1, what=expression)

    def row(self, task_id: str) -> str:
        return f'#task-rows tr[data-task-id="{task_id}"]'

    async def status_of(self, task_id: str) -> str | None:
        value = await self.page.get_attribute(self.row(task_id), "data-status", timeout=WAIT_MS)
        return value

    async def shot(self, name: str, *, full_page: bool = True) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / name
        await self.page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        return path


async def open_dashboard(browser: Browser, env: Env, path: str = "/",
                         **context: Any) -> Dashboard:
    ctx = await browser.new_context(viewport=context.pop("viewport", DESKTOP), **context)
    page = await ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    dash = Dashboard(page)
    await page.goto(env.base_url + path)
    await dash.until("window.taskflow && window.taskflow.connected && window.taskflow.ready"
                     " && document.querySelectorAll('#counts li, #lag li').length > 0")
    return dash


async def start_services(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()


async def changes(env: Env) -> list[int]:
    conn = await env.db()
    try:
        rows = await conn.fetch("SELECT position FROM task_changes ORDER BY position")
    finally:
        await conn.close()
    return [int(r["position"]) for r in rows]


async def final_statuses(env: Env) -> dict[str, str]:
    conn = await env.db()
    try:
        rows = await conn.fetch("SELECT task_id::text AS id, status FROM tasks")
    finally:
        await conn.close()
    return {r["id"]: r["status"] for r in rows}


async def test_a_task_created_in_the_form_is_watched_live_from_pending_to_done(
        env: Env, browser: Browser) -> None:
    env.proc("projector")
    worker = env.proc("worker")
    await env.api()
    await wait_until(lambda: _worker_ready(worker), timeout=30, what="the worker to own partitions")
    dash = await open_dashboard(browser, env)
    page = dash.page
    await dash.js("window.__sameDocument = true")

    # Freeze the worker for a moment so that PENDING is there to be seen, deterministically.
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        form = page.locator("#create-form")
        await form.get_by_label("Title").fill("say hi")
        await form.get_by_label("Type").select_option("echo")
        await form.get_by_label("Payload").fill('{"message": "hi"}')
        await form.get_by_role("button", name="Create task").click()
        await dash.until("document.querySelector('#form-status').textContent.includes('Created')")
        await dash.until("window.taskflow.rows.size === 1")
        [task_id] = await dash.js("[...window.taskflow.rows.keys()]")
        assert await dash.status_of(task_id) == "PENDING"
        row = page.locator(dash.row(task_id))
        assert await row.locator("th button").inner_text() == "say hi"
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    await dash.until("id => document.querySelector(`tr[data-task-id='${id}']`)"
                     ".dataset.status === 'DONE'", task_id)
    assert await row.locator(".col-summary").inner_text() == "hi"
    assert await dash.js("window.__sameDocument") is True  # live, not a reload
    # The detail panel followed the new task, and every change came over the stream once.
    detail = page.locator("#detail")
    await dash.until("document.querySelector('#detail').dataset.status === 'DONE'")
    assert "hi" in await detail.locator("#d-result").inner_text()
    assert await detail.locator("#d-progress").evaluate("e => e.value") == 100
    await dash.until("document.querySelectorAll('#d-timeline li').length === 3")
    assert await detail.locator(".event-type").all_inner_texts() == [
        "task.created", "task.processing", "task.done"]
    await wait_until(lambda: _seen_everything(dash, env), timeout=30,
                     what="the page to receive every change")
    await dash.until("document.querySelector(\"#counts [data-status='DONE'] b\")"
                     ".textContent === '1'")
    await dash.shot("table-and-detail.png")
    assert dash.errors == [] and dash.console == []


async def test_a_failing_task_shows_its_error_and_timeline_and_can_be_redriven(
        env: Env, browser: Browser) -> None:
    await start_services(env)
    dash = await open_dashboard(browser, env)
    page = dash.page
    form = page.locator("#create-form")
    await form.get_by_label("Title").fill("no message")
    await form.get_by_label("Payload").fill("{}")
    await form.get_by_role("button", name="Create task").click()
    await dash.until("window.taskflow.rows.size === 1")
    [task_id] = await dash.js("[...window.taskflow.rows.keys()]")
    await dash.until("id => document.querySelector(`tr[data-task-id='${id}']`)"
                     ".dataset.status === 'FAILED'", task_id)

    # The panel follows a task created in the form; close it and open it from the table.
    await page.get_by_role("button", name="Close task details").click()
    assert await page.locator("#detail").is_hidden()
    await page.locator(dash.row(task_id)).get_by_role("button", name="no message").click()
    detail = page.locator("#detail")
    await dash.until("document.querySelector('#detail').dataset.status === 'FAILED'"
                     " && document.querySelectorAll('#d-timeline li').length === 4")
    assert await detail.locator("#d-status").inner_text() == "FAILED"
    assert "message" in await detail.locator("#d-error").inner_text()
    assert await detail.locator(".event-type").all_inner_texts() == [
        "task.created", "task.processing", "task.failed", "task.dead_lettered"]
    assert await detail.locator(".event-attempt").nth(2).inner_text() == "attempt 1"
    assert all(t for t in await detail.locator(".event time").all_inner_texts())
    failed = detail.locator("#d-timeline li").nth(2)
    await failed.locator("summary").click()
    shown = await failed.locator("pre").inner_text()
    assert task_id in shown and '"type": "task.failed"' in shown
    assert await detail.get_by_role("button", name="Cancel").is_disabled()
    assert await detail.get_by_role("button", name="Retry").is_enabled()
    await dash.shot("detail-failed.png")

    dead = page.locator(f'#dead-list li[data-task-id="{task_id}"]')
    await dead.wait_for()
    await dead.get_by_role("button", name="Redrive no message").click()
    # It runs again as attempt 2, fails again (still no message) and is dead again, live.
    await dash.until("document.querySelectorAll('#d-timeline li').length >= 8")
    types = await detail.locator(".event-type").all_inner_texts()
    assert types[4:] == ["task.redriven", "task.processing", "task.failed", "task.dead_lettered"]
    attempts = await detail.locator(".event-attempt").all_inner_texts()
    assert attempts[5:] == ["attempt 2"] * 3  # a new run, numbered as one
    assert await failed.locator("details").get_attribute("open") is not None  # kept open
    await dash.until("id => document.querySelector(`tr[data-task-id='${id}']`).dataset.status"
                     " === 'FAILED' && window.taskflow.rows.get(id).task.attempt === 2", task_id)
    assert dash.errors == [] and dash.console == []


async def test_the_page_survives_api_restarts_and_misses_no_change(
        env: Env, browser: Browser) -> None:
    await start_services(env)
    dash = await open_dashboard(browser, env)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as client:
        ids = [await _submit(client, f"before {i}", "echo", _echo(i)) for i in range(4)]
        # Two slow tasks are still running when the API goes away, and finish meanwhile.
        slow = [await _submit(client, f"slow {i}", "sleep", {"seconds": 4}) for i in range(2)]
    ids += slow
    await dash.until("ids => ids.every(id => document.querySelector("
                     "`tr[data-task-id='${id}']`)?.dataset.status === 'PROCESSING')", slow)

    # 1. The API restarts: the browser reconnects by itself and sends Last-Event-ID.
    await asyncio.to_thread(_proc(env, "api0").terminate, 30)
    await dash.until("!window.taskflow.connected")
    await wait_until(lambda: _statuses_are(env, slow, "DONE"), timeout=30,
                     what="slow tasks to finish while the API is down")
    await env.api()  # same port
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as client:
        ids += [await _submit(client, f"after {i}", "echo", _echo(i)) for i in range(4)]
    await _page_has_caught_up(dash, env, len(ids))
    assert await dash.js("window.taskflow.streams") == 1  # the browser's own reconnect

    # 2. The stream answers 503 for a while (a proxy without a backend): the browser gives
    # up for good, and the page resumes with ?after=<last id seen>.
    await dash.page.route(_is_stream, _refuse)
    await asyncio.to_thread(_proc(env, "api1").terminate, 30)
    await dash.until("window.taskflow.streams >= 2")  # it gave up and we tried again
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as client:
        ids += [await _submit(client, f"late {i}", "echo", _echo(i)) for i in range(2)]
    await wait_until(lambda: _all_final(env, len(ids)), timeout=60, what="every task to finish")
    assert not await dash.js("window.taskflow.connected")
    await dash.page.unroute(_is_stream, _refuse)
    expected = await _page_has_caught_up(dash, env, len(ids))
    assert dash.errors == []

    await _other_views(browser, env, dash, expected, slow[0])


async def test_changes_trimmed_while_away_make_the_page_reload_rather_than_skip(
        env: Env, browser: Browser) -> None:
    await start_services(env)
    dash = await open_dashboard(browser, env)
    await dash.page.route(_is_stream, _refuse)  # the page stays away once the API restarts
    await asyncio.to_thread(_proc(env, "api0").terminate, 30)
    await dash.until("!window.taskflow.connected")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as client:
        ids = [await _submit(client, f"away {i}", "echo", _echo(i)) for i in range(3)]
    expected = await wait_until(lambda: _all_final(env, len(ids)), timeout=60,
                                what="every task to finish")
    conn = await env.db()
    try:  # retention trims every change the page has not seen yet
        await trim_changes(conn, schema="public", max_age_s=86_400, max_rows=0)
    finally:
        await conn.close()
    await dash.page.unroute(_is_stream, _refuse)
    await dash.until("window.taskflow.resets === 1 && window.taskflow.connected")
    await dash.until("want => Object.entries(want).every(([id, s]) => document.querySelector("
                     "`tr[data-task-id='${id}']`)?.dataset.status === s)", expected)
    assert await dash.js("window.taskflow.seen") == []  # nothing streamed: it was all trimmed
    assert dash.errors == []


def _is_stream(url: str) -> bool:
    return "/events?" in url


async def _refuse(route: Route) -> None:
    """A proxy with no backend behind it."""
    await route.fulfill(status=503, body="")


async def _page_has_caught_up(dash: Dashboard, env: Env, n: int) -> dict[str, str]:
    """Every task on the page with its final status, and every change seen exactly once."""
    expected = await wait_until(lambda: _all_final(env, n), timeout=60,
                                what="every task to finish")
    assert expected is not None
    await dash.until("want => Object.entries(want).every(([id, s]) => document.querySelector("
                     "`tr[data-task-id='${id}']`)?.dataset.status === s)", expected)
    await wait_until(lambda: _seen_everything(dash, env), timeout=30,
                     what="the page to receive every change")
    seen = await dash.js("window.taskflow.seen")
    assert seen == await changes(env)  # strictly increasing, none missing, none twice
    assert seen == sorted(set(seen))
    assert await dash.js("window.taskflow.connected") is True
    assert await dash.page.locator("#task-rows tr").count() == n
    return expected


async def test_invalid_json_is_caught_before_sending_and_server_errors_sit_by_their_field(
        env: Env, browser: Browser) -> None:
    await env.api()  # no worker or projector needed: nothing is meant to be created
    dash = await open_dashboard(browser, env)
    page = dash.page
    form = page.locator("#create-form")
    payload_error = page.locator("#f-payload-error")
    await form.get_by_label("Title").fill("bad payload")
    await form.get_by_label("Payload").fill('{"message": "hi",}')
    await form.get_by_role("button", name="Create task").click()
    await payload_error.wait_for(state="visible")
    assert "Not valid JSON" in await payload_error.inner_text()
    assert await form.get_by_label("Payload").get_attribute("aria-invalid") == "true"
    assert await page.evaluate("document.activeElement.id") == "f-payload"
    await dash.shot("form-error.png")

    await form.get_by_label("Payload").fill('["not", "an", "object"]')
    await form.get_by_role("button", name="Create task").click()
    await dash.until("document.querySelector('#f-payload-error').textContent"
                     ".includes('JSON object')")
    assert dash.posts == []  # nothing was sent

    # A server-side 422 (problem+json) lands next to the field its `loc` names.
    await form.get_by_label("Payload").fill('{"message": "hi"}')
    await dash.until("document.querySelector('#f-payload-error').hidden")
    await form.get_by_label("Title").fill("")
    await form.get_by_role("button", name="Create task").click()
    title_error = page.locator("#f-title-error")
    await title_error.wait_for(state="visible")
    assert "at least 1 character" in await title_error.inner_text()
    assert "Unprocessable content" in await page.locator("#form-status").inner_text()
    assert await payload_error.is_hidden()
    assert [p.rsplit("/", 1)[-1] for p in dash.posts] == ["tasks"]
    assert dash.errors == []
    assert [m for m in dash.console if "422" not in m] == []


def _echo(i: int) -> dict[str, Any]:
    """Even ones end DONE, odd ones (no message) FAILED and dead-lettered."""
    return {"message": f"m{i}"} if i % 2 == 0 else {}


def _proc(env: Env, name: str) -> Proc:
    return next(p for p in env.procs if p.name == name)


async def _worker_ready(worker: Proc) -> bool:
    return worker.output().count("recovered at offset") >= PARTITIONS


async def _submit(client: httpx.AsyncClient, title: str, type_: str,
                  payload: dict[str, Any]) -> str:
    r = await client.post("/tasks", json={"title": title, "type": type_, "payload": payload})
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


async def _statuses_are(env: Env, ids: list[str], status: str) -> bool:
    got = await final_statuses(env)
    return all(got.get(i) == status for i in ids)


async def _all_final(env: Env, n: int) -> dict[str, str] | None:
    got = await final_statuses(env)
    final = {k: v for k, v in got.items() if v in ("DONE", "FAILED")}
    if len(got) != n or len(final) != n:
        return None
    conn = await env.db()
    try:  # the last change of a failed task is its dead-lettering
        dead = await conn.fetchval("SELECT count(*) FROM tasks WHERE dead_lettered")
    finally:
        await conn.close()
    return final if dead == sum(v == "FAILED" for v in final.values()) else None


async def _seen_everything(dash: Dashboard, env: Env) -> bool:
    return bool(await dash.js("window.taskflow.seen") == await changes(env))


async def _other_views(browser: Browser, env: Env, dash: Dashboard, expected: dict[str, str],
                       task_id: str) -> None:
    """Screenshots of the main views (for the artifacts and the README), and the filter,
    paging and small-screen behaviour on the same data."""
    page = dash.page
    await page.locator(dash.row(task_id)).get_by_role("button").click()
    await dash.until("document.querySelectorAll('#d-timeline li').length >= 5")
    main = await dash.shot("dashboard.png")
    if not README_SHOT.exists() or os.environ.get("TASKFLOW_UPDATE_DOCS") == "1":
        # Only on request, so that running the tests leaves the working tree clean.
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(main, README_SHOT)

    dark = await open_dashboard(browser, env, color_scheme="dark")
    await dark.page.locator(dark.row(task_id)).get_by_role("button").click()
    await dark.until("document.querySelectorAll('#d-timeline li').length >= 5")
    assert await dark.js("getComputedStyle(document.body).backgroundColor") == "rgb(15, 18, 22)"
    await dark.shot("dashboard-dark.png")
    # Filtering by status reloads the table with just those tasks, and says so in the URL.
    await dark.page.locator("#filter-status").select_option("FAILED")
    failed = sorted(k for k, v in expected.items() if v == "FAILED")
    await dark.until("n => window.taskflow.ready && window.taskflow.rows.size === n", len(failed))
    assert sorted(await dark.js("[...window.taskflow.rows.keys()]")) == failed
    assert dark.page.url.endswith("?status=FAILED")

    # A phone, paging back through history four tasks at a time.
    phone = await open_dashboard(browser, env, "/?limit=4", viewport=PHONE, is_mobile=True,
                                 has_touch=True)
    assert await phone.page.locator("#task-rows tr").count() == 4
    assert await phone.js("document.documentElement.scrollWidth") <= PHONE["width"]
    await phone.shot("phone.png")
    older = phone.page.get_by_role("button", name="Older")
    rows = 4
    while rows < len(expected):
        await older.click()
        rows = min(len(expected), rows + 4)
        await phone.until("n => document.querySelectorAll('#task-rows tr').length === n", rows)
    assert await older.is_hidden()
    shown = await phone.js("[...document.querySelectorAll('#task-rows tr')]"
                           ".map(tr => tr.dataset.taskId)")
    assert sorted(shown) == sorted(expected)
    assert dark.errors == [] and phone.errors == []
