"""The event record the BPF program sends, and how ttcp prints it (pure).

The layout mirrors `struct event` in bpf/tcprtt.bpf.c; RTTs are kept in
microseconds end to end and only formatted as milliseconds at the edge.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

from ttcp.errors import FormatError
from ttcp.rtt.filters import ADDR_BITS, FilterError, address_text, format_filter, matched

AF_INET = 2
AF_INET6 = 10
HOOKS = {1: "fentry", 2: "tp_btf", 3: "tracepoint"}

# struct event, every field. The print path reads the same 88 bytes two other ways:
# TABLE_FIELDS, what a table line shows (saddr, daddr, ts_ns, srtt_us, sport, dport)
# and the filter's side and prefix as one u16 (side | prefix << 8), which must name a
# filter as in every format; JSON_FIELDS, the two addresses as one field and family,
# hook, filter side and prefix as another (what stays the same from event to event),
# then has_port. No byte order: the reader's run layout (ttcp.maps.run_layout) and the
# Structs below add it.
EVENT_FIELDS = "16s16sQQQIIIIHHHBBBB6x"
TABLE_FIELDS = "16s16sQ16xI12xHH3xH7x"
JSON_FIELDS = "32sQQQIIIIHH5sB6x"
_EVENT = struct.Struct("<" + EVENT_FIELDS)
_TABLE = struct.Struct("<" + TABLE_FIELDS)
_JSON = struct.Struct("<" + JSON_FIELDS)
_JSON_CONTEXT = struct.Struct("<HBBB")  # JSON_FIELDS' 5-byte field: family, hook, side, prefix
EVENT_SIZE = _EVENT.size  # 88
assert _TABLE.size == _JSON.size == EVENT_SIZE
# TABLE_FIELDS' filter field of every record that names a filter: a side, a prefix of 0-128.
_NAMED = frozenset(side | bits << 8 for side in (1, 2) for bits in range(ADDR_BITS + 1))

HEADER = f"{'YYYY/MM/DD HH:MM:SS'} {'Src addr':<15} {'Port':<6} -> {'Dest addr':<15} {'Port':<6} RTT(ms)"


@dataclass(frozen=True)
class Event:
    """One TCP connection that ended, as the kernel saw it (decode's answer)."""

    saddr: str
    daddr: str
    ts_ns: int  # CLOCK_MONOTONIC when the connection ended
    bytes_acked: int
    bytes_received: int
    rtt_us: int
    rttvar_us: int
    retrans: int
    netns: int
    sport: int
    dport: int
    family: int
    hook: int
    filter: str  # canonical text of the filter that selected the connection


def decode(record: bytes | memoryview) -> Event:
    """Decode one ring-buffer record; FormatError if it is not an event.

    Not the print path (table_lines/json_lines read records without it): the
    plain reading of a record, which the tests check the print path against
    and read ttcp's events with, and bench/inproc.py measures.
    """
    _checked(record)
    (saddr, daddr, ts, acked, received, srtt, rttvar, retrans, netns,
     sport, dport, family, hook, side, bits, has_port) = _EVENT.unpack_from(record)
    return Event(address_text(saddr), address_text(daddr), ts, acked, received, srtt, rttvar,
                 retrans, netns, sport, dport, family, hook,
                 _filter_text(side, bits, has_port, saddr, daddr, sport, dport))


def format_ms(us: int) -> str:
    """Microseconds as milliseconds with exactly three decimals, no float."""
    return f"{us // 1000}.{us % 1000:03d}"


# ---- the print path -------------------------------------------------------------------
#
# Straight from unpacked record fields to lines, a whole run of records per call (the
# reader unpacks a run with one struct.iter_unpack), with no Event in between and no
# Python call per record: the parts that recur from event to event (addresses, seconds,
# ports, RTTs, filter texts) come from dicts that compute a missing entry once.
# tests/reference_events.py formats a decoded Event the plain way; the two agree.

_K = TypeVar("_K", bound=Hashable)
_NS = 1_000_000_000


class _Memo(dict[_K, str], Generic[_K]):
    """`memo[key]` at dict speed; a missing key is computed by `make` and kept.
    Emptied by `trim()` (once per batch) when it grows past `limit` entries."""

    def __init__(self, make: Callable[[_K], str], limit: int) -> None:
        super().__init__()
        self._make = make
        self._limit = limit

    def __missing__(self, key: _K) -> str:
        value = self[key] = self._make(key)
        return value

    def trim(self) -> None:
        if len(self) > self._limit:
            self.clear()


def _names_no_filter(side: int, bits: int) -> FormatError:
    """The one rule of every format: a record that names no filter is not an event of ours."""
    return FormatError("event", f"names no filter (side {side}, prefix {bits})")


def _filter_key_text(key: tuple[int, int, bytes, int]) -> str:
    side, bits, addr, port = key
    try:
        return format_filter(matched(side, bits, addr, port))
    except (FilterError, ValueError):
        raise _names_no_filter(side, bits) from None


def _unnamed(named: int) -> NoReturn:
    """A table row whose filter field is not in _NAMED: the same refusal as JSON's."""
    raise _names_no_filter(named & 0xFF, named >> 8)


def _json_template(key: tuple[bytes, bytes, int]) -> str:
    """A JSON line with what its context fixes filled in (family, addresses, hook,
    filter) and %-placeholders for the rest (time, ports, RTTs, counters, netns)."""
    addrs, context, port = key
    family, hook, side, bits = _JSON_CONTEXT.unpack(context)
    saddr, daddr = addrs[:16], addrs[16:]
    filter_text = _filters[side, bits, saddr if side == 1 else daddr, port]
    fixed = [("inet6" if family == AF_INET6 else "inet"), address_text(saddr), address_text(daddr),
             HOOKS.get(hook) or str(hook), filter_text]
    family_text, saddr_text, daddr_text, hook_text, filter_text = (t.replace("%", "%%") for t in fixed)
    return ('{"time":"%s.%06dZ","family":"' + family_text + '","saddr":"' + saddr_text + '","sport":%d,'
            '"daddr":"' + daddr_text + '","dport":%d,"rtt_us":%d,"rtt_ms":%s,"rttvar_us":%d,"retrans":%d,'
            '"bytes_acked":%d,"bytes_received":%d,"netns":%d,"hook":"' + hook_text + '","filter":"'
            + filter_text + '"}')


_column = _Memo[bytes](lambda a: f"{address_text(a):<15}", 4096)  # in its 15-character column
_local = _Memo[int](lambda s: time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(s)), 64)
_utc = _Memo[int](lambda s: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)), 64)
_port = _Memo[int](lambda p: f"{p:<6}", 8192)
_ms = _Memo[int](format_ms, 8192)
_json_ms = _Memo[int](lambda us: repr(float(format_ms(us))), 8192)  # as json.dumps writes the float
_filters = _Memo[tuple[int, int, bytes, int]](_filter_key_text, 4096)
_json = _Memo[tuple[bytes, bytes, int]](_json_template, 4096)  # JSON line templates
_MEMOS: tuple[_Memo[Any], ...] = (_column, _local, _utc, _port, _ms, _json_ms, _filters, _json)


