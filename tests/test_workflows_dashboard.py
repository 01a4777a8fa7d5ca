"""The dashboard's workflow page in a real browser (see tests/test_dashboard.py)."""

from __future__ import annotations

import httpx
from playwright.async_api import Browser

from tests.helpers import Env
from tests.test_api import cli
from tests.test_dashboard import WAIT_MS, Dashboard, browser
from tests.test_workflows import TYPES, echo, services, submit, wenv

__all__ = ["browser", "wenv"]  # the fixtures, used by name


async def test_workflow_page_draws_the_dag_with_live_statuses(
        wenv: Env, browser: Browser) -> None:
    await services(wenv)
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30) as c:
        doc = await submit(c, [echo("a"),
                               {"key": "b", "title": "B", "type": "sleep",
                                "payload": {"seconds": 3}, "depends_on": ["a"]},
                               echo("c", "a"), echo("d", "b", "c")])
    wid = doc["workflow_id"]
    ctx = await browser.new_context(viewport={"width": 1366, "height": 900})
    page = await ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    dash = Dashboard(page)
    await page.goto(f"{wenv.base_url}/ui/workflows/{wid}")
    box = "document.querySelector('a.node[data-key=\"{}\"]')"
    await dash.until(f"!!{box.format('d')}")
    assert await dash.page.locator("#dag path.edge").count() == 4
    assert await dash.page.locator("#dag a.node").count() == 4
    # Live: b is seen running, then everything DONE, without a reload.
    await dash.until(f"{box.format('b')}.dataset.status === 'STARTED'")
    await dash.until(f"{box.format('d')}.dataset.status === 'DONE'", timeout=60_000)
    await dash.until("document.getElementById('wf-status').textContent === 'DONE'")
    for key in "abcd":
        href = await dash.page.locator(f'a.node[data-key="{key}"]').get_attribute("href")
        assert href == f"/?task={doc['tasks'][key]}"
    # D is drawn to the right of both of its parents.
    xs = {k: float(await dash.page.locator(f'a.node[data-key="{k}"] rect').get_attribute("x")
                   or 0) for k in "abcd"}
    assert xs["a"] < xs["b"] == xs["c"] < xs["d"]
    await dash.shot("workflow-page.png")
    assert dash.errors == [] and dash.console == []
    # A node opens its task's panel on the dashboard.
    await dash.page.locator('a.node[data-key="d"]').click()
    await dash.until("document.querySelector('#detail').dataset.status === 'DONE'")
    assert await dash.page.locator("#d-id").inner_text() == doc["tasks"]["d"]
    assert dash.errors == [] and dash.console == []


async def test_workflow_page_without_a_login_links_to_the_dashboard(
        wenv: Env, browser: Browser) -> None:
    wenv.proc("projector")
    await wenv.api(TASKFLOW_AUTH="true", TASKFLOW_TASK_TYPES=TYPES)
    key = cli(wenv, "keys", "create", "--tenant", "acme")
    async with httpx.AsyncClient(base_url=wenv.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        doc = await submit(c, [echo("a")])
    ctx = await browser.new_context()  # no cookie: the stream answers 401
    page = await ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    dash = Dashboard(page)
    await page.goto(f"{wenv.base_url}/ui/workflows/{doc['workflow_id']}")
    link = page.locator("#wf-summary a")
    await link.wait_for(state="visible")
    assert await link.get_attribute("href") == "/"
    assert "Not logged in" in await page.locator("#wf-summary").inner_text()
    assert dash.errors == []
