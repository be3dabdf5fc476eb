"""Filter addresses: parse operator text, encode map keys (pure).

The filter map is keyed by 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d, so
one table covers IPv4, IPv6 and dual-stack sockets carrying v4-mapped
addresses. The canonical text of a key shows IPv4 (and v4-mapped) in dotted
form, so "::ffff:10.0.0.1" and "10.0.0.1" are one entry.
"""

from __future__ import annotations

import functools
import ipaddress

KEY_SIZE = 16
_V4_PREFIX = bytes(10) + b"\xff\xff"
MAX_TEXT = 128


class AddressError(ValueError):
    """Text that is not a single IPv4 or IPv6 address; the message says why."""


def parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse one address; refuse networks, zones and anything else."""
    raw = text.strip()
    shown = raw if len(raw) <= MAX_TEXT else raw[:MAX_TEXT] + "..."
    if not raw:
        raise AddressError("empty address")
    if "/" in raw:
        raise AddressError(f"{shown!r} is a network (CIDR); give single addresses")
    if "%" in raw:
        raise AddressError(f"{shown!r} has a zone index; zones cannot be filtered on")
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise AddressError(f"{shown!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def to_key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte map key for an address."""
    if isinstance(addr, ipaddress.IPv4Address):
        return _V4_PREFIX + addr.packed
    return addr.packed


def key_of(text: str) -> bytes:
    """Map key for operator text (raises AddressError)."""
    return to_key(parse(text))


@functools.lru_cache(maxsize=8192)
def from_key(key: bytes) -> str:
    """Canonical text of a 16-byte key (IPv4 for v4-mapped keys).

    Cached: the same few addresses recur in every event and every listing,
    and ipaddress takes microseconds per conversion."""
    if len(key) != KEY_SIZE:
        raise AddressError(f"key of {len(key)} bytes, expected {KEY_SIZE}")
    if key[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(key[12:]))
    return str(ipaddress.IPv6Address(key))


def canonical(text: str) -> str:
    """Canonical text of an address given as text."""
    return from_key(key_of(text))
