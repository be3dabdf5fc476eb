"""The filter language: parse, print and encode filters (pure).

    [WORKLOAD] [[src|dst] ADDRESS[/PREFIX] [port N]] [by KEY]   (a workload or an address, or both)
    WORKLOAD := cgroup PATH | netns PATH | netns INODE | container NAME|ID | pod NAMESPACE/NAME
    KEY      := raddr[/N] | laddr[/N] | rport | lport | cgroup | netns | container | pod

A workload part selects the sockets of a cgroup-v2 cgroup (PATH as
/proc/PID/cgroup's `0::` line shows it; its sub-cgroups too) or of a network
namespace (a file such as /run/netns/NAME or /proc/PID/ns/net, or its inode
number); with an address part too, a socket must match both. Paths are
canonical: absolute, no `.` or empty components, no trailing `/`; `..`,
control characters and whitespace are refused. A cgroup deeper than
MAX_CGROUP_LEVEL levels is refused: the kernel's walk does not reach it.

`container NAME|ID` names a Docker or containerd container (a name as the
runtime spells it, case-sensitive: Docker's rule [a-zA-Z0-9][a-zA-Z0-9_.-]*;
or an id: 64 hex digits, or a prefix of at least 12), `pod NAMESPACE/NAME` a
Kubernetes pod (an RFC 1123 label and subdomain). They name the workload, not
its process: ttcp.workloads resolves them to the netns (or cgroup) the kernel
matches, again after every restart; the text keeps the name as given.

`src` is the socket's local side (the table's "Src addr" column), `dst` the
remote one; a bare ADDRESS means `src ADDRESS` (a plain address, as the original
ttcp took them). ADDRESS is
IPv4 or IPv6; /PREFIX makes it a network (host bits must be zero, and a full
length prefix is the host itself); `port N` (1-65535) restricts the match to
that port on the same side. Keywords are case-insensitive; the canonical text
is lower-case, with canonical addresses, and leaves `src` out of a plain host:
"10.178.0.5", "src 10.0.0.0/8", "dst 10.20.0.0/16 port 5432",
"cgroup /system.slice/app.service dst 10.20.0.0/16 port 5432".

A trailing `by KEY` breaks what the filter selects down into groups, each with
its own histograms, kept by the kernel (ttcp.rtt.groups): by remote or local
address (`/N`: by network; an IPv4 or v4-mapped address keeps min(N, 32) of
its bits, an IPv6 one N, so `by raddr/24` groups IPv4 peers by /24 and `by
raddr/64` IPv6 peers by /64), by remote or local port, by the socket's cgroup
or network namespace, or by container or pod: the kernel keys those groups by
the socket's cgroup id and netns both (ByKind.WORKLOAD), and user space names
them and merges those of one container or pod (ttcp.rtt.groups.workload_key).
The clause is part of the filter's identity and text ("dst 10.20.0.0/16 port
5432 by raddr"), not of its kernel key: the table holds one filter per key,
with or without a breakdown.

Every address is stored in 16 bytes, IPv4 as ::ffff:a.b.c.d, so an IPv4
filter (host or network) also matches dual-stack sockets, and a prefix
counts bits of those 16 bytes (an IPv4 /8 is 104 there).

The kernel side (bpf/tcprtt.bpf.c) keeps exact addresses in the `hosts`
hash and networks in the `nets` LPM trie; `host_key`/`net_key` below are
their key layouts (with the workload's wid: 0 for a filter without one; a
workload's exact addresses are full-length prefixes in `nets`), `kind_bit`
the bit of `cfg.kinds` that says a kind is in use, and `specificity` the
order the program picks among several matches.
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

MAX_TEXT = 512  # longer text is refused before any parsing (room for a pod's cgroup path)
_V4_PREFIX = bytes(10) + b"\xff\xff"
_V4_BITS = 96  # bits of the 16-byte form before an IPv4 address
ADDR_BITS = 128
HOST_BITS = 2048  # bits of each side's host bitmap (struct config in bpf/tcprtt.bpf.c)
MAX_CGROUP_LEVEL = 31  # cfg.cgroup_levels is a u32: bit L for level L
KIND_CGROUP = 1 << 8  # enum kind_bit: some filter names a cgroup
KIND_NETNS = 1 << 9  # ... a network namespace


class Side(IntEnum):
    """enum side in bpf/tcprtt.bpf.c; NONE: the filter has no address part."""

    NONE = 0
    SRC = 1
    DST = 2


CGROUP = "cgroup"
NETNS = "netns"
CONTAINER = "container"
POD = "pod"
WORKLOAD_KINDS = (CGROUP, NETNS, CONTAINER, POD)
NAMED_KINDS = (CONTAINER, POD)  # resolved through a container runtime, to a netns or a cgroup
# Docker's names ([a-zA-Z0-9][a-zA-Z0-9_.-]+) and containerd's ids ([A-Za-z0-9]+([._-][A-Za-z0-9]+)*,
# which may be one character): what either runtime accepts.
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
CONTAINER_ID_PREFIX = 12  # the shortest id prefix accepted (Docker's short id)
_RFC1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_RFC1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class ByKind(IntEnum):
    """enum by_kind in bpf/tcprtt.bpf.c: what a filter's groups are keyed by. WORKLOAD
    (the cgroup id and the netns both) is `by container` and `by pod`: user space
    names the kernel's groups and merges those of one container or pod."""

    RADDR = 1
    LADDR = 2
    RPORT = 3
    LPORT = 4
    CGROUP = 5
    NETNS = 6
    WORKLOAD = 7


