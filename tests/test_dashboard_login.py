"""Dashboard login in a real browser (Debian's chromium, driven by Playwright).

With the API closed the page asks for a key once, then lives on the HttpOnly cookie: the
table, the stream and the create form work as the key's tenant, another tenant's tasks
never show, and logging out (or revoking the key while the page runs) brings the form
back. With the API open, a banner says so.
"""

from __future__ import annotations

import functools

import httpx
from playwright.async_api import Browser, Request, ViewportSize

from tests.helpers import Env, wait_until
from tests.test_api import cli
from tests.test_dashboard import DESKTOP, WAIT_MS, Dashboard, browser, open_dashboard

__all__ = ["browser"]  # the fixture, shared with tests/test_dashboard.py


async def _done(c: httpx.AsyncClient, key: str, task_id: str) -> bool:
    r = await c.get(f"/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"})
    return r.status_code == 200 and r.json()["status"] == "DONE"


async def test_a_login_shows_its_tenants_tasks_live_and_logging_out_asks_again(
        env: Env, browser: Browser) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api(TASKFLOW_AUTH="true")
    key_a = cli(env, "keys", "create", "--tenant", "acme")
    key_b = cli(env, "keys", "create", "--tenant", "globex")
    a, b = ({"Authorization": f"Bearer {k}"} for k in (key_a, key_b))
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        ours = (await c.post("/tasks", json={"title": "acme before", "payload": {
            "message": "a1"}}, headers=a)).json()["task_id"]
        theirs = [(await c.post("/tasks", json={"title": "globex before", "payload": {
            "message": "b1"}}, headers=b)).json()["task_id"]]

        ctx = await browser.new_context(viewport=ViewportSize(width=DESKTOP["width"],
                                                             height=DESKTOP["height"]))
        page = await ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        dash = Dashboard(page)
        writes: list[dict[str, str]] = []

        def on_request(r: Request) -> None:
            if r.method != "GET":
                writes.append({**r.headers, "url": r.url, "method": r.method})

        page.on("request", on_request)
        await page.goto(env.base_url + "/")
        form = page.locator("#login-form")
        await form.wait_for(state="visible")
        assert await page.locator("#app").is_hidden()
        assert await page.locator("#open-banner").is_hidden()
        await dash.shot("login.png")

        # A wrong key: the problem is shown, and the form stays.
        await form.get_by_label("API key").fill("tfk_nope_wrong")
        await form.get_by_role("button", name="Log in").click()
        await dash.until("document.querySelector('#login-status').textContent"
                         ".includes('Unauthorized')")
        assert await page.locator("#app").is_hidden()

        await form.get_by_label("API key").fill(key_a)
        await form.get_by_role("button", name="Log in").click()
        await dash.until("window.taskflow && window.taskflow.started && window.taskflow.connected"
                         " && window.taskflow.ready")
        assert await page.locator("#login").is_hidden()
        assert await page.locator("#who-tenant").inner_text() == "acme"
        assert await page.locator("#who-key").inner_text() == key_a[4:].partition("_")[0]
        [cookie] = await ctx.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (
            "taskflow_session", True, "Strict", False)
        assert key_a not in cookie["value"]
        assert await dash.js("document.cookie") == ""  # HttpOnly: no script can read it

        await dash.until("id => window.taskflow.rows.has(id)", ours)
        await dash.shot("logged-in.png", full_page=False)
        # The live stream (on the cookie alone) brings acme's new tasks in ...
        later = (await c.post("/tasks", json={"title": "acme later", "payload": {
            "message": "a2"}}, headers=a)).json()["task_id"]
        theirs.append((await c.post("/tasks", json={"title": "globex later", "payload": {
            "message": "b2"}}, headers=b)).json()["task_id"])
        await dash.until("id => document.querySelector(`tr[data-task-id='${id}']`)"
                         "?.dataset.status === 'DONE'", later)
        # ... and the form creates one as acme, with the X-CSRF-Token.
        create = page.locator("#create-form")
        await create.get_by_label("Title").fill("made in the browser")
        await create.get_by_label("Payload").fill('{"message": "hi"}')
        await create.get_by_role("button", name="Create task").click()
        await dash.until("document.querySelector('#form-status').textContent.includes('Created')")
        made = await dash.until("[...window.taskflow.rows.values()].find("
                                "r => r.task.title === 'made in the browser')?.task.task_id")
        await dash.until("id => document.querySelector(`tr[data-task-id='${id}']`)"
                         "?.dataset.status === 'DONE'", made)
        [post] = [w for w in writes if w["url"].endswith("/tasks")]
        csrf = await page.evaluate("fetch('/session').then(r => r.json()).then(d => d.csrf_token)")
        assert post["x-csrf-token"] == csrf
        assert (await c.get(f"/tasks/{made}", headers=a)).status_code == 200
        assert (await c.get(f"/tasks/{made}", headers=b)).status_code == 404

        # globex's tasks ran to the end, and the page never learnt of them.
        for tid in theirs:
            await wait_until(functools.partial(_done, c, key_b, tid), timeout=30,
                             what="globex's task to finish")
        # Changes stream in position order: once acme's last one is shown, every globex
        # change before it would have been too.
        last = (await c.post("/tasks", json={"title": "acme last", "payload": {
            "message": "a3"}}, headers=a)).json()["task_id"]
        await dash.until("id => document.querySelector(`tr[data-task-id='${id}']`)"
                         "?.dataset.status === 'DONE'", last)
        known = await dash.js("[...window.taskflow.rows.keys(), ...window.taskflow.others.keys()]")
        assert set(known) == {ours, later, made, last}
        html = await page.content()
        assert not any(tid in html for tid in theirs)

        # Logging out brings the form back, and the cookie is gone.
        await page.get_by_role("button", name="Log out").click()
        await form.wait_for(state="visible")
        await dash.until("document.querySelector('#app').hidden")
        assert await ctx.cookies() == []
        [out] = [w for w in writes if w["method"] == "DELETE"]
        assert out["url"].endswith("/session") and out["x-csrf-token"] == csrf
        assert await page.evaluate("fetch('/tasks').then(r => r.status)") == 401

        # Revoking the key while the page runs: its next request is refused, and the page
        # stops and asks again.
        await form.get_by_label("API key").fill(key_a)
        await form.get_by_role("button", name="Log in").click()
        await dash.until("window.taskflow && window.taskflow.started && window.taskflow.connected")
        cli(env, "keys", "revoke", key_a)
        await form.wait_for(state="visible")
        await dash.until("!window.taskflow.started && window.taskflow.source === null")
        assert "ended" in await page.locator("#login-status").inner_text()
        assert await page.locator("#app").is_hidden()
        assert dash.errors == []
        # The only console errors are the refusals a logged-out page is answered with.
        assert all("401" in m or "Unauthorized" in m for m in dash.console), dash.console
        await ctx.close()


async def test_an_open_api_says_so_on_the_dashboard(env: Env, browser: Browser) -> None:
    env.proc("projector")
    await env.api()  # TASKFLOW_AUTH=off, as every other dashboard test runs
    dash = await open_dashboard(browser, env)
    banner = dash.page.locator("#open-banner")
    assert await banner.is_visible()
    assert "open" in (await banner.inner_text()).lower()
    assert await dash.page.locator("#login").is_hidden()
    assert await dash.page.locator("#who").is_hidden()
    assert dash.errors == [] and dash.console == []
