"""GET /metrics: the Prometheus text exposition format, version 0.0.4 (pure).

Small enough to write by hand (no client library at run time); the tests
parse every answer with prometheus_client's own parser and lint it with
promtool. Histograms come from the program's log2 buckets: `le` is the upper
end of each bucket in seconds (an RTT in bucket k is under 2^(k+1) us),
cumulative, then +Inf. The live-sample histograms are shown only while
sampling is on, and a Snapshot's bound (ttcp.api.series_bound) decides which
filters' histograms fit; every other series is always there. A filter with a
breakdown (`by`) also shows its groups' count and evictions, and the histograms
of its top groups (at most --metrics-groups, the busiest) with a `group` label,
in families of their own (a `sum by (filter)` over ttcp_connection_rtt_seconds
counts each connection once); the bound counts them with the filter's. Besides the
filters': drops by reason, ttcp's process metrics, its BPF programs' run time
(counted while the kernel's statistics are on) and the filters file's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple

from ttcp.api import process_metrics
from ttcp.api.process_metrics import ProcessMetrics
from ttcp.api.series_bound import HISTOGRAM_SERIES, SeriesBound
from ttcp.rtt.histogram import BUCKETS, Histogram, cumulative

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DROP_REASONS = ("ring_full", "recursion")  # ttcp_events_dropped_total{reason}


class GroupSeries(NamedTuple):
    group: str  # the group key's canonical text: the `group` label
    closed: Histogram
    sampled: Histogram


class FilterSeries(NamedTuple):  # a tuple: a scrape makes one per filter
    filter: str  # canonical filter text: the label value
    closed: Histogram
    sampled: Histogram
    last_match_ns: int = 0  # CLOCK_MONOTONIC of its latest match (ranks it for the bound)
    groups: Sequence[GroupSeries] = ()  # its top groups (a filter with a breakdown; read only when shown)
    group_count: int = -1  # groups the kernel holds for it; -1: no breakdown
    groups_evicted: int = 0


@dataclass(frozen=True)
class ProgramStats:
    """What the kernel counted for one of ttcp's BPF programs while its statistics were on."""

    program: str
    run_ns: int
    runs: int


@dataclass(frozen=True)
class FileCounters:
    """--filters-file: versions refused, and whether the file as it is now is in force."""

    errors_total: int
    reload_ok: bool


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, read at one moment."""

    filters: Sequence[FilterSeries]
    events_total: int
    dropped: Mapping[str, int]  # events lost, by reason (DROP_REASONS)
    filters_max: int
    attach_mode: str
    version: str
    sampling: bool
    stream_clients_dropped: int = 0
    process: ProcessMetrics | None = None
    programs: Sequence[ProgramStats] = ()
    bpf_stats: bool = False  # the kernel's BPF statistics are on (run time and runs count)
    filters_file: FileCounters | None = None
    bound: SeriesBound | None = None  # --metrics-max-series; None: every histogram
    now_ns: int = 0  # CLOCK_MONOTONIC of the reading (for the bound)
    api_connections: int = 0  # open now
    api_connections_max: int = 0  # --max-connections
    api_rejected: Mapping[str, int] = field(default_factory=dict)  # by reason (ttcp.api.limits)


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


_LE = tuple(_num(le) for le, _ in cumulative(Histogram.empty()))  # each bucket's `le`, as text


def _histogram(name: str, labels: str, h: Histogram) -> bytes:
    """A histogram's lines; `labels` ready (ttcp.rtt.histogram.cumulative's buckets)."""
    head = f'{name}_bucket{{{labels},le="'
    lines = [f'{head}{le}"}} {count}' for le, count in zip(_LE, accumulate(h.buckets[:BUCKETS - 1]))]
    lines.append(f'{head}+Inf"}} {h.count}')
    lines.append(f"{name}_sum{{{labels}}} {_num(h.sum_us / 1e6)}")
    lines.append(f"{name}_count{{{labels}}} {h.count}")
    return "\n".join(lines).encode()


def _block(name: str, label: str, h: Histogram) -> bytes:
    return _histogram(name, f'filter="{escape_label(label)}"', h)


def _matches(name: str, label: str, count: int) -> bytes:
    """A filter's counter or gauge (its matches, its groups, their evictions)."""
    return f'{name}{{filter="{escape_label(label)}"}} {count}'.encode()


def _group_block(name: str, labels: str, h: Histogram) -> bytes:
    """A group's histogram; `labels` the filter and group labels, ready."""
    return _histogram(name, labels, h)


def group_labels(f: str, group: str) -> str:
    return f'filter="{escape_label(f)}",group="{escape_label(group)}"'


