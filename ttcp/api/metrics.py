"""GET /metrics: the Prometheus text exposition format, version 0.0.4 (pure).

Small enough to write by hand (no client library at run time); the tests
parse every answer with prometheus_client's own parser. Histograms come
from the program's log2 buckets: `le` is the upper end of each bucket in
seconds (an RTT in bucket k is under 2^(k+1) us), cumulative, then +Inf.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ttcp.rtt.histogram import Histogram, cumulative

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FilterSeries(NamedTuple):  # a tuple: a scrape makes one per filter
    filter: str  # canonical filter text: the label value
    closed: Histogram
    sampled: Histogram


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, read at one moment."""

    filters: Sequence[FilterSeries]
    events_total: int
    events_dropped: int
    filters_max: int
    attach_mode: str
    version: str
    sampling: bool
    stream_clients_dropped: int = 0


def escape_label(value: str) -> str:
    """A label value as the format requires: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _head(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


# Each filter's lines (its histogram blocks, its matches), as the last answer rendered them
# and from what: a scrape renders again only what changed since (with many filters, most
# are idle; the table hands back the very same Histogram while a filter's counters stand
# still). Holds the last answer's only.
_Key = tuple[str, str]  # metric name, filter text
_blocks: dict[_Key, tuple[object, bytes]] = {}


def _block(name: str, label: str, h: Histogram) -> bytes:
    f = f'filter="{escape_label(label)}"'
    lines = [f'{name}_bucket{{{f},le="{_num(le)}"}} {count}' for le, count in cumulative(h)]
    lines.append(f"{name}_sum{{{f}}} {_num(h.sum_us / 1e6)}")
    lines.append(f"{name}_count{{{f}}} {h.count}")
    return "\n".join(lines).encode()


def _matches(name: str, label: str, count: int) -> bytes:
    return f'{name}{{filter="{escape_label(label)}"}} {count}'.encode()


def _cached(used: dict[_Key, tuple[object, bytes]], make: Callable[[str, str, Any], bytes], name: str,
            label: str, source: Any) -> bytes:
    """make(name, label, source), or what it gave last time for the same source."""
    key = (name, label)
    known = _blocks.get(key)
    if known is None or (known[0] is not source and known[0] != source):
        known = (source, make(name, label, source))
    used[key] = known
    return known[1]


def _text(lines: list[str]) -> bytes:
    return "\n".join(lines).encode()


def body(s: Snapshot) -> bytes:
    """The answer to GET /metrics, UTF-8."""
    global _blocks
    used: dict[_Key, tuple[object, bytes]] = {}
    parts: list[bytes] = []
    for name, help_text, which in (
            ("ttcp_connection_rtt_seconds",
             "Smoothed RTT of each TCP connection a filter selected, when it ended.", "closed"),
            ("ttcp_rtt_sample_seconds",
             "Live RTT samples of established connections a filter selected (with sampling on).", "sampled")):
        parts.append(_text(_head(name, "histogram", help_text)))
        parts += [_cached(used, _block, name, f.filter, getattr(f, which)) for f in s.filters]
    parts.append(_text(_head("ttcp_filter_matches_total", "counter",
                             "Connections each filter selected (events printed or dropped).")))
    parts += [_cached(used, _matches, "ttcp_filter_matches_total", f.filter, f.closed.count)
              for f in s.filters]
    _blocks = used
    lines: list[str] = []
    for name, kind, help_text, value in (
            ("ttcp_events_total", "counter", "Events read from the kernel and printed.", s.events_total),
            ("ttcp_events_dropped_total", "counter",
             "Events the kernel could not queue (ring buffer full) or runs it skipped.", s.events_dropped),
            ("ttcp_event_stream_clients_dropped_total", "counter",
             "GET /events clients disconnected for falling behind.", s.stream_clients_dropped),
            ("ttcp_filters", "gauge", "Filters in the table.", len(s.filters)),
            ("ttcp_filters_max", "gauge", "Size of the filter table.", s.filters_max),
            ("ttcp_sampling", "gauge", "1 while live RTT sampling is on.", int(s.sampling))):
        lines += _head(name, kind, help_text)
        lines.append(f"{name} {value}")
    lines += _head("ttcp_info", "gauge", "The attach mode in use and ttcp's version.")
    lines.append(f'ttcp_info{{attach_mode="{escape_label(s.attach_mode)}",'
                 f'version="{escape_label(s.version)}"}} 1')
    lines.append("")  # the last newline
    parts.append(_text(lines))
    return b"\n".join(parts)


def render(s: Snapshot) -> str:
    """body() as text."""
    return body(s).decode()
