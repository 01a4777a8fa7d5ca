"""The SSRF guard: non-public targets refused at creation and again at connect time."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import httpx
import pytest

from events import webhooks as wh
from events.log import delete_topics
from events.outbound import OutboundRefused, blocked, check_url, parse_allow, pin
from tests.helpers import Env

NONE = parse_allow("")
LOOPBACK = parse_allow("127.0.0.1")


@pytest.mark.parametrize("addr", [
    "127.0.0.1", "127.9.9.9", "10.0.0.1", "172.16.5.5", "192.168.1.1", "169.254.169.254",
    "100.100.100.200", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00:ec2::254",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::",
])
def test_non_public_addresses_are_blocked(addr: str) -> None:
    assert blocked(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_not(addr: str) -> None:
    assert not blocked(ipaddress.ip_address(addr))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost:8080/hook", "http://[::1]/",
    "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/", "https://192.168.0.1/",
    "http://[::ffff:127.0.0.1]/", "http://2130706433/",
])
async def test_non_public_targets_are_refused(url: str) -> None:
    with pytest.raises(OutboundRefused):
        await check_url(url, NONE)
    with pytest.raises(OutboundRefused):
        await pin(url, NONE)


async def test_a_name_resolving_to_loopback_is_refused_unless_allowed() -> None:
    """``localhost`` is a DNS name, not an address: it is resolved and its addresses are
    checked, so it is refused like 127.0.0.1, and passes where every address it resolves
    to is allowed."""
    with pytest.raises(OutboundRefused, match="non-public"):
        await check_url("http://localhost:9/", NONE)
    both = parse_allow("127.0.0.1,::1")
    await check_url("http://localhost:9/", both)
    pinned = await pin("http://localhost:9/x?y=1", both)
    assert pinned.headers == {"host": "localhost:9"}
    assert pinned.url in ("http://127.0.0.1:9/x?y=1", "http://[::1]:9/x?y=1")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "file:///etc/passwd", "http:///x",
                                 "http://u:p@127.0.0.1/", "http://127.0.0.1:99999/"])
async def test_malformed_targets_are_refused(url: str) -> None:
    with pytest.raises(OutboundRefused):
        await check_url(url, LOOPBACK)


async def test_allowed_loopback_is_pinned_to_the_checked_address() -> None:
    pinned = await pin("https://127.0.0.1:8443/hook", LOOPBACK)
    assert pinned.url == "https://127.0.0.1:8443/hook"
    assert pinned.extensions == {"sni_hostname": "127.0.0.1"}


@pytest.fixture
async def hooks_env(env: Env) -> AsyncIterator[Env]:
    yield env
    await delete_topics(env.bootstrap, [wh.topic_for(env.topic)])


async def test_api_refuses_non_public_webhook_urls(hooks_env: Env) -> None:
    env = hooks_env
    env.proc("projector")
    await env.api()  # no TASKFLOW_OUTBOUND_ALLOW
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        for url in ("http://localhost:8080/hook", "http://127.0.0.1/",
                    "http://169.254.169.254/", "http://[::1]/"):
            r = await c.post("/webhooks", json={"url": url, "events": ["task.done"]})
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["errors"][0]["loc"] == ["body", "url"]
        assert (await c.get("/webhooks")).json()["items"] == []
