"""What ttcp writes on stdout: event lines, or histograms every few seconds.

Events go out in batches (one write per drained batch); when stdout's
reader goes away (`ttcp | head`) the lines are counted as unwritten and the
agent stops. Nothing here touches the kernel.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from . import events, histogram
from .errors import TtcpError
from .filter_table import FilterStats
from .filters import Filter
from .histogram import Histogram

LineFormat = Callable[[bytes, int], str]


class Printer:
    """Decodes ring-buffer records into lines; writes them once per drain.

    `show` False (histogram mode) counts events without printing them; the
    JSON lines for GET /events are made only when `json_wanted()` says a
    client listens.
    """

    def __init__(self, fmt: str, out: TextIO, show: bool = True) -> None:
        self.out = out
        self.show = show
        self.printed = 0  # events read and, unless show is False, written
        self.undecodable = 0
        self.unwritten = 0
        self.reader_gone = False
        self._offset = events.wall_clock_offset_ns()
        self._line: LineFormat = events.json_line if fmt == "json" else events.table_line
        self._pending: list[str] = []

    def _lines(self, batch: list[bytes], fmt: LineFormat) -> list[str]:
        offset = self._offset
        try:
            return [fmt(raw, offset) for raw in batch]
        except TtcpError:  # a record our program never sends: count it apart
            out = []
            for raw in batch:
                try:
                    out.append(fmt(raw, offset))
                except TtcpError:
                    self.undecodable += 1
            return out

    def records(self, batch: list[bytes], want_json: bool = False) -> list[str]:
        """Take a drained batch; returns its JSON lines when `want_json` (for
        event-stream clients), else []."""
        if self.show:
            lines = self._lines(batch, self._line)
            self._pending += lines
            self.printed += len(lines)
            if self._line is events.json_line:
                return lines if want_json else []
        else:
            self.printed += len(self._lines(batch, _validate))
        if not want_json:
            return []
        saved = self.undecodable
        lines = self._lines(batch, events.json_line)
        self.undecodable = saved  # each record counted once
        return lines

    def flush(self) -> bool:
        """Write what is pending; False once the reader of stdout has gone
        (`ttcp | head`): from then on lines are counted as unwritten, not printed."""
        if self._pending and not self.reader_gone:
            try:
                self.out.write("\n".join(self._pending) + "\n")
                self.out.flush()
            except BrokenPipeError:
                self.reader_gone = True
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
        if self.reader_gone:
            self.printed -= len(self._pending)
            self.unwritten += len(self._pending)
        self._pending.clear()
        return not self.reader_gone


def _validate(raw: bytes, offset_ns: int) -> str:
    """Decode only to count (histogram mode): FormatError for a record that is no event."""
    events.decode(raw)
    return ""


class HistogramPrinter:
    """`--histogram SECONDS`: each interval's RTTs per filter, bcc style, then the
    whole run's at exit. Filters with no RTT in the period are left out."""

    def __init__(self, out: TextIO, ms: bool = False) -> None:
        self.out = out
        self.ms = ms
        self._last: dict[Filter, FilterStats] = {}
        self._since = time.time()

    def interval(self, stats: Mapping[Filter, FilterStats]) -> bool:
        """Print the RTTs since the previous call; False once stdout's reader is gone."""
        now = time.time()
        blocks = []
        for f, s in stats.items():
            prev = self._last.get(f)
            for what, h, p in (("at close", s.closed, prev.closed if prev else None),
                               ("live samples", s.sampled, prev.sampled if prev else None)):
                delta = _minus(h, p) if p is not None else h
                if delta.count:
                    blocks.append(self._block(f, what, delta))
        self._last = dict(stats)
        head = (f"{time.strftime('%Y/%m/%d %H:%M:%S', time.localtime(now))} "
                f"RTT histograms, last {now - self._since:.1f} s")
        self._since = now
        return self._write(head, blocks)

    def totals(self, stats: Mapping[Filter, FilterStats]) -> bool:
        blocks = [self._block(f, what, h) for f, s in stats.items()
                  for what, h in (("at close", s.closed), ("live samples", s.sampled)) if h.count]
        return self._write("RTT histograms, whole run", blocks)

    def _block(self, f: Filter, what: str, h: Histogram) -> str:
        mean = h.sum_us / h.count
        unit = f"{mean / 1000:.3f} ms" if self.ms else f"{mean:.0f} us"
        title = f"filter {f}: RTT {what}, {h.count} samples, mean {unit}"
        return histogram.render(h, title, ms=self.ms)

    def _write(self, head: str, blocks: list[str]) -> bool:
        text = head + "\n" + ("\n\n".join(blocks) if blocks else "(no RTTs)") + "\n\n"
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            return False
        return True


def _minus(h: Histogram, before: Histogram) -> Histogram:
    """What `h` gained since `before` (counters only grow while a filter exists)."""
    return Histogram(h.count - before.count, h.sum_us - before.sum_us,
                     tuple(a - b for a, b in zip(h.buckets, before.buckets, strict=True)))
