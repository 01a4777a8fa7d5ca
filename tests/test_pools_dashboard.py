"""The dashboard's worker pools, in a real browser (see tests/test_dashboard.py): which pool
serves which types, the types none serves, and why a task of such a type waits."""

from __future__ import annotations

import httpx
from playwright.async_api import Browser

from tests.helpers import Env
from tests.test_dashboard import browser, open_dashboard
from tests.test_worker import submit

__all__ = ["browser"]  # the fixture, used by name

TYPES = "echo,sleep,fail,flaky,compute,noop,pooled"


async def test_the_dashboard_shows_the_pools_and_why_a_task_waits(
        env: Env, browser: Browser) -> None:
    env.extra.update(TASKFLOW_TASK_TYPES=TYPES, TASKFLOW_POOLED_TYPES="pooled",
                     TASKFLOW_HANDLER_MODULES="tests.plugin_handlers",
                     TASKFLOW_WORKER_POOL_REFRESH_S="0.5")
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "waits", "type": "pooled", "payload": {}})
    dash = await open_dashboard(browser, env)
    page = dash.page
    await dash.until("!!document.querySelector('#pools li[data-pool=\"default\"]')")
    default = await page.locator('#pools li[data-pool="default"]').inner_text()
    assert default.startswith("default ×1:") and "echo" in default and "pooled" not in default
    await dash.until("document.querySelector('#pools li[data-unserved]')"
                     "?.dataset.unserved === 'pooled'")

    await dash.until("window.taskflow.rows.size === 1")
    await page.locator(dash.row(tid) + " th button").click()
    await dash.until("document.querySelector('#detail').dataset.taskId === "
                     f"'{tid}' && !document.querySelector('#d-waiting').hidden")
    assert await page.locator("#d-waiting").inner_text() == (
        "no running worker pool serves type 'pooled'")
    await dash.shot("pools-and-waiting-task.png")

    # A pool for the type starts: the page lists it with no reload, and the task runs.
    env.proc("worker", "--types", "pooled")
    await dash.until("!!document.querySelector('#pools li[data-pool=\"pooled\"]')")
    assert (await page.locator('#pools li[data-pool="pooled"]').inner_text()
            == "pooled ×1: pooled")
    await dash.until("!document.querySelector('#pools li[data-unserved]')")
    await dash.until("document.querySelector('#detail').dataset.status === 'DONE'")
    assert await page.locator("#d-waiting").is_hidden()
    assert dash.errors == [] and dash.console == []
