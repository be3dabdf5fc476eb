"""The filter language: parse, print and encode filters (pure).

    [src|dst] ADDRESS[/PREFIX] [port N]

`src` is the socket's local side (the table's "Src addr" column), `dst` the
remote one; a bare ADDRESS means `src ADDRESS` (a plain address, as the original
ttcp took them). ADDRESS is
IPv4 or IPv6; /PREFIX makes it a network (host bits must be zero, and a full
length prefix is the host itself); `port N` (1-65535) restricts the match to
that port on the same side. Keywords are case-insensitive; the canonical text
is lower-case, with canonical addresses, and leaves `src` out of a plain host:
"10.178.0.5", "src 10.0.0.0/8", "dst 10.20.0.0/16 port 5432".

Every address is stored in 16 bytes, IPv4 as ::ffff:a.b.c.d, so an IPv4
filter (host or network) also matches dual-stack sockets, and a prefix
counts bits of those 16 bytes (an IPv4 /8 is 104 there).

The kernel side (bpf/tcprtt.bpf.c) keeps exact addresses in the `hosts`
hash and networks in the `nets` LPM trie; `host_key`/`net_key` below are
their key layouts, `kind_bit` the bit of `cfg.kinds` that says a kind is in
use, and `specificity` the order the program picks among several matches.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import struct
import sys
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ttcp.errors import TtcpError

MAX_TEXT = 256  # longer text is refused before any parsing
_V4_PREFIX = bytes(10) + b"\xff\xff"
_V4_BITS = 96  # bits of the 16-byte form before an IPv4 address
ADDR_BITS = 128
HOST_BITS = 2048  # bits of each side's host bitmap (struct config in bpf/tcprtt.bpf.c)


class Side(IntEnum):
    """enum side in bpf/tcprtt.bpf.c."""

    SRC = 1
    DST = 2


class FilterError(TtcpError, ValueError):
    """Text or JSON that is not a filter; the message names the offending part (a ValueError
    too: argparse and callers that parse values expect one)."""


@dataclass(frozen=True, order=True)
class Filter:
    """One filter: a side, a network in the 16-byte form (bits == 128: a host), a port (0: any)."""

    side: Side
    addr: bytes  # 16 bytes, host bits zero
    bits: int  # prefix length over `addr`
    port: int = 0
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.addr) != 16 or not 0 <= self.bits <= ADDR_BITS or not 0 <= self.port <= 0xFFFF:
            raise FilterError(f"malformed filter {self.addr!r}/{self.bits} port {self.port}")
        # Filters key the table's index and every answer's dicts: hash once.
        object.__setattr__(self, "_hash", hash((self.side, self.addr, self.bits, self.port)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def is_host(self) -> bool:
        return self.bits == ADDR_BITS

    @property
    def is_v4(self) -> bool:
        return self.addr[:12] == _V4_PREFIX and self.bits >= _V4_BITS

    @property
    def kind_bit(self) -> int:
        """enum kind_bit in bpf/tcprtt.bpf.c: which lookups the program must do."""
        order = (0 if self.port else 2) + (0 if self.side == Side.SRC else 1) + (0 if self.is_host else 4)
        return 1 << order

    def specificity(self) -> tuple[int, int, int, int]:
        """Larger wins: exact before network, longer prefix, a port, then src before dst."""
        return (int(self.is_host), self.bits, int(bool(self.port)), int(self.side == Side.SRC))

    def __str__(self) -> str:
        return format_filter(self)

    def to_json(self) -> dict[str, Any]:
        """The JSON object form: {"side", "address" (with /PREFIX for a network), "port"}."""
        out: dict[str, Any] = {"side": self.side.name.lower(), "address": _address_text(self)}
        if self.port:
            out["port"] = self.port
        return out


# ---- text ---------------------------------------------------------------------------


_TOKEN = re.compile(r"\S+")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


@functools.lru_cache(maxsize=4096)  # API bodies name the same few filters again and again
def parse(text: str) -> Filter:
    """One filter from its text form; FilterError naming what is wrong."""
    if len(text) > MAX_TEXT:
        raise FilterError(f"filter text of {len(text)} characters (at most {MAX_TEXT})")
    tokens = _TOKEN.findall(text)
    if not tokens:
        raise FilterError("empty filter")
    side = Side.SRC
    if tokens[0].lower() in ("src", "dst"):
        side = Side[tokens.pop(0).upper()]
        if not tokens:
            raise FilterError(f"{_shown(text)}: an address must follow {side.name.lower()!r}")
    addr, bits = _parse_address(tokens.pop(0))
    port = 0
    if tokens:
        if tokens[0].lower() != "port":
            raise FilterError(f"{_shown(text)}: unexpected {_shown(tokens[0])} "
                              "(expected `port N` or the end)")
        if len(tokens) < 2:
            raise FilterError(f"{_shown(text)}: a port number must follow 'port'")
        port = parse_port(tokens[1])
        if len(tokens) > 2:
            raise FilterError(f"{_shown(text)}: unexpected {_shown(' '.join(tokens[2:]))} after the port")
    return Filter(side, addr, bits, port)


def parse_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise FilterError(f"port {_shown(text)} is not a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 0xFFFF:
        raise FilterError(f"port {_shown(text)} is not a number from 1 to 65535")
    return port


def _parse_address(token: str) -> tuple[bytes, int]:
    """(16-byte address, prefix over it) of ADDRESS or ADDRESS/PREFIX."""
    if "%" in token:
        raise FilterError(f"{_shown(token)} has a zone index; zones cannot be filtered on")
    text, slash, prefix = token.partition("/")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise FilterError(f"{_shown(token)} is not an IPv4 or IPv6 address") from None
    v4 = isinstance(ip, ipaddress.IPv4Address)
    width = 32 if v4 else 128
    if slash:
        if not prefix.isdigit() or not prefix.isascii() or (len(prefix) > 1 and prefix[0] == "0") \
                or int(prefix) > width:
            raise FilterError(f"{_shown(token)}: the prefix must be a number from 0 to {width}")
        plen = int(prefix)
    else:
        plen = width
    packed = _V4_PREFIX + ip.packed if v4 else ip.packed
    bits = plen + (_V4_BITS if v4 else 0)
    if _masked(packed, bits) != packed:
        net = ipaddress.ip_network(token, strict=False)
        raise FilterError(f"{_shown(token)} has host bits set under /{plen} (the network is {net})")
    return packed, bits


def _masked(addr: bytes, bits: int) -> bytes:
    value = int.from_bytes(addr, "big")
    mask = ((1 << bits) - 1) << (ADDR_BITS - bits) if bits else 0
    return (value & mask).to_bytes(16, "big")


@functools.lru_cache(maxsize=8192)
def address_text(addr: bytes) -> str:
    """Canonical text of a 16-byte address: IPv4 for ::ffff:a.b.c.d. Cached: the
    same few addresses recur in every event, and ipaddress takes microseconds."""
    if len(addr) != 16:
        raise FilterError(f"address of {len(addr)} bytes, expected 16")
    if addr[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(addr[12:]))
    return str(ipaddress.IPv6Address(addr))


def address_bytes(text: str) -> bytes:
    """The 16-byte form of one address (no prefix, no port): what events and keys hold."""
    addr, bits = _parse_address(text.strip())
    if bits != ADDR_BITS:
        raise FilterError(f"{_shown(text)} is a network; an address is wanted here")
    return addr


def _address_text(f: Filter) -> str:
    text = address_text(f.addr)
    if f.is_host:
        return text
    return f"{text}/{f.bits - _V4_BITS}" if f.is_v4 else f"{text}/{f.bits}"


@functools.lru_cache(maxsize=4096)  # /metrics and GET / name every filter in every answer
def format_filter(f: Filter) -> str:
    """The canonical text: parse(format_filter(f)) == f."""
    if f.side == Side.SRC and f.is_host and not f.port:
        return _address_text(f)  # a plain address
    text = f"{f.side.name.lower()} {_address_text(f)}"
    return f"{text} port {f.port}" if f.port else text


def canonical(text: str) -> str:
    return format_filter(parse(text))


# ---- JSON ---------------------------------------------------------------------------


def from_json(item: object) -> Filter:
    """A filter from a JSON body item: its text, or {"side", "address", "port"}."""
    if isinstance(item, str):
        return parse(item)
    if not isinstance(item, dict):
        raise FilterError(f"a filter is a string or an object, not {type(item).__name__}")
    unknown = set(item) - {"side", "address", "port"}
    if unknown:
        raise FilterError(f"unknown filter field(s) {', '.join(sorted(map(str, unknown)))} "
                          "(expected side, address, port)")
    side = item.get("side", "src")
    if side not in ("src", "dst"):
        raise FilterError(f"side must be \"src\" or \"dst\", not {json_repr(side)}")
    address = item.get("address")
    if not isinstance(address, str):
        raise FilterError("a filter object needs \"address\": \"ADDRESS[/PREFIX]\"")
    addr, bits = _parse_address(address.strip())
    port = item.get("port", 0)
    if "port" in item and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF):
        raise FilterError(f"port must be a number from 1 to 65535, not {json_repr(port)}")
    return Filter(Side[side.upper()], addr, bits, port)


def json_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:64] + "..."


# ---- kernel keys --------------------------------------------------------------------

HOST_KEY = struct.Struct("=BxH16s")  # struct host_key: side, pad, port (host order), addr
NET_KEY = struct.Struct("=IB2s16sx")  # struct net_key: prefixlen, side, port (big-endian), addr, pad
NET_KEY_FIXED_BITS = 24  # side and port precede the address in the trie's data
VALUE = struct.Struct("=IIB3x")  # struct filter_value: slot, gen, addr_bits


def host_key(f: Filter) -> bytes:
    return HOST_KEY.pack(f.side, f.port, f.addr)


def net_key(f: Filter) -> bytes:
    # The trie compares data bytes in order, so the port is stored big-endian.
    return NET_KEY.pack(NET_KEY_FIXED_BITS + f.bits, f.side, f.port.to_bytes(2, "big"), f.addr)


def from_host_key(key: bytes) -> Filter:
    side, port, addr = HOST_KEY.unpack(key)
    return Filter(Side(side), addr, ADDR_BITS, port)


def from_net_key(key: bytes) -> Filter:
    prefixlen, side, port, addr = NET_KEY.unpack(key)
    return Filter(Side(side), addr, prefixlen - NET_KEY_FIXED_BITS, int.from_bytes(port, "big"))


def matched(side: int, bits: int, addr: bytes, port: int) -> Filter:
    """The filter an event names: its side, prefix length and port (0: none),
    with the address of that side of the connection the event describes."""
    return Filter(Side(side), _masked(addr, bits), bits, port)


def host_bit(addr: bytes) -> int:
    """The bit an exact filter address sets in its side's bitmap, as the program
    computes it: Fibonacci hashing of the address's last 32 bits, loaded in the
    machine's byte order (maybe_host in bpf/tcprtt.bpf.c)."""
    low = int.from_bytes(addr[12:16], sys.byteorder)
    return ((low * 2654435761) & 0xFFFFFFFF) >> 21


def order_key(f: Filter) -> tuple[int, int, bytes, int, int]:
    """Listing order: plain addresses (src hosts without a port) first, IPv4 before
    IPv6, then by side, address family, network, prefix and port."""
    plain = f.side == Side.SRC and f.is_host and not f.port
    return (0 if plain else 1, f.side, (b"\0" if f.is_v4 else b"\1") + f.addr, f.bits, f.port)