BY_WORDS = {"raddr": ByKind.RADDR, "laddr": ByKind.LADDR, "rport": ByKind.RPORT, "lport": ByKind.LPORT,
            "cgroup": ByKind.CGROUP, "netns": ByKind.NETNS, "container": ByKind.WORKLOAD,
            "pod": ByKind.WORKLOAD}  # the `by` clause's keys
ADDRESS_KEYS = (ByKind.RADDR, ByKind.LADDR)
_BY_HELP = "raddr, raddr/N, laddr, laddr/N, rport, lport, cgroup, netns, container or pod"


class FilterError(TtcpError, ValueError):
    """Text or JSON that is not a filter; the message names the offending part (a ValueError
    too: argparse and callers that parse values expect one)."""


@dataclass(frozen=True, order=True)
class Workload:
    """A filter's workload part: a cgroup (`name` its canonical path), a network
    namespace (`name` a canonical path, or the decimal inode number), a container
    (its name or id) or a pod (NAMESPACE/NAME)."""

    kind: str  # one of WORKLOAD_KINDS
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def inode(self) -> int:
        """A netns given by its inode number: that number; else 0."""
        return int(self.name) if self.kind == NETNS and self.name.isdigit() else 0

    @property
    def level(self) -> int:
        """A cgroup's level: its path's components (the root's is 0)."""
        return 0 if self.name == "/" else self.name.count("/")

    @property
    def kind_bit(self) -> int:
        """The kinds of lookup it needs; a container or pod resolves to either (the
        cgroup level comes with its resolution: table_rules)."""
        if self.kind in NAMED_KINDS:
            return KIND_CGROUP | KIND_NETNS
        return KIND_CGROUP if self.kind == CGROUP else KIND_NETNS

    @property
    def named(self) -> bool:
        """A container or a pod: resolved through a runtime, followed across restarts."""
        return self.kind in NAMED_KINDS

    def to_json(self) -> dict[str, Any]:
        return {self.kind: self.inode or self.name}


