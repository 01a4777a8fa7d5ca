"""Calls out of TaskFlow (webhooks, the ``http`` handler): the SSRF guard.

A target is refused when any address its host resolves to is loopback, private,
link-local (which holds the cloud metadata address 169.254.169.254), shared (CGNAT),
multicast, reserved or unspecified, unless ``TASKFLOW_OUTBOUND_ALLOW`` lists it
(comma-separated addresses or networks, e.g. ``127.0.0.1,10.1.0.0/16``).

The check runs twice: when a URL is accepted (``check_url``) and again right before each
connection (``pin``), which resolves the host, checks every address, and returns the
request to send to the checked address itself, so a DNS answer that changes between the
check and the connection (DNS rebinding) cannot steer the connection elsewhere.

    OutboundRefused    the target is not allowed (or does not resolve)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic_settings import BaseSettings, SettingsConfigDict

from events.errors import TaskFlowError

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges ipaddress does not call private but no public service lives in.
EXTRA_BLOCKED: Final[tuple[Net, ...]] = (
    ipaddress.ip_network("100.64.0.0/10"),  # shared address space (CGNAT; some metadata)
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),
)
CONNECT_TIMEOUT_S: Final = 5.0  # seconds to open a connection to a target
READ_TIMEOUT_S: Final = 10.0  # seconds to wait for each read of a target's answer


class OutboundSettings(BaseSettings):
    """``TASKFLOW_OUTBOUND_*``: what outbound calls may reach, and how long they may take."""

    model_config = SettingsConfigDict(env_prefix="TASKFLOW_", frozen=True, extra="ignore")

    outbound_allow: str = ""
    outbound_connect_timeout_s: float = CONNECT_TIMEOUT_S
    outbound_read_timeout_s: float = READ_TIMEOUT_S

    def allowed(self) -> tuple[Net, ...]:
        return parse_allow(self.outbound_allow)


@lru_cache(maxsize=1)
def outbound_settings() -> OutboundSettings:
    return OutboundSettings()


class OutboundRefused(TaskFlowError):
    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason

    def __repr__(self) -> str:
        return f"OutboundRefused(target={self.target!r}, reason={self.reason!r})"


def parse_allow(spec: str) -> tuple[Net, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False)
                 for p in spec.split(",") if p.strip())


def blocked(ip: IP) -> bool:
    """True for addresses a public target never has."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return blocked(ip.ipv4_mapped)
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified
            or any(ip in n for n in EXTRA_BLOCKED if n.version == ip.version))


def permitted(ip: IP, allow: tuple[Net, ...]) -> bool:
    return any(ip in n for n in allow if n.version == ip.version) or not blocked(ip)


async def resolve(host: str, port: int, allow: tuple[Net, ...]) -> list[IP]:
    """Every address of ``host``, all of them permitted; else ``OutboundRefused``."""
    try:
        literal: IP | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addrs = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OutboundRefused(host, f"does not resolve: {exc}") from None
        addrs = list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos))
    for ip in addrs:
        if not permitted(ip, allow):
            raise OutboundRefused(host, f"resolves to {ip}, a non-public address "
                                  "(TASKFLOW_OUTBOUND_ALLOW lists exceptions)")
    if not addrs:
        raise OutboundRefused(host, "does not resolve")
    return addrs


def _split(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused(url, "only http and https URLs are allowed")
    if not parts.hostname:
        raise OutboundRefused(url, "the URL has no host")
    if parts.username or parts.password:
        raise OutboundRefused(url, "credentials in the URL are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise OutboundRefused(url, "the port is not valid") from None
    return parts.scheme, parts.hostname, port


async def check_url(url: str, allow: tuple[Net, ...]) -> None:
    """Refuse ``url`` (``OutboundRefused``) unless every address of its host is permitted."""
    _, host, port = _split(url)
    await resolve(host, port, allow)


@dataclass(frozen=True)
class Pinned:
    """A request aimed at a checked address: send ``url`` with ``headers``/``extensions``."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


async def pin(url: str, allow: tuple[Net, ...]) -> Pinned:
    """Resolve and check ``url``'s host now, and aim the request at the first address.

    The ``Host`` header keeps the name, and TLS still verifies the certificate for it
    (httpx's ``sni_hostname``).
    """
    scheme, host, port = _split(url)
    ip = (await resolve(host, port, allow))[0]
    parts = urlsplit(url)
    netloc = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    default = port == (443 if scheme == "https" else 80)
    host_header = host if default else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if default else f"[{host}]:{port}"
    ext: dict[str, Any] = {"sni_hostname": host} if scheme == "https" else {}
    return Pinned(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")),
                  {"host": host_header}, ext)