def _trim() -> None:
    for memo in _MEMOS:
        memo.trim()


def _filter_text(side: int, bits: int, has_port: int, saddr: bytes, daddr: bytes, sport: int,
                 dport: int) -> str:
    """The canonical text of the filter an event names, rebuilt from the event
    itself (so a filter removed since is still named right)."""
    if side == 1:
        return _filters[side, bits, saddr, sport if has_port else 0]
    return _filters[side, bits, daddr, dport if has_port else 0]


def table_lines(rows: Iterable[tuple[Any, ...]], offset_ns: int) -> list[str]:
    """The table's lines (time, source, ports, destination, RTT in ms) of records
    unpacked with TABLE_FIELDS. FormatError for a record that names no filter."""
    _trim()
    col, local, port, ms = _column, _local, _port, _ms
    return [f"{local[(ts + offset_ns) // _NS]} {col[saddr]} {port[sport]} -> {col[daddr]} {port[dport]} "
            f"{ms[srtt]}" for saddr, daddr, ts, srtt, sport, dport, named in rows
            if named in _NAMED or _unnamed(named)]


def json_lines(rows: Iterable[tuple[Any, ...]], offset_ns: int) -> list[str]:
    """The JSON lines of records unpacked with JSON_FIELDS, written by hand: every
    string field is an address, a filter text or a fixed name, none needing
    escapes. Each line is its context's template (what the addresses, family,
    hook and filter fix; the port too when the filter names one) filled in.
    FormatError for a record that names no filter."""
    _trim()
    template, utc, json_ms = _json, _utc, _json_ms
    return [template[addrs, context, has_port and (sport if context[3] == 1 else dport)]
            % (utc[sec], ns // 1000, sport, dport, srtt, json_ms[srtt], rttvar, retrans, acked, received, netns)
            for (addrs, ts, acked, received, srtt, rttvar, retrans, netns, sport, dport, context, has_port) in rows
            for sec, ns in (divmod(ts + offset_ns, _NS),)]


def _checked(raw: bytes | memoryview) -> None:
    if len(raw) < EVENT_SIZE:
        raise FormatError("event", f"record of {len(raw)} bytes, expected {EVENT_SIZE}")


def table_line(raw: bytes | memoryview, offset_ns: int) -> str:
    """The table line of one record; FormatError for a short record or one naming no filter."""
    _checked(raw)
    return table_lines([_TABLE.unpack_from(raw)], offset_ns)[0]


def json_line(raw: bytes | memoryview, offset_ns: int) -> str:
    """The JSON line of one record; FormatError for a short record or one naming no filter."""
    _checked(raw)
    return json_lines([_JSON.unpack_from(raw)], offset_ns)[0]