@dataclass(frozen=True, order=True)
class By:
    """A filter's breakdown: the key of its groups, and for an address key the prefix
    N kept of each address (128: the address itself). `pod`: WORKLOAD groups named
    by pod rather than by container (the kernel keys both alike)."""

    kind: ByKind
    bits: int = ADDR_BITS
    pod: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= ADDR_BITS or (self.kind not in ADDRESS_KEYS and self.bits != ADDR_BITS) \
                or (self.pod and self.kind != ByKind.WORKLOAD):
            raise FilterError(f"malformed breakdown {self.kind.name.lower()}/{self.bits}")

    def __str__(self) -> str:
        if self.kind == ByKind.WORKLOAD:
            return "pod" if self.pod else "container"
        word = self.kind.name.lower()
        return f"{word}/{self.bits}" if self.kind in ADDRESS_KEYS and self.bits != ADDR_BITS else word

    @property
    def bits4(self) -> int:
        """The prefix the kernel keeps of an IPv4 (or v4-mapped) address, over its 16 bytes."""
        return _V4_BITS + min(self.bits, 32) if self.kind in ADDRESS_KEYS else 0

    @property
    def bits6(self) -> int:
        """... of an IPv6 address. The kernel reads neither for other keys; for WORKLOAD
        this byte tells `by pod` (1) from `by container` (0) in a pinned table's value."""
        if self.kind == ByKind.WORKLOAD:
            return int(self.pod)
        return self.bits if self.kind in ADDRESS_KEYS else 0