def _groups_block(name: str, label: str, groups: tuple[tuple[str, Histogram], ...]) -> bytes:
    """A filter's top groups' histograms (group text, histogram), one after the other."""
    return b"\n".join(_group_block(name, group_labels(label, g), h) for g, h in groups)



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


_HISTOGRAMS = (
    ("ttcp_connection_rtt_seconds", "Smoothed RTT of each TCP connection a filter selected, when it ended.",
     "closed"),
    ("ttcp_rtt_sample_seconds",
     "Live RTT samples of established connections a filter selected (while sampling is on).", "sampled"))
_GROUP_HISTOGRAMS = (
    ("ttcp_group_connection_rtt_seconds",
     "Smoothed RTT of each TCP connection a filter with a breakdown selected, when it ended, for its top groups.",
     "closed"),
    ("ttcp_group_rtt_sample_seconds",
     "Live RTT samples of a filter's top groups (a filter with a breakdown; while sampling is on).", "sampled"))


def body(s: Snapshot) -> bytes:
    """The answer to GET /metrics, UTF-8."""
    global _blocks
    histograms = _HISTOGRAMS if s.sampling else _HISTOGRAMS[:1]  # no sampled series while sampling is off
    shown = _shown(s, HISTOGRAM_SERIES * len(histograms))
    used: dict[_Key, tuple[object, bytes]] = {}
    parts: list[bytes] = []
    for name, help_text, which in histograms:
        parts.append(_text(_head(name, "histogram", help_text)))
        parts += [_cached(used, _block, name, f.filter, getattr(f, which)) for f in s.filters
                  if shown is None or f.filter in shown]
    parts.append(_text(_head("ttcp_filter_matches_total", "counter",
                             "Connections each filter selected (events printed or dropped).")))
    parts += [_cached(used, _matches, "ttcp_filter_matches_total", f.filter, f.closed.count)
              for f in s.filters]
    grouped = [f for f in s.filters if f.group_count >= 0]
    if grouped:
        parts += _group_parts(grouped, histograms, shown, used)
    _blocks = used
    omitted = 0 if shown is None else sum(_cost(f, len(histograms)) for f in s.filters if f.filter not in shown)
    parts.append(_text(_fixed(s, omitted) + [""]))  # the last newline
    return b"\n".join(parts)


def _group_parts(grouped: Sequence[FilterSeries], histograms: Sequence[tuple[str, str, str]],
                 shown: set[str] | None, used: dict[_Key, tuple[object, bytes]]) -> list[bytes]:
    """The groups' histograms (of the filters shown), their counts and evictions."""
    parts: list[bytes] = []
    # Each filter's groups as one block, rendered again only when one of its top groups'
    # text or histogram changed (the table hands back the very same Histogram while a
    # group's counters stand still); a filter without groups shows no line.
    visible = [f for f in grouped if (shown is None or f.filter in shown) and f.groups]
    for name, help_text, which in _GROUP_HISTOGRAMS[:len(histograms)]:
        parts.append(_text(_head(name, "histogram", help_text)))
        parts += [_cached(used, _groups_block, name, f.filter, tuple((g.group, getattr(g, which)) for g in f.groups))
                  for f in visible]
    # Their counts and evictions: both families as one block, made again only when one changed.
    parts.append(_cached(used, _group_counts, "ttcp_filter_groups", "",
                         tuple((f.filter, f.group_count, f.groups_evicted) for f in grouped)))
    return parts


def _group_counts(name: str, label: str, counts: tuple[tuple[str, int, int], ...]) -> bytes:
    """ttcp_filter_groups and ttcp_groups_evicted_total of (filter, groups, evicted)."""
    lines: list[str] = []
    for i, (family, kind, help_text) in enumerate(_GROUP_COUNTS):
        lines += _family(family, kind, help_text, [(f'{{filter="{escape_label(f)}"}}', c[i]) for f, *c in counts])
    return _text(lines)


_GROUP_COUNTS = (
    ("ttcp_filter_groups", "gauge",
     "Groups the kernel holds for each filter with a breakdown (at most --max-groups for all filters together)."),
    ("ttcp_groups_evicted_total", "counter",
     ("Groups of each filter with a breakdown that the kernel evicted to make room for others (--max-groups); "
      "one seen again starts from zero.")))


def _cost(f: FilterSeries, histograms: int) -> int:
    """The histogram series a filter shows: its own and its top groups'."""
    return HISTOGRAM_SERIES * histograms * (1 + len(f.groups))


