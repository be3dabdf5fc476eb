"""What ttcp writes on stdout: event lines, or histograms every few seconds.

Events go out in batches (one write per drained batch); when stdout's
reader goes away (`ttcp | head`) the lines are counted as unwritten and the
agent stops. Nothing here touches the kernel.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TextIO

from ttcp.errors import TtcpError
from ttcp.maps import Run, run_layout
from ttcp.rtt import clock, events, histogram
from ttcp.rtt.filter_table import FilterStats
from ttcp.rtt.filters import Filter
from ttcp.rtt.groups import CgroupPath, Group, GroupKey, GroupSet, no_paths
from ttcp.rtt.histogram import Histogram

# One record of a Run from RingBuffer.read_runs, as the table (-w: with the workload) and as JSON need it.
_TABLE_RUN = run_layout(events.TABLE_FIELDS, events.EVENT_SIZE)
_WIDE_RUN = run_layout(events.WIDE_FIELDS, events.EVENT_SIZE)
_JSON_RUN = run_layout(events.JSON_FIELDS, events.EVENT_SIZE)


class Printer:
    """Formats ring-buffer records into lines; writes them once per drain.

    Records come as RingBuffer.read_runs gives them: runs of fixed-size
    events are unpacked with one struct.iter_unpack each; a record of another
    size is formatted alone (a longer one from its first EVENT_SIZE bytes).
    One rule in every format (table, JSON, histogram mode): a record the
    program never sends, one too short or one that names no filter of
    `lines.names` (the table's), is counted as undecodable and neither printed
    nor counted as printed. `show` False (histogram mode) counts events without
    printing them; the JSON lines for GET /events are made only when the caller
    says a client listens. `wide`: the table has a Workload column.
    """

    def __init__(self, fmt: str, out: TextIO, show: bool = True, lines: events.Lines | None = None,
                 wide: bool = False) -> None:
        self.out = out
        self.show = show
        self.lines = lines or events.Lines(events.FilterNames())
        self.wide = wide
        self.printed = 0  # events read and, unless show is False, written
        self.undecodable = 0
        self.unwritten = 0
        self.reader_gone = False
        self._offset = clock.wall_clock_offset_ns()
        self._json = fmt == "json"
        self._pending: list[str] = []

    @property
    def header(self) -> str:
        return events.WIDE_HEADER if self.wide else events.HEADER

    def _lines(self, runs: list[Run], json: bool) -> list[str]:
        offset, lines = self._offset, self.lines
        if json:
            lines_of, line_of, layout = lines.json, lines.json_line, _JSON_RUN
        elif self.wide:
            lines_of, line_of, layout = lines.wide, lines.wide_line, _WIDE_RUN
        else:
            lines_of, line_of, layout = lines.table, lines.table_line, _TABLE_RUN
        out: list[str] = []
        for run in runs:
            if not run.records:  # one record of another size, alone
                try:
                    out.append(line_of(run.data, offset))
                except TtcpError:
                    self.undecodable += 1
                continue
            try:
                out += lines_of(layout.iter_unpack(run.data), offset)
            except TtcpError:  # a record our program never sends: count it apart
                for row in layout.iter_unpack(run.data):
                    try:
                        out += lines_of((row,), offset)
                    except TtcpError:
                        self.undecodable += 1
        return out

    def records(self, runs: list[Run], want_json: bool = False) -> list[str]:
        """Take a drained batch; returns its JSON lines when `want_json` (for
        event-stream clients), else []."""
        if self.show:
            lines = self._lines(runs, self._json)
            self._pending += lines
            self.printed += len(lines)
            if self._json:
                return lines if want_json else []
        else:  # count what would have been printed: JSON checks every field
            lines = self._lines(runs, True)
            self.printed += len(lines)
            if want_json:
                return lines
        if not want_json:
            return []
        saved = self.undecodable
        lines = self._lines(runs, True)
        self.undecodable = saved  # each record counted once
        return lines

    def flush(self) -> bool:
        """Write what is pending; False once the reader of stdout has gone
        (`ttcp | head`): from then on lines are counted as unwritten, not printed."""
        lines = len(self._pending)
        if lines and not self.reader_gone:
            self._pending.append("")  # the last newline, without copying the joined text again
            try:
                self.out.write("\n".join(self._pending))
                self.out.flush()
            except BrokenPipeError:
                self.reader_gone = True
                to_devnull(self.out)
        if self.reader_gone:
            self.printed -= lines
            self.unwritten += lines
        self._pending.clear()
        return not self.reader_gone


_KINDS = (("at close", "closed"), ("live samples", "sampled"))


class HistogramPrinter:
    """`--format histogram` / `--histogram SECONDS`: each interval's RTTs per filter,
    bcc style, then the whole run's at exit. Filters with no RTT in the period are
    left out. A filter with a breakdown (`by`) gets one histogram per group, the
    largest first, as `bcc tcprtt -B` prints one per address, after a line with its
    totals; a group evicted and made again meanwhile counts from its new start."""

    def __init__(self, out: TextIO, ms: bool = False, cgroup_path: CgroupPath = no_paths) -> None:
        self.out = out
        self.ms = ms
        self.cgroup_path = cgroup_path
        self._last: dict[Filter, FilterStats] = {}
        self._last_groups: dict[tuple[Filter, GroupKey], Group] = {}
        self._since = time.time()

    def interval(self, stats: Mapping[Filter, FilterStats], groups: Mapping[Filter, GroupSet] | None = None) -> bool:
        """Print the RTTs since the previous call; False once stdout's reader is gone."""
        now = time.time()
        groups = groups or {}
        blocks = []
        for f, s in stats.items():
            prev = self._last.get(f)
            found = groups.get(f)
            if found is not None:
                blocks += self._groups(f, s, found, prev)
                continue
            for what, h, p in (("at close", s.closed, prev.closed if prev else None),
                               ("live samples", s.sampled, prev.sampled if prev else None)):
                delta = _minus(h, p) if p is not None else h
                if delta.count:
                    blocks.append(self._block(f, what, delta))
        self._last = dict(stats)
        self._last_groups = {(f, g.key): g for f, found in groups.items() for g in found.groups}
        head = (f"{time.strftime('%Y/%m/%d %H:%M:%S', time.localtime(now))} "
                f"RTT histograms, last {now - self._since:.1f} s")
        self._since = now
        return self._write(head, blocks)

    def totals(self, stats: Mapping[Filter, FilterStats], groups: Mapping[Filter, GroupSet] | None = None) -> bool:
        groups = groups or {}
        self._last_groups = {}
        blocks = []
        for f, s in stats.items():
            found = groups.get(f)
            if found is not None:
                blocks += self._groups(f, s, found, None)
                continue
            blocks += [self._block(f, what, h) for what, h in (("at close", s.closed), ("live samples", s.sampled))
                       if h.count]
        return self._write("RTT histograms, whole run", blocks)

    def _groups(self, f: Filter, s: FilterStats, found: GroupSet, prev: FilterStats | None) -> list[str]:
        """A filter's line, then each group's histograms of the period, largest first."""
        closed = s.closed.count - (prev.closed.count if prev else 0)
        sampled = s.sampled.count - (prev.sampled.count if prev else 0)
        if not closed and not sampled:
            return []
        blocks = [f"filter {f}: {closed} connections at close, {sampled} live samples; {found.live} groups"
                  + (f" ({found.evicted} evicted since the filter was added)" if found.evicted else "")]
        for what, attr in _KINDS:
            deltas = []
            for g in found.groups:
                before = self._last_groups.get((f, g.key))
                h = g.histogram(attr)
                delta = _minus(h, before.histogram(attr)) if before is not None and \
                    before.first_ns == g.first_ns and _grew(h, before.histogram(attr)) else h
                if delta.count:
                    deltas.append((g.key.text(found.by, self.cgroup_path), delta))
            for text, delta in sorted(deltas, key=lambda d: (-d[1].count, d[0])):
                blocks.append(self._block(f, what, delta, f"{str(found.by).partition('/')[0]} {text}"))
        return blocks

    def _block(self, f: Filter, what: str, h: Histogram, group: str = "") -> str:
        mean = h.sum_us / h.count
        unit = f"{mean / 1000:.3f} ms" if self.ms else f"{mean:.0f} us"
        title = f"filter {f}{', ' + group if group else ''}: RTT {what}, {h.count} samples, mean {unit}"
        return histogram.render(h, title, ms=self.ms)

    def _write(self, head: str, blocks: list[str]) -> bool:
        text = head + "\n" + ("\n\n".join(blocks) if blocks else "(no RTTs)") + "\n\n"
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            to_devnull(self.out)
            return False
        return True


def to_devnull(out: TextIO) -> None:
    """stdout's reader has gone: point its descriptor at /dev/null, so that what
    Python still holds in its buffer (and the flush at exit) raises nothing."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, out.fileno())
    finally:
        os.close(null)


def _grew(h: Histogram, before: Histogram) -> bool:
    """Whether no bucket went down: a merged group (by container) whose part the kernel
    evicted may go down; it then counts from its start, as a restarted group does."""
    return all(a >= b for a, b in zip(h.buckets, before.buckets, strict=True))


def _minus(h: Histogram, before: Histogram) -> Histogram:
    """What `h` gained since `before` (counters only grow while a filter exists)."""
    return Histogram(h.count - before.count, h.sum_us - before.sum_us,
                     tuple(a - b for a, b in zip(h.buckets, before.buckets, strict=True)))
