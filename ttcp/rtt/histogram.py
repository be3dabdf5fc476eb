"""RTT histograms as the BPF program keeps them, and how ttcp shows them (pure).

The program counts RTTs in microseconds into log2 buckets: bucket k holds
[2^k, 2^(k+1)) us (bucket 0 also holds 0), and the last one everything from
2^(BUCKETS-1) us (33.6 s) up. Each CPU keeps its own copy (no atomics shared
between CPUs); `Histogram.from_cpus` adds them up.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BUCKETS = 26  # HIST_BUCKETS in bpf/tcprtt.bpf.c: the last reaches past a minute
HIST = struct.Struct(f"=QQ{BUCKETS}Q")  # struct hist: count, sum_us, buckets
BAR_WIDTH = 40  # bcc's print_log2_hist


@dataclass(frozen=True)
class Histogram:
    count: int
    sum_us: int
    buckets: tuple[int, ...]

    @classmethod
    def empty(cls) -> Histogram:
        return cls(0, 0, (0,) * BUCKETS)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> Histogram:
        count, sum_us, *buckets = HIST.unpack_from(raw, offset)
        return cls(count, sum_us, tuple(buckets))

    @classmethod
    def from_cpus(cls, parts: Iterable[Histogram]) -> Histogram:
        count = sum_us = 0
        buckets = [0] * BUCKETS
        for h in parts:
            count += h.count
            sum_us += h.sum_us
            for i, n in enumerate(h.buckets):
                buckets[i] += n
        return cls(count, sum_us, tuple(buckets))

    def to_json(self) -> dict[str, object]:
        """{count, sum_us, buckets: [{low_us, high_us (null: open-ended), count}]}, up to the
        last non-empty bucket."""
        last = max((i for i, n in enumerate(self.buckets) if n), default=-1)
        return {
            "count": self.count,
            "sum_us": self.sum_us,
            "buckets": [{"low_us": low_us(i), "high_us": high_us(i), "count": self.buckets[i]}
                        for i in range(last + 1)],
        }


def low_us(k: int) -> int:
    """Smallest RTT bucket k holds (bucket 0 also holds 0)."""
    return 0 if k == 0 else 1 << k


def high_us(k: int) -> int | None:
    """Largest RTT bucket k holds; None for the last, open-ended one."""
    return None if k == BUCKETS - 1 else (1 << (k + 1)) - 1


def bucket_of(rtt_us: int) -> int:
    """The bucket the program puts an RTT in (floor of log2, clamped)."""
    return min(max(rtt_us, 1).bit_length() - 1, BUCKETS - 1)


def cumulative(h: Histogram) -> list[tuple[float, int]]:
    """Prometheus buckets: (upper bound in seconds, count of RTTs at or under it),
    one per log2 bucket up to the last closed one, then +Inf."""
    out: list[tuple[float, int]] = []
    running = 0
    for k in range(BUCKETS - 1):
        running += h.buckets[k]
        out.append(((1 << (k + 1)) / 1e6, running))  # an RTT in bucket k is < 2^(k+1) us
    out.append((float("inf"), h.count))
    return out


def render(h: Histogram, title: str, ms: bool = False) -> str:
    """bcc's log2 histogram: `usecs : count distribution` and a bar per bucket,
    from the first to the last non-empty bucket (all of them when empty)."""
    used = [i for i, n in enumerate(h.buckets) if n]
    if not used:
        return f"{title}\n(no RTTs)"
    first, last = used[0], used[-1]
    labels = [(_label(low_us(k), ms), "+" if high_us(k) is None else _label(high_us(k) or 0, ms))
              for k in range(first, last + 1)]
    lo_w = max(len(lo) for lo, _ in labels)
    hi_w = max(len(hi) for _, hi in labels)
    unit = "msecs" if ms else "usecs"
    width = lo_w + hi_w + 4
    top = max(h.buckets)
    lines = [title, f"{unit:>{width}} : count    distribution"]
    for (lo, hi), k in zip(labels, range(first, last + 1), strict=True):
        n = h.buckets[k]
        stars = "*" * (n * BAR_WIDTH // top) if top else ""
        lines.append(f"{lo:>{lo_w}} -> {hi:<{hi_w}} : {n:<8} |{stars:<{BAR_WIDTH}}|")
    return "\n".join(lines)


def _label(us: int, ms: bool) -> str:
    return f"{us / 1000:.3f}" if ms else str(us)


def summed(rows: Sequence[bytes], offset: int) -> Histogram:
    """The histogram at `offset` of each CPU's row, added up."""
    return Histogram.from_cpus(Histogram.unpack(r, offset) for r in rows)