def _shown(s: Snapshot, per_filter: int) -> set[str] | None:
    """The filters whose histograms (their groups' included) fit the bound
    (ttcp.api.series_bound); None: all."""
    if s.bound is None:
        return None
    fixed = sum(1 for line in _fixed(s, 0) if not line.startswith("#"))
    always = fixed + len(s.filters) + 2 * sum(1 for f in s.filters if f.group_count >= 0)
    room = s.bound.series_room(always)
    if room is None:
        return None
    histograms = per_filter // HISTOGRAM_SERIES
    usage = [s.bound.usage(f.filter, f.last_match_ns, f.closed.count, f.sampled.count, s.now_ns) for f in s.filters]
    return s.bound.choose(usage, room, s.now_ns, {f.filter: _cost(f, histograms) for f in s.filters})


Sample = tuple[str, float]  # the labels ('{a="b"}' or ""), the value


def _family(name: str, kind: str, help_text: str, samples: Sequence[Sample]) -> list[str]:
    return _head(name, kind, help_text) + [f"{name}{labels} {_num(value)}" for labels, value in samples]


def _fixed(s: Snapshot, omitted: int) -> list[str]:
    """Every series but the filters' (the same number whatever `omitted` is)."""
    lines: list[str] = []
    for name, kind, help_text, value in (
            ("ttcp_events_total", "counter", "Events read from the kernel and printed.", s.events_total),
            ("ttcp_event_stream_clients_dropped_total", "counter",
             "GET /events clients disconnected for falling behind.", s.stream_clients_dropped),
            ("ttcp_filters", "gauge", "Filters in the table.", len(s.filters)),
            ("ttcp_filters_max", "gauge", "Size of the filter table.", s.filters_max),
            ("ttcp_sampling", "gauge", "1 while live RTT sampling is on.", int(s.sampling)),
            ("ttcp_metrics_max_series", "gauge", "The bound on this answer's series (0: none).",
             s.bound.max_series if s.bound is not None else 0),
            ("ttcp_metrics_series_omitted", "gauge", "Histogram series left out by --metrics-max-series.", omitted),
            ("ttcp_bpf_stats_enabled", "gauge", "1 while the kernel's BPF statistics are on.", int(s.bpf_stats))):
        lines += _family(name, kind, help_text, [("", value)])
    lines += _family("ttcp_events_dropped_total", "counter",
                     "Events lost: the ring buffer was full (ring_full), or the kernel skipped a run of the "
                     "program (recursion).", [(f'{{reason="{r}"}}', s.dropped.get(r, 0)) for r in DROP_REASONS])
    if s.programs:
        program = [f'{{program="{escape_label(p.program)}"}}' for p in s.programs]
        lines += _family("ttcp_bpf_program_run_seconds_total", "counter",
                         "Kernel time spent running each of ttcp's BPF programs (while the statistics were on).",
                         [(label, p.run_ns / 1e9) for label, p in zip(program, s.programs, strict=True)])
        lines += _family("ttcp_bpf_program_runs_total", "counter",
                         "Runs of each of ttcp's BPF programs (while the statistics were on).",
                         [(label, p.runs) for label, p in zip(program, s.programs, strict=True)])
    if s.filters_file is not None:
        lines += _family("ttcp_filters_file_errors_total", "counter",
                         "Versions of --filters-file refused (a bad line, missing, too many filters).",
                         [("", s.filters_file.errors_total)])
        lines += _family("ttcp_filters_file_reload_success", "gauge",
                         "1 when the filters file as it is now is in force, 0 when the last good version is.",
                         [("", int(s.filters_file.reload_ok))])
    if s.process is not None:
        for name, kind, help_text, attr in process_metrics.FAMILIES:
            lines += _family(name, kind, help_text, [("", getattr(s.process, attr))])
    lines += _api_lines(s)
    lines += _head("ttcp_info", "gauge", "The attach mode in use and ttcp's version.")
    lines.append(f'ttcp_info{{attach_mode="{escape_label(s.attach_mode)}",'
                 f'version="{escape_label(s.version)}"}} 1')
    return lines


def _api_lines(s: Snapshot) -> list[str]:
    return (_family("ttcp_api_connections", "gauge", "API connections open now.", [("", s.api_connections)])
            + _family("ttcp_api_connections_max", "gauge", "The API's connection limit (--max-connections).",
                      [("", s.api_connections_max)])
            + _family("ttcp_api_connections_rejected_total", "counter",
                      "API connections refused or closed by a limit: cap (all busy), evicted (to admit a newer "
                      "one), deadline (request not received in time), streams (too many GET /events clients).",
                      [(f'{{reason="{escape_label(r)}"}}', n) for r, n in s.api_rejected.items()]))


def render(s: Snapshot) -> str:
    """body() as text."""
    return body(s).decode()
