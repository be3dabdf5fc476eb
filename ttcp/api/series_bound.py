"""--metrics-max-series: which filters' histograms a bounded GET /metrics shows.

With 1,000 filters an unbounded answer is ~57,000 series (28 per histogram,
two histograms per filter, one matches counter), some 4-5 MB a scrape on every
node, which a fleet's Prometheus pays in memory. The bound counts every series
of the answer: the fixed ones and each filter's matches counter are always
shown (they say which filters exist and how busy they are); the histograms go
to the most recently used filters, as many whole ones as fit, and the rest are
left out (ttcp_metrics_series_omitted says how many series).

"Recently used" is the latest RTT the filter counted: the kernel's last match
(a connection that ended) or, with sampling on, the last scrape that saw its
live samples grow; then its total count; then the table's order. Membership
is sticky: a filter that got its histograms keeps them for at least STAY_S
even when others overtake it, so a filter on the edge does not flap in and
out at every scrape (each time starting a new series in Prometheus). A
smaller room (sampling switched on, filters added) is enforced at once.

A filter with a breakdown (`by`) shows, beside its own, the histograms of its
top groups (--metrics-groups K): its histograms are one unit, (1 + K) times
as many series, counted whole; its groups gauge and evictions counter are
always shown, like its matches.

`choose` is the rule (pure); SeriesBound keeps its state between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from ttcp.rtt.histogram import BUCKETS

HISTOGRAM_SERIES = BUCKETS + 2  # each `le` (the last is +Inf), _sum, _count
DEFAULT_MAX_SERIES = 10_000  # 1,000 filters: about 0.7-0.9 MB, histograms for ~320 of them
STAY_S = 60.0


class Usage(NamedTuple):  # a tuple: a scrape makes one per filter
    """What ranks one filter."""

    name: str
    last_used_ns: int  # CLOCK_MONOTONIC of its latest counted RTT; 0: never
    total: int  # RTTs counted (connections, plus samples with sampling on)


def ranked(usage: Iterable[Usage]) -> list[str]:
    """Most recently used first, then the busiest, then in the order given (stable sort)."""
    return [u.name for u in sorted(usage, key=lambda u: (-u.last_used_ns, -u.total))]


def _fitting(names: Iterable[str], room: int, cost: Callable[[str], int]) -> list[str]:
    """Those of `names`, in order, that fit `room` together (one too large is skipped)."""
    out = []
    for name in names:
        c = cost(name)
        if c <= room:
            out.append(name)
            room -= c
    return out


def choose(order: Sequence[str], room: int, members: Mapping[str, int], now_ns: int,
           stay_ns: int, cost: Mapping[str, int] | None = None) -> dict[str, int]:
    """The filters that show their histograms (name: when it joined) given the filters
    ranked best first, the room, and the current members. Without `cost` the room is
    in filters; with it, in series, each filter costing cost[name]."""
    of: Callable[[str], int] = (lambda _: 1) if cost is None else cost.__getitem__
    room = max(room, 0)
    rank = {name: i for i, name in enumerate(order)}
    top = set(_fitting(order, room, of))
    kept = {m: t for m, t in members.items() if m in rank and (m in top or now_ns - t < stay_ns)}
    if sum(map(of, kept)) > room:  # the room shrank: the best-ranked stay
        kept = {m: kept[m] for m in _fitting(sorted(kept, key=rank.__getitem__), room, of)}
    left = room - sum(map(of, kept))
    for name in order:
        if name not in kept and of(name) <= left:
            kept[name] = now_ns
            left -= of(name)
    return kept


class SeriesBound:
    """The bound and the membership it chose last; one per agent."""

    def __init__(self, max_series: int, stay_s: float = STAY_S) -> None:
        self.max_series = max_series  # 0: unlimited
        self.stay_ns = int(stay_s * 1e9)
        self.members: dict[str, int] = {}
        self._samples: dict[str, tuple[int, int]] = {}  # name: (sample count seen, when it last grew)

    def room(self, fixed: int, filters: int, per_filter: int) -> int | None:
        """How many filters' histograms fit beside `fixed` series and every filter's
        counter; None: no bound."""
        series = self.series_room(fixed + filters)
        return None if series is None else series // per_filter

    def series_room(self, always: int) -> int | None:
        """The histogram series that fit beside the `always` shown; None: no bound."""
        if not self.max_series:
            return None
        return max(0, self.max_series - always)

    def usage(self, name: str, last_match_ns: int, closed: int, sampled: int, now_ns: int) -> Usage:
        """One filter's Usage, noting when its sample count last grew."""
        known = self._samples.get(name)
        if known is None or sampled != known[0]:  # a count seen for the first time is no sign of use
            known = self._samples[name] = (sampled, 0 if known is None else now_ns)
        return Usage(name, max(last_match_ns, known[1]), closed + sampled)

    def choose(self, usage: Sequence[Usage], room: int, now_ns: int, cost: Mapping[str, int] | None = None) -> set[str]:
        """`room` in filters, or with `cost` in series (ttcp.api.series_bound.choose)."""
        self.members = choose(ranked(usage), room, self.members, now_ns, self.stay_ns, cost)
        if len(self._samples) > len(usage):  # filters went: forget them
            names = {u.name for u in usage}
            self._samples = {n: v for n, v in self._samples.items() if n in names}
        return set(self.members)
