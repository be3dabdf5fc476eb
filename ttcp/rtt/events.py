"""The event record the BPF program sends, and how ttcp prints it (pure).

The layout mirrors `struct event` in bpf/tcprtt.bpf.c; RTTs are kept in
microseconds end to end and only formatted as milliseconds at the edge. An
event names its filter by the generation stamped on the filter's slot
(FilterNames answers its text) and its socket's cgroup by id (a CgroupPath
callable answers the path, ttcp.workloads' cache); its container and pod come
from its netns and cgroup id (WorkloadNames: ttcp.workloads.registry).
"""

from __future__ import annotations

import json
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, Protocol, TypeVar

from ttcp.errors import FormatError
from ttcp.rtt.filters import address_text

AF_INET = 2
AF_INET6 = 10
HOOKS = {1: "fentry", 2: "tp_btf", 3: "tracepoint"}
REMEMBERED_NAMES = 4096  # names of removed filters kept, for their events still in the ring

# struct event, every field. The print path reads the same 96 bytes other ways:
# TABLE_FIELDS, what a table line shows (saddr, daddr, ts_ns, srtt_us, sport, dport) and
# the filter's generation, which must name a filter as in every format; WIDE_FIELDS, the
# same and the cgroup id and netns (-w); JSON_FIELDS, the two addresses as one field, family and
# hook as another (what stays the same from event to event), then the rest. No byte
# order: the reader's run layout (ttcp.maps.run_layout) and the Structs below add it.
EVENT_FIELDS = "16s16sQQQQIIIIIHHHB5x"
TABLE_FIELDS = "16s16sQ24xI12xIHH8x"
WIDE_FIELDS = "16s16sQ16xQI8xIIHH8x"
JSON_FIELDS = "32sQQQQIIIIIHH3s5x"
_EVENT = struct.Struct("<" + EVENT_FIELDS)
_TABLE = struct.Struct("<" + TABLE_FIELDS)
_WIDE = struct.Struct("<" + WIDE_FIELDS)
_JSON = struct.Struct("<" + JSON_FIELDS)
_JSON_CONTEXT = struct.Struct("<HB")  # JSON_FIELDS' 3-byte field: family, hook
EVENT_SIZE = _EVENT.size  # 96
assert _TABLE.size == _WIDE.size == _JSON.size == EVENT_SIZE

HEADER = f"{'YYYY/MM/DD HH:MM:SS'} {'Src addr':<15} {'Port':<6} -> {'Dest addr':<15} {'Port':<6} RTT(ms)"
WIDE_HEADER = f"{HEADER} Workload"

CgroupPath = Callable[[int], "str | None"]  # a cgroup id's path on cgroup2; None: unknown


def no_paths(cgroup_id: int) -> str | None:
    return None


class WorkloadNames(Protocol):
    """The container and pod of a socket, by its netns inode and cgroup id."""

    def fragment(self, netns: int, cgroup_id: int) -> str:
        """The event's JSON members (`,"container":...`), "" when none is known."""
        ...

    def label(self, netns: int, cgroup_id: int) -> str | None:
        """The Workload column's text (None: fall back to the cgroup path)."""
        ...


class NoNames:
    def fragment(self, netns: int, cgroup_id: int) -> str:
        return ""

    def label(self, netns: int, cgroup_id: int) -> str | None:
        return None


class FilterNames:
    """Canonical filter texts by generation, for naming the filter of an event: every
    filter held, and the last REMEMBERED_NAMES removed (their events may still be in
    the ring). A generation names one filter creation for good. The table keeps it."""

    def __init__(self) -> None:
        self.live: dict[int, str] = {}
        self._removed: OrderedDict[int, str] = OrderedDict()
        self.issued = 0  # every generation up to this one was given to a filter

    def add(self, gen: int, text: str) -> None:
        self.live[gen] = text
        self.issued = max(self.issued, gen)

    def remove(self, gen: int) -> None:
        text = self.live.pop(gen, None)
        if text is not None:
            self._removed[gen] = text
            while len(self._removed) > REMEMBERED_NAMES:
                self._removed.popitem(last=False)

    def get(self, gen: int) -> str | None:
        """The text of filter `gen`; "" for one removed long ago (issued, forgotten
        since); None for a generation never issued: the record is not ours."""
        text = self.live.get(gen) or self._removed.get(gen)
        if text is None and 0 < gen <= self.issued:
            return ""
        return text


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
    filter: str  # canonical text of the filter that selected the connection ("": removed long ago)
    cgroup_id: int = 0  # the socket's cgroup-v2 id (0: none)
    cgroup: str | None = None  # its path, when known
    filter_gen: int = 0