@dataclass(frozen=True)
class Filter:
    """One filter: a side, a network in the 16-byte form (bits == 128: a host), a port
    (0: any), and a workload (None: any). A filter with a workload may have no
    address part: side NONE (address ::/0, no port). `by`: its breakdown into
    groups (None: none), part of its identity but not of its kernel key."""

    side: Side
    addr: bytes  # 16 bytes, host bits zero
    bits: int  # prefix length over `addr`
    port: int = 0
    workload: Workload | None = None
    by: By | None = None
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.addr) != 16 or not 0 <= self.bits <= ADDR_BITS or not 0 <= self.port <= 0xFFFF:
            raise FilterError(f"malformed filter {self.addr!r}/{self.bits} port {self.port}")
        if self.side == Side.NONE and (self.workload is None or self.bits or self.port or any(self.addr)):
            raise FilterError("a filter without an address part must name a workload (and nothing else)")
        # Filters key the table's index and every answer's dicts: hash once.
        object.__setattr__(self, "_hash", hash((self.side, self.addr, self.bits, self.port, self.workload,
                                                self.by)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of_workload(cls, workload: Workload) -> Filter:
        """The filter of a workload alone: all of its connections."""
        return cls(Side.NONE, bytes(16), 0, 0, workload)

    @property
    def has_address(self) -> bool:
        return self.side != Side.NONE

    @property
    def in_hosts(self) -> bool:
        """Whether its key is in `hosts` (an exact address without a workload) rather than `nets`."""
        return self.is_host and self.workload is None

    def address_part(self) -> Filter:
        """The same filter without its workload and breakdown (itself when it has neither)."""
        if self.workload is None and self.by is None:
            return self
        return Filter(self.side, self.addr, self.bits, self.port)

    @property
    def selector(self) -> Filter:
        """What the kernel's key selects: the filter without its breakdown (itself
        when it has none). The table holds one filter per selector."""
        return self if self.by is None else Filter(self.side, self.addr, self.bits, self.port, self.workload)

    def with_by(self, by: By | None) -> Filter:
        return Filter(self.side, self.addr, self.bits, self.port, self.workload, by)

    @property
    def is_host(self) -> bool:
        return self.bits == ADDR_BITS

    @property
    def is_v4(self) -> bool:
        return self.addr[:12] == _V4_PREFIX and self.bits >= _V4_BITS

    @property
    def kind_bit(self) -> int:
        """enum kind_bit in bpf/tcprtt.bpf.c of its address part: which lookups the
        program must do (0: no address part). A workload's address filters are all
        in `nets`: theirs is a net kind."""
        if not self.has_address:
            return 0
        order = (0 if self.port else 2) + (0 if self.side == Side.SRC else 1) + (0 if self.in_hosts else 4)
        return 1 << order

    def specificity(self) -> tuple[int, int, int, int]:
        """Larger wins: exact before network, longer prefix, a port, then src before dst."""
        return (int(self.is_host), self.bits, int(bool(self.port)), int(self.side == Side.SRC))

    def __str__(self) -> str:
        return format_filter(self)

    def to_json(self) -> dict[str, Any]:
        """The JSON object form: {"cgroup" or "netns", "side", "address" (with /PREFIX for
        a network), "port", "by"}, each part only when the filter has it."""
        out: dict[str, Any] = self.workload.to_json() if self.workload is not None else {}
        if self.has_address:
            out.update(side=self.side.name.lower(), address=_address_text(self))
        if self.port:
            out["port"] = self.port
        if self.by is not None:
            out["by"] = str(self.by)
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
    by = None
    start = 2 if tokens[0].lower() in WORKLOAD_KINDS else 0  # a container may be named "by"
    at = next((i for i in range(start, len(tokens)) if tokens[i].lower() == "by"), None)
    if at == 0:
        raise FilterError(f"{_shown(text)}: `by` follows what it breaks down (a workload or an address: "
                          "dst 10.20.0.0/16 port 5432 by raddr)")
    if at is not None:
        by = _by_clause(text, tokens[at:])
        tokens = tokens[:at]
    f = _selector(text, tokens)
    return f if by is None else f.with_by(by)


def _by_clause(text: str, tokens: list[str]) -> By:
    """The `by KEY` clause (tokens from `by` to the end)."""
    if len(tokens) < 2:
        raise FilterError(f"{_shown(text)}: a key must follow 'by' ({_BY_HELP})")
    if len(tokens) > 2:
        raise FilterError(f"{_shown(text)}: unexpected {_shown(' '.join(tokens[2:]))} after the by clause "
                          "(it comes last)")
    return parse_by(tokens[1])


def parse_by(text: str) -> By:
    """A `by` clause's key: raddr[/N], laddr[/N] (N from 1 to 128), rport, lport, cgroup, netns,
    container, pod."""
    word, slash, prefix = text.lower().partition("/")
    kind = BY_WORDS.get(word)
    if kind is None or (slash and kind not in ADDRESS_KEYS):
        raise FilterError(f"by {_shown(text)}: the key is {_BY_HELP}")
    if not slash:
        return By(kind, pod=word == "pod")
    if not prefix.isdigit() or not prefix.isascii() or prefix[0] == "0" or not 1 <= int(prefix) <= ADDR_BITS:
        raise FilterError(f"by {_shown(text)}: the prefix must be a number from 1 to {ADDR_BITS} (it applies "
                          "to IPv6 addresses; IPv4 ones keep at most 32 bits)")
    return By(kind, int(prefix))


def _selector(text: str, tokens: list[str]) -> Filter:
    """A filter's part before `by`: the workload, the address, or both."""
    workload = None
    if tokens[0].lower() in WORKLOAD_KINDS:
        kind = tokens.pop(0).lower()
        if not tokens:
            raise FilterError(f"{_shown(text)}: {_WANTED[kind].replace(' an ', ' ')} must follow {kind!r}")
        workload = parse_workload(kind, tokens.pop(0))
        if not tokens:
            return Filter.of_workload(workload)
    side = Side.SRC
    if tokens[0].lower() in ("src", "dst"):
        side = Side[tokens.pop(0).upper()]
        if not tokens:
            raise FilterError(f"{_shown(text)}: an address must follow {side.name.lower()!r}")
    if tokens[0].lower() in WORKLOAD_KINDS:
        raise FilterError(f"{_shown(text)}: " + (f"the workload part ({tokens[0]!r}) comes first" if workload is None
                                                 else "a filter names one workload"))
    addr, bits = _parse_address(tokens.pop(0))
    port = 0
    if tokens:
        if tokens[0].lower() in WORKLOAD_KINDS:
            raise FilterError(f"{_shown(text)}: the workload part ({tokens[0]!r}) comes first")
        if tokens[0].lower() != "port":
            raise FilterError(f"{_shown(text)}: unexpected {_shown(tokens[0])} "
                              "(expected `port N`, `by KEY` or the end)")
        if len(tokens) < 2:
            raise FilterError(f"{_shown(text)}: a port number must follow 'port'")
        port = parse_port(tokens[1])
        if len(tokens) > 2:
            raise FilterError(f"{_shown(text)}: unexpected {_shown(' '.join(tokens[2:]))} after the port")
    return Filter(side, addr, bits, port, workload)


_WANTED = {CGROUP: "a path", NETNS: "a path or an inode number", CONTAINER: "a container name or id",
           POD: "NAMESPACE/NAME"}


def parse_workload(kind: str, text: str) -> Workload:
    """The workload of `kind` a token names: a cgroup's path, a netns path or inode
    number, a container's name or id, a pod's NAMESPACE/NAME."""
    if kind == CONTAINER:
        return Workload(CONTAINER, container_name(text))
    if kind == POD:
        return Workload(POD, pod_name(text))
    if kind == NETNS and text[:1].isdigit():
        if not text.isascii() or not text.isdigit() or text[0] == "0" or not 0 < int(text) <= 0xFFFFFFFF:
            raise FilterError(f"netns {_shown(text)}: an inode number is a whole number from 1 to 4294967295")
        return Workload(NETNS, text)
    path = canonical_path(text, kind)
    if kind == CGROUP and Workload(CGROUP, path).level > MAX_CGROUP_LEVEL:
        raise FilterError(f"cgroup {_shown(text)} is {Workload(CGROUP, path).level} levels deep; the kernel "
                          f"side follows cgroups down to level {MAX_CGROUP_LEVEL}")
    return Workload(kind, path)


def container_name(text: str) -> str:
    """A container's name or id as given (names are case-sensitive); FilterError naming
    the first character no runtime allows in a name."""
    if CONTAINER_NAME.fullmatch(text):
        return text
    if not text:
        raise FilterError("container: the name is empty")
    bad = text[0] if not text[0].isascii() or not text[0].isalnum() else \
        next(c for c in text if not (c.isascii() and (c.isalnum() or c in "_.-")))
    raise FilterError(f"container {_shown(text)}: {bad!r} is not allowed in a container name "
                      "(a letter or digit first, then letters, digits, '_', '.', '-')")


def pod_name(text: str) -> str:
    """NAMESPACE/NAME of a Kubernetes pod; FilterError naming the part that breaks its rule
    (the namespace an RFC 1123 label of at most 63 characters, the name an RFC 1123
    subdomain of at most 253)."""
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name:
        raise FilterError(f"pod {_shown(text)}: expected NAMESPACE/NAME")
    if len(namespace) > 63 or not _RFC1123_LABEL.fullmatch(namespace):
        raise FilterError(f"pod {_shown(text)}: the namespace {_shown(namespace)} is not a DNS label "
                          "(at most 63 lower-case letters, digits and '-', starting and ending alphanumeric)")
    if len(name) > 253 or not _RFC1123_SUBDOMAIN.fullmatch(name):
        raise FilterError(f"pod {_shown(text)}: the name {_shown(name)} is not a DNS subdomain "
                          "(at most 253 lower-case letters, digits, '-' and '.')")
    return text


def canonical_path(text: str, what: str) -> str:
    """An absolute path in canonical form (no `.` or empty components, no trailing
    `/`); FilterError for a relative one, `..`, control characters or whitespace
    (a filter's text separates its parts with whitespace)."""
    bad = next((c for c in text if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise FilterError(f"{what} path {_shown(text)} holds a control character ({bad!r})")
    if any(c.isspace() for c in text):
        raise FilterError(f"{what} path {_shown(text)} holds whitespace, which a filter's text cannot carry")
    if not text.startswith("/"):
        raise FilterError(f"{what} path {_shown(text)} must be absolute (start with /)")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FilterError(f"{what} path {_shown(text)} may not hold '..'")
    return "/" + "/".join(parts)


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
    if f.by is not None:
        return f"{format_filter(f.selector)} by {f.by}"
    if f.workload is not None:
        return str(f.workload) + (" " + format_filter(f.address_part()) if f.has_address else "")
    if f.side == Side.SRC and f.is_host and not f.port:
        return _address_text(f)  # a plain address
    text = f"{f.side.name.lower()} {_address_text(f)}"
    return f"{text} port {f.port}" if f.port else text


def canonical(text: str) -> str:
    return format_filter(parse(text))


# ---- JSON ---------------------------------------------------------------------------


def from_json(item: object) -> Filter:
    """A filter from a JSON body item: its text, or {"cgroup" or "netns", "side",
    "address", "port", "by"} (an address, a workload, or both; a breakdown or not)."""
    if isinstance(item, str):
        return parse(item)
    if not isinstance(item, dict):
        raise FilterError(f"a filter is a string or an object, not {type(item).__name__}")
    unknown = set(item) - {"side", "address", "port", "by", *WORKLOAD_KINDS}
    if unknown:
        raise FilterError(f"unknown filter field(s) {', '.join(sorted(map(str, unknown)))} "
                          "(expected cgroup, netns, container or pod, side, address, port, by)")
    if "by" not in item:
        return _selector_from_json(item)
    by = item["by"]
    if not isinstance(by, str) or len(by) > 16:
        raise FilterError(f"by must be a key ({_BY_HELP}), not {json_repr(by)}")
    if not ({"side", "address", "port", *WORKLOAD_KINDS} & set(item)):
        raise FilterError("\"by\" breaks a filter down: give an address or a workload too")
    return _selector_from_json(item).with_by(parse_by(by.strip()))


def _selector_from_json(item: dict[str, Any]) -> Filter:
    kinds = [k for k in WORKLOAD_KINDS if k in item]
    if len(kinds) > 1:
        raise FilterError(f"a filter names one workload, not {' and '.join(kinds)}")
    workload = _workload_from_json(kinds[0], item[kinds[0]]) if kinds else None
    if workload is not None and not ({"side", "address", "port"} & set(item)):
        return Filter.of_workload(workload)
    side = item.get("side", "src")
    if side not in ("src", "dst"):
        raise FilterError(f"side must be \"src\" or \"dst\", not {json_repr(side)}")
    address = item.get("address")
    if not isinstance(address, str):
        raise FilterError("a filter object needs \"address\": \"ADDRESS[/PREFIX]\" (or a workload: "
                          "\"cgroup\", \"netns\", \"container\" or \"pod\")")
    addr, bits = _parse_address(address.strip())
    port = item.get("port", 0)
    if "port" in item and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFFFF):
        raise FilterError(f"port must be a number from 1 to 65535, not {json_repr(port)}")
    return Filter(Side[side.upper()], addr, bits, port, workload)


def _workload_from_json(kind: str, value: object) -> Workload:
    if kind == NETNS and isinstance(value, int) and not isinstance(value, bool):
        return parse_workload(kind, str(value))
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise FilterError(f"{kind} must be {_WANTED[kind]}, not {json_repr(value)}")
    return parse_workload(kind, value)


def json_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:64] + "..."


# ---- kernel keys --------------------------------------------------------------------

HOST_KEY = struct.Struct("=IBxH16s")  # struct host_key: wid, side, pad, port (host order), addr
NET_KEY = struct.Struct("=I4sB2s16sx")  # struct net_key: prefixlen, wid, side, port (both big-endian), addr, pad
NET_KEY_FIXED_BITS = 56  # wid, side and port precede the address in the trie's data
VALUE = struct.Struct("=IIBBBB")  # struct filter_value: slot, gen, addr_bits, by_kind, by_bits4, by_bits6
WORKLOAD = struct.Struct("=QI12s")  # struct workload: up, wid, own (a VALUE; gen 0: none)


def value_of(f: Filter, slot: int, gen: int) -> bytes:
    """f's struct filter_value: its counter slot and generation, its prefix, its breakdown."""
    by = f.by
    if by is None:
        return VALUE.pack(slot, gen, f.bits, 0, 0, 0)
    return VALUE.pack(slot, gen, f.bits, by.kind, by.bits4, by.bits6)


def by_of_value(raw: bytes) -> By | None:
    """The breakdown a struct filter_value says (None: none, or bytes ttcp never writes)."""
    _, _, _, kind, bits4, bits6 = VALUE.unpack(raw)
    if not kind:
        return None
    try:
        by = (By(ByKind(kind), bits6) if kind in ADDRESS_KEYS
              else By(ByKind(kind), pod=kind == ByKind.WORKLOAD and bits6 == 1))
    except (ValueError, FilterError):
        return None
    return by if (by.bits4, by.bits6) == (bits4, bits6) else None


def host_key(f: Filter, wid: int = 0) -> bytes:
    return HOST_KEY.pack(wid, f.side, f.port, f.addr)


def net_key(f: Filter, wid: int = 0) -> bytes:
    # The trie compares data bytes in order, so the wid and the port are stored big-endian.
    return NET_KEY.pack(NET_KEY_FIXED_BITS + f.bits, wid.to_bytes(4, "big"), f.side, f.port.to_bytes(2, "big"),
                        f.addr)


def key_of(f: Filter, wid: int = 0) -> bytes:
    """f's key in its map (`hosts` when f.in_hosts, else `nets`), under workload `wid`."""
    return host_key(f, wid) if f.in_hosts else net_key(f, wid)


def from_host_key(key: bytes) -> tuple[int, Filter]:
    """(wid, the address part) of a `hosts` key."""
    wid, side, port, addr = HOST_KEY.unpack(key)
    return wid, Filter(Side(side), addr, ADDR_BITS, port)


def from_net_key(key: bytes) -> tuple[int, Filter]:
    """(wid, the address part) of a `nets` key."""
    prefixlen, wid, side, port, addr = NET_KEY.unpack(key)
    return (int.from_bytes(wid, "big"),
            Filter(Side(side), addr, prefixlen - NET_KEY_FIXED_BITS, int.from_bytes(port, "big")))


# The previous layout (no wid), as a pinned table of an earlier ttcp holds it.
OLD_HOST_KEY = struct.Struct("=BxH16s")
OLD_NET_KEY = struct.Struct("=IB2s16sx")
OLD_NET_KEY_FIXED_BITS = 24


def upgraded_host_key(old: bytes) -> bytes:
    """A `hosts` key of the previous layout in this one (wid 0)."""
    side, port, addr = OLD_HOST_KEY.unpack(old)
    return HOST_KEY.pack(0, side, port, addr)


def upgraded_net_key(old: bytes) -> bytes:
    """A `nets` key of the previous layout in this one (wid 0)."""
    prefixlen, side, port, addr = OLD_NET_KEY.unpack(old)
    return NET_KEY.pack(prefixlen - OLD_NET_KEY_FIXED_BITS + NET_KEY_FIXED_BITS, bytes(4), side, port, addr)


def host_bit(addr: bytes) -> int:
    """The bit an exact filter address sets in its side's bitmap, as the program
    computes it: Fibonacci hashing of the address's last 32 bits, loaded in the
    machine's byte order (maybe_host in bpf/tcprtt.bpf.c)."""
    low = int.from_bytes(addr[12:16], sys.byteorder)
    return ((low * 2654435761) & 0xFFFFFFFF) >> 21


def order_key(f: Filter) -> tuple[int, str, str, int, bytes, int, int, str]:
    """Listing order: plain addresses (src hosts without a port) first, IPv4 before
    IPv6, then by side, address family, network, prefix and port; then the filters
    with a workload, by workload (its own filter first), then the same way."""
    plain = f.side == Side.SRC and f.is_host and not f.port and f.workload is None
    group = 0 if plain else 1 if f.workload is None else 2
    kind, name = (f.workload.kind, f.workload.name) if f.workload is not None else ("", "")
    return (group, kind, name, f.side, (b"\0" if f.is_v4 else b"\1") + f.addr, f.bits, f.port,
            "" if f.by is None else str(f.by))
