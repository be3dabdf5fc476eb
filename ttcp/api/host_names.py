"""Which names the API answers to, from the Host header (pure; see ttcp.api.guards).

A web page can make its visitor's browser call an API on 127.0.0.1 under the
page's own name: the attacker's name resolves to the attacker's server first,
then to 127.0.0.1, and the browser treats the answers as same-origin (DNS
rebinding). Such requests carry the attacker's name in `Host`. So the API
answers only requests whose Host names it the way it is really reached: an IP
literal (IPv4, or IPv6 in brackets; any port: Kubernetes probes and Prometheus
scrapes use the pod's IP), `localhost`, or a name given with `--allowed-host`.
"""

from __future__ import annotations

import ipaddress
import re

from ttcp.errors import TtcpError

ALWAYS_ALLOWED = frozenset({"localhost"})
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_BRACKETED = re.compile(r"^\[([^\[\]]+)\](?::(\d*))?$")


class HostNameError(TtcpError, ValueError):
    """A name --allowed-host cannot take; the message says why."""


def normalize_name(text: str) -> str:
    """A DNS name for --allowed-host, lower-case, without a trailing dot (HostNameError if not one)."""
    name = text.strip().lower().removesuffix(".")
    if ":" in name or "/" in name:
        raise HostNameError(f"{text!r}: give a name without scheme or port (e.g. ttcp.example.com)")
    if "*" in name:
        raise HostNameError(f"{text!r}: wildcards are not accepted; give each name")
    if not name.isascii() or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise HostNameError(f"{text!r} is not a DNS name")
    return name


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a Host header value names this API: an IP literal, localhost or one of `names`."""
    bracketed = _BRACKETED.match(host)
    if bracketed:
        addr, port = bracketed.group(1), bracketed.group(2)
        return _is_ip(addr, 6) and _port_ok(port)
    name, colon, port = host.partition(":")
    if colon and not _port_ok(port):
        return False
    if _is_ip(name, 4):
        return True
    name = name.lower().removesuffix(".")
    return name.isascii() and (name in ALWAYS_ALLOWED or name in names)


def _port_ok(port: str | None) -> bool:
    return port is None or port == "" or (port.isascii() and port.isdigit() and int(port) <= 0xFFFF)


def is_loopback(host: str) -> bool:
    """Whether a --host address only listens on loopback ("localhost" counts)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