def decode(record: bytes | memoryview, names: FilterNames | None = None,
           cgroup_path: CgroupPath = no_paths) -> Event:
    """Decode one ring-buffer record; FormatError if it is not an event (too short,
    or naming no filter of `names`; without names, a generation of 0).

    Not the print path (Lines reads records without it): the plain reading of a
    record, which the tests check the print path against and read ttcp's events
    with, and bench/inproc.py measures.
    """
    _checked(record)
    (saddr, daddr, ts, acked, received, cgroup_id, srtt, rttvar, retrans, netns, gen,
     sport, dport, family, hook) = _EVENT.unpack_from(record)
    text = names.get(gen) if names is not None else (f"#{gen}" if gen else None)
    if text is None:
        raise _names_no_filter(gen)
    return Event(address_text(saddr), address_text(daddr), ts, acked, received, srtt, rttvar,
                 retrans, netns, sport, dport, family, hook, text, cgroup_id,
                 cgroup_path(cgroup_id) if cgroup_id else None, gen)


def format_ms(us: int) -> str:
    """Microseconds as milliseconds with exactly three decimals, no float."""
    return f"{us // 1000}.{us % 1000:03d}"


def json_text(text: str | None) -> str:
    """A JSON string (or null), as json.dumps writes it."""
    return json.dumps(text, ensure_ascii=False)


# ---- the print path -------------------------------------------------------------------
#
# Straight from unpacked record fields to lines, a whole run of records per call (the
# reader unpacks a run with one struct.iter_unpack), with no Event in between and no
# Python call per record: the parts that recur from event to event (addresses, seconds,
# ports, RTTs, filter texts) come from dicts that compute a missing entry once.
# tests/support/reference_events.py formats a decoded Event the plain way; the two agree.

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


def _names_no_filter(gen: int) -> FormatError:
    """The one rule of every format: a record that names no filter is not an event of ours."""
    return FormatError("event", f"names no filter (generation {gen})")


def _unnamed(gen: int) -> NoReturn:
    raise _names_no_filter(gen)


_column = _Memo[bytes](lambda a: f"{address_text(a):<15}", 4096)  # in its 15-character column
_local = _Memo[int](lambda s: time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(s)), 64)
_utc = _Memo[int](lambda s: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)), 64)
_port = _Memo[int](lambda p: f"{p:<6}", 8192)
_ms = _Memo[int](format_ms, 8192)
_json_ms = _Memo[int](lambda us: repr(float(format_ms(us))), 8192)  # as json.dumps writes the float
_MEMOS: tuple[_Memo[Any], ...] = (_column, _local, _utc, _port, _ms, _json_ms)


