"""The event record the BPF program sends, and how ttcp prints it (pure).

The layout mirrors `struct event` in bpf/tcprtt.bpf.c; RTTs are kept in
microseconds end to end and only formatted as milliseconds at the edge.
"""

from __future__ import annotations

import functools
import struct
import time
from dataclasses import dataclass

from .errors import FormatError
from .filters import FilterError, address_text, format_filter, matched

AF_INET = 2
AF_INET6 = 10
HOOKS = {1: "fentry", 2: "tp_btf", 3: "tracepoint"}

_EVENT = struct.Struct("<16s16sQQQIIIIHHHBBBB6x")
EVENT_SIZE = _EVENT.size  # 88

HEADER = f"{'YYYY/MM/DD HH:MM:SS'} {'Src addr':<15} {'Port':<6} -> {'Dest addr':<15} {'Port':<6} RTT(ms)"


@dataclass(frozen=True)
class Event:
    """One TCP connection that ended, as the kernel saw it."""

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


def _filter_text(side: int, bits: int, has_port: int, saddr: bytes, daddr: bytes, sport: int,
                 dport: int) -> str:
    """The canonical text of the filter an event names, rebuilt from the event
    itself (so a filter removed since is still named right)."""
    if side == 1:
        return _filter_of(side, bits, saddr, sport if has_port else 0)
    return _filter_of(side, bits, daddr, dport if has_port else 0)


@functools.lru_cache(maxsize=4096)
def _filter_of(side: int, bits: int, addr: bytes, port: int) -> str:
    try:
        return format_filter(matched(side, bits, addr, port))
    except (FilterError, ValueError):
        raise FormatError("event", f"names no filter (side {side}, prefix {bits})") from None


def decode(record: bytes | memoryview) -> Event:
    """Decode one ring-buffer record; FormatError if it is not an event."""
    if len(record) < EVENT_SIZE:
        raise FormatError("event", f"record of {len(record)} bytes, expected {EVENT_SIZE}")
    (saddr, daddr, ts, acked, received, srtt, rttvar, retrans, netns,
     sport, dport, family, hook, side, bits, has_port) = _EVENT.unpack_from(record)
    return Event(address_text(saddr), address_text(daddr), ts, acked, received, srtt, rttvar,
                 retrans, netns, sport, dport, family, hook,
                 _filter_text(side, bits, has_port, saddr, daddr, sport, dport))


# The same few addresses and seconds recur from event to event: convert each once
# (ipaddress and strftime cost microseconds; the reader decodes every record).
@functools.lru_cache(maxsize=4096)
def _address_column(key: bytes) -> str:
    """An address left-aligned in its 15-character column (wider for long IPv6)."""
    return f"{address_text(key):<15}"


@functools.lru_cache(maxsize=8)
def _local_stamp(second: int) -> str:
    return time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(second))


@functools.lru_cache(maxsize=8)
def _utc_stamp(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))




def wall_clock_offset_ns() -> int:
    """Add to a CLOCK_MONOTONIC stamp (bpf_ktime_get_ns) to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


def format_ms(us: int) -> str:
    """Microseconds as milliseconds with exactly three decimals, no float."""
    return f"{us // 1000}.{us % 1000:03d}"


def _table(ts_ns: int, offset_ns: int, saddr_column: str, sport: int, daddr_column: str,
           dport: int, rtt_us: int) -> str:
    """The seed's line: time, source, ports, destination, RTT in ms (the one layout)."""
    return (f"{_local_stamp((ts_ns + offset_ns) // 1_000_000_000)} {saddr_column} {sport:<6} -> "
            f"{daddr_column} {dport:<6} {rtt_us // 1000}.{rtt_us % 1000:03d}")


# The print path: straight from record bytes to the line, no Event in between
# (building the dataclass was a third of the per-record cost). tests/
# reference_events.py formats a decoded Event the plain way; the two agree.

def table_line(raw: bytes, offset_ns: int) -> str:
    """The table line of a record; FormatError for a short record."""
    if len(raw) < EVENT_SIZE:
        raise FormatError("event", f"record of {len(raw)} bytes, expected {EVENT_SIZE}")
    saddr, daddr, ts, _, _, srtt, _, _, _, sport, dport, *_ = _EVENT.unpack_from(raw)
    return _table(ts, offset_ns, _address_column(saddr), sport, _address_column(daddr), dport, srtt)


@functools.lru_cache(maxsize=4096)
def _json_ms(us: int) -> str:
    """rtt_ms as the JSON encoder writes float(format_ms(us))."""
    return repr(float(format_ms(us)))


def json_line(raw: bytes, offset_ns: int) -> str:
    """The JSON line of a record, by hand: every field is a number or a string
    that needs no escaping (addresses, filter texts, fixed names)."""
    if len(raw) < EVENT_SIZE:
        raise FormatError("event", f"record of {len(raw)} bytes, expected {EVENT_SIZE}")
    (saddr, daddr, ts, acked, received, srtt, rttvar, retrans, netns,
     sport, dport, family, hook, side, bits, has_port) = _EVENT.unpack_from(raw)
    wall = ts + offset_ns
    hook_name = HOOKS.get(hook) or str(hook)
    filter_text = _filter_text(side, bits, has_port, saddr, daddr, sport, dport)
    return (f'{{"time":"{_utc_stamp(wall // 1_000_000_000)}.{wall % 1_000_000_000 // 1000:06d}Z",'
            f'"family":"{"inet6" if family == AF_INET6 else "inet"}","saddr":"{address_text(saddr)}",'
            f'"sport":{sport},"daddr":"{address_text(daddr)}","dport":{dport},"rtt_us":{srtt},'
            f'"rtt_ms":{_json_ms(srtt)},"rttvar_us":{rttvar},"retrans":{retrans},'
            f'"bytes_acked":{acked},"bytes_received":{received},"netns":{netns},"hook":"{hook_name}",'
            f'"filter":"{filter_text}"}}')
