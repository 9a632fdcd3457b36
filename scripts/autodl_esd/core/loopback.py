"""Loopback HTTP endpoints and the Host header: a defence against DNS rebinding.

A web page can make the browser send requests to 127.0.0.1 under a name the attacker
controls (DNS rebinding); the only tell is the Host header. Every loopback HTTP endpoint of
the bundle (the registry endpoint, the gateway) accepts only loopback names in Host:
`localhost` (and `*.localhost`), 127.0.0.0/8, ::1, plus names the user configures.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable


def is_loopback_name(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_header_name(value: str) -> str:
    """The host part of a Host header value, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_header_allowed(value: str | None, extra: Iterable[str] = ()) -> bool:
    """True for a loopback Host (or one of `extra`); a missing Host (HTTP/1.0) is allowed,
    since browsers always send one."""
    if not value:
        return True
    name = host_header_name(value)
    return is_loopback_name(name) or name in {h.strip("[]").lower() for h in extra}