class Lines:
    """The lines of records, for one table's filter names and one cgroup path source
    (its memos of JSON templates belong to them)."""

    def __init__(self, names: FilterNames, cgroup_path: CgroupPath = no_paths,
                 workloads: WorkloadNames | None = None) -> None:
        self.names = names
        self.cgroup_path = cgroup_path
        self.workloads: WorkloadNames = NoNames() if workloads is None else workloads  # a registry may be empty
        self._json = _Memo[tuple[bytes, bytes, int, int]](self._json_template, 4096)
        self._paths = _Memo[int](lambda cg: cgroup_path(cg) or "-", 4096)  # the Workload column

    def _trim(self) -> None:
        for memo in (*_MEMOS, self._json, self._paths):
            memo.trim()

    def _json_template(self, key: tuple[bytes, bytes, int, int]) -> str:
        """A JSON line with what its context fixes filled in (family, addresses, hook,
        filter, cgroup) and %-placeholders for the rest (time, ports, RTTs, counters, netns)."""
        addrs, context, gen, cgroup_id = key
        family, hook = _JSON_CONTEXT.unpack(context)
        name = self.names.get(gen)
        if name is None:
            _unnamed(gen)
        cgroup = self.cgroup_path(cgroup_id) if cgroup_id else None
        fixed = [("inet6" if family == AF_INET6 else "inet"), address_text(addrs[:16]), address_text(addrs[16:]),
                 HOOKS.get(hook) or str(hook), json_text(name or None), json_text(cgroup)]
        family_text, saddr_text, daddr_text, hook_text, filter_text, cgroup_text = (
            t.replace("%", "%%") for t in fixed)
        return ('{"time":"%s.%06dZ","family":"' + family_text + '","saddr":"' + saddr_text + '","sport":%d,'
                '"daddr":"' + daddr_text + '","dport":%d,"rtt_us":%d,"rtt_ms":%s,"rttvar_us":%d,"retrans":%d,'
                '"bytes_acked":%d,"bytes_received":%d,"netns":%d,"cgroup_id":' + str(cgroup_id)
                + ',"cgroup":' + cgroup_text + '%s,"hook":"' + hook_text + '","filter":' + filter_text + '}')

    def table(self, rows: Iterable[tuple[Any, ...]], offset_ns: int) -> list[str]:
        """The table's lines (time, source, ports, destination, RTT in ms) of records
        unpacked with TABLE_FIELDS. FormatError for a record that names no filter."""
        self._trim()
        col, local, port, ms, live, names = _column, _local, _port, _ms, self.names.live, self.names
        return [f"{local[(ts + offset_ns) // _NS]} {col[saddr]} {port[sport]} -> {col[daddr]} {port[dport]} "
                f"{ms[srtt]}" for saddr, daddr, ts, srtt, gen, sport, dport in rows
                if gen in live or names.get(gen) is not None or _unnamed(gen)]

    def wide(self, rows: Iterable[tuple[Any, ...]], offset_ns: int) -> list[str]:
        """The table's lines with the Workload column (the socket's pod, else its
        container, else its cgroup path), of records unpacked with WIDE_FIELDS."""
        self._trim()
        col, local, port, ms, live, names, paths = _column, _local, _port, _ms, self.names.live, self.names, \
            self._paths
        label = self.workloads.label
        return [f"{local[(ts + offset_ns) // _NS]} {col[saddr]} {port[sport]} -> {col[daddr]} {port[dport]} "
                f"{ms[srtt]:<7} {label(netns, cgroup_id) or paths[cgroup_id]}"
                for saddr, daddr, ts, cgroup_id, srtt, netns, gen, sport, dport in rows
                if gen in live or names.get(gen) is not None or _unnamed(gen)]

    def json(self, rows: Iterable[tuple[Any, ...]], offset_ns: int) -> list[str]:
        """The JSON lines of records unpacked with JSON_FIELDS, written by hand: each
        line is its context's template (what the addresses, family, hook, filter and
        cgroup fix) filled in, and the container and pod of its netns and cgroup.
        FormatError for a record that names no filter."""
        self._trim()
        template, utc, json_ms, workload = self._json, _utc, _json_ms, self.workloads.fragment
        return [template[addrs, context, gen, cgroup_id]
                % (utc[sec], ns // 1000, sport, dport, srtt, json_ms[srtt], rttvar, retrans, acked, received, netns,
                   workload(netns, cgroup_id))
                for (addrs, ts, acked, received, cgroup_id, srtt, rttvar, retrans, netns, gen, sport, dport,
                     context) in rows
                for sec, ns in (divmod(ts + offset_ns, _NS),)]

    def table_line(self, raw: bytes | memoryview, offset_ns: int) -> str:
        """The table line of one record; FormatError for a short record or one naming no filter."""
        _checked(raw)
        return self.table([_TABLE.unpack_from(raw)], offset_ns)[0]

    def wide_line(self, raw: bytes | memoryview, offset_ns: int) -> str:
        _checked(raw)
        return self.wide([_WIDE.unpack_from(raw)], offset_ns)[0]

    def json_line(self, raw: bytes | memoryview, offset_ns: int) -> str:
        """The JSON line of one record; FormatError for a short record or one naming no filter."""
        _checked(raw)
        return self.json([_JSON.unpack_from(raw)], offset_ns)[0]


def _checked(raw: bytes | memoryview) -> None:
    if len(raw) < EVENT_SIZE:
        raise FormatError("event", f"record of {len(raw)} bytes, expected {EVENT_SIZE}")
