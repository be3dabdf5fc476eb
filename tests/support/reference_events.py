"""The plain way to format a decoded event: the reference the fast print path
(ttcp.rtt.events.table_line / json_line, straight from record bytes) must equal."""

from __future__ import annotations

import json
import time

from ttcp.rtt.events import AF_INET6, HOOKS, Event, format_ms


def format_table(ev: Event, offset_ns: int, wide: bool = False) -> str:
    """A table line, written out independently of ttcp's own layout code; `wide`:
    with the Workload column (the cgroup path, "-" when unknown)."""
    local = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime((ev.ts_ns + offset_ns) // 1_000_000_000))
    line = f"{local} {ev.saddr:<15} {ev.sport:<6} -> {ev.daddr:<15} {ev.dport:<6} "
    if wide:  # the RTT as wide as its "RTT(ms)" heading
        return line + f"{format_ms(ev.rtt_us):<7} {ev.cgroup or '-'}"
    return line + format_ms(ev.rtt_us)


def to_dict(ev: Event, offset_ns: int) -> dict[str, object]:
    """The JSON-lines object: every field, units in the names."""
    wall_ns = ev.ts_ns + offset_ns
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall_ns // 1_000_000_000))
    return {
        "time": f"{stamp}.{wall_ns % 1_000_000_000 // 1000:06d}Z",
        "family": "inet6" if ev.family == AF_INET6 else "inet",
        "saddr": ev.saddr,
        "sport": ev.sport,
        "daddr": ev.daddr,
        "dport": ev.dport,
        "rtt_us": ev.rtt_us,
        "rtt_ms": float(format_ms(ev.rtt_us)),
        "rttvar_us": ev.rttvar_us,
        "retrans": ev.retrans,
        "bytes_acked": ev.bytes_acked,
        "bytes_received": ev.bytes_received,
        "netns": ev.netns,
        "cgroup_id": ev.cgroup_id,
        "cgroup": ev.cgroup,
        "hook": HOOKS.get(ev.hook, str(ev.hook)),
        "filter": ev.filter or None,
    }


def format_json(ev: Event, offset_ns: int) -> str:
    return json.dumps(to_dict(ev, offset_ns), separators=(",", ":"), ensure_ascii=False)


