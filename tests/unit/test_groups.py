"""A filter's groups on values (no kernel): their key and its text, the percentile
estimator against Prometheus' own rule, the order of the top groups, restarts and
evictions, the groups' series in /metrics under the bound, and the histograms printed
per group."""

from __future__ import annotations

import io
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ttcp.api import metrics, series_bound
from ttcp.api.metrics import FilterSeries, GroupSeries, Snapshot
from ttcp.api.series_bound import HISTOGRAM_SERIES, SeriesBound
from ttcp.output import HistogramPrinter
from ttcp.rtt import filters as F
from ttcp.rtt import groups as G
from ttcp.rtt.filter_table import FilterStats
from ttcp.rtt.filters import By, ByKind
from ttcp.rtt.groups import Group, GroupKey, GroupMemory, GroupSet
from ttcp.rtt.histogram import BUCKETS, HIST, Histogram, bucket_of, cumulative

EXAMPLES = int(os.environ.get("TTCP_FUZZ_EXAMPLES", "300"))


def hist(*rtts: int) -> Histogram:
    buckets = [0] * BUCKETS
    for r in rtts:
        buckets[bucket_of(r)] += 1
    return Histogram(len(rtts), sum(rtts), tuple(buckets))


def addr(text: str) -> bytes:
    return F.address_bytes(text)


# ---- keys -------------------------------------------------------------------------------


def test_a_key_packs_as_struct_group_key_and_reads_back() -> None:
    key = GroupKey(ByKind.RADDR, addr("10.20.3.0"))
    raw = key.pack(7, 42)
    assert len(raw) == 40 and raw[:8] == G.FILTER_OF_KEY.pack(7, 42)
    assert GroupKey.unpack(raw) == (7, 42, key)
    both = GroupKey(ByKind.WORKLOAD, cgroup_id=1234, netns=4026531840)
    assert GroupKey.unpack(both.pack(1, 1))[2] == both


@pytest.mark.parametrize("key,by,text,json", [
    (GroupKey(ByKind.RADDR, addr("10.20.3.4")), "raddr", "10.20.3.4", {"raddr": "10.20.3.4"}),
    (GroupKey(ByKind.RADDR, addr("10.20.3.0")), "raddr/24", "10.20.3.0/24", {"raddr": "10.20.3.0/24"}),
    (GroupKey(ByKind.RADDR, addr("10.20.3.4")), "raddr/64", "10.20.3.4", {"raddr": "10.20.3.4"}),  # IPv4: 32 at most
    (GroupKey(ByKind.RADDR, addr("2001:db8:1:2::")), "raddr/64", "2001:db8:1:2::/64", {"raddr": "2001:db8:1:2::/64"}),
    (GroupKey(ByKind.LADDR, addr("::1")), "laddr", "::1", {"laddr": "::1"}),
    (GroupKey(ByKind.RPORT, port=5432), "rport", "5432", {"rport": 5432}),
    (GroupKey(ByKind.LPORT, port=443), "lport", "443", {"lport": 443}),
    (GroupKey(ByKind.NETNS, netns=4026531840), "netns", "4026531840", {"netns": 4026531840}),
    (GroupKey(ByKind.CGROUP, cgroup_id=99), "cgroup", "/app", {"cgroup_id": 99, "cgroup": "/app"}),
    (GroupKey(ByKind.CGROUP, cgroup_id=98), "cgroup", "98", {"cgroup_id": 98, "cgroup": None}),  # path unknown
    (GroupKey(ByKind.CGROUP), "cgroup", "-", {"cgroup_id": 0, "cgroup": None}),  # no cgroup-v2 cgroup
])
def test_a_keys_text_and_json(key: GroupKey, by: str, text: str, json: dict[str, object]) -> None:
    def path(cgroup_id: int) -> str | None:
        return {99: "/app"}.get(cgroup_id)
    assert key.text(F.parse_by(by), path) == text
    assert key.to_json(F.parse_by(by), path) == json


def test_a_workload_key_names_both_parts() -> None:
    key = GroupKey(ByKind.WORKLOAD, cgroup_id=99, netns=5)
    assert key.text(By(ByKind.WORKLOAD), lambda i: "/pod/c1") == "cgroup /pod/c1 netns 5"
    assert key.to_json(By(ByKind.WORKLOAD), lambda i: None) == {"cgroup_id": 99, "cgroup": None, "netns": 5}


# ---- the estimator ------------------------------------------------------------------------


def histogram_quantile(q: float, h: Histogram) -> float:
    """Prometheus' histogram_quantile (promql/quantile.go, bucketQuantile) over the
    cumulative buckets /metrics exposes, in microseconds."""
    buckets = cumulative(h)
    total = buckets[-1][1]
    rank = q * total
    b = next(i for i, (_, c) in enumerate(buckets) if c >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0] * 1e6
    start = 0.0 if b == 0 else buckets[b - 1][0]
    below = 0 if b == 0 else buckets[b - 1][1]
    end, count = buckets[b][0], buckets[b][1] - below
    return (start + (end - start) * (rank - below) / count) * 1e6


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.integers(0, 2**27), min_size=1, max_size=200), st.sampled_from([0.5, 0.9, 0.99, 0.25]))
def test_percentiles_are_prometheus_histogram_quantile(rtts: list[int], q: float) -> None:
    h = hist(*rtts)
    got = G.quantile(h, q)
    assert got is not None and math.isclose(got, histogram_quantile(q, h), rel_tol=1e-9)
    true = sorted(rtts)[max(0, math.ceil(q * len(rtts)) - 1)]
    if bucket_of(true) < BUCKETS - 1:  # within the true value's bucket: a factor of two
        assert bucket_of(int(got)) in (bucket_of(true), bucket_of(true) + 1)


def test_summary_of_a_histogram() -> None:
    s = G.summary(hist(100, 100, 100, 3000))
    assert s["count"] == 4 and s["mean_us"] == 825.0
    assert 64 <= s["p50_us"] < 128 and 2048 <= s["p99_us"] <= 4096
    assert G.summary(Histogram.empty()) == {"count": 0, "mean_us": None, "p50_us": None, "p90_us": None,
                                            "p99_us": None}


# ---- order, restarts, evictions -------------------------------------------------------------


def group(port: int, closed: Histogram, sampled: Histogram | None = None, first: int = 1) -> Group:
    return Group(GroupKey(ByKind.RPORT, port=port), first, first, closed, sampled or Histogram.empty())


def test_groups_are_ordered_largest_first_by_what_is_asked() -> None:
    a = group(1, hist(100, 100, 100))  # most connections, fast
    b = group(2, hist(5000, 5000))  # slow
    c = group(3, hist(900, 40_000))  # slowest tail
    d = group(4, Histogram.empty(), hist(10, 10, 10, 10))  # live samples only: a pool's connection
    text = str
    assert [g.key.port for g in G.ordered([a, b, c, d], "count", "closed", text)] == [1, 2, 3, 4]
    assert [g.key.port for g in G.ordered([a, b, c, d], "mean", "closed", text)] == [3, 2, 1, 4]
    assert [g.key.port for g in G.ordered([a, b, c, d], "p50", "closed", text)] == [2, 3, 1, 4]
    assert [g.key.port for g in G.ordered([a, b, c, d], "p99", "closed", text)] == [3, 2, 1, 4]
    assert G.ordered([a, b, c, d], "count", "sampled", text)[0].key.port == 4
    tie = [group(9, hist(100)), group(8, hist(100))]
    assert [g.key.port for g in G.ordered(tie, "count", "closed", lambda k: str(k.port))] == [8, 9]
    with pytest.raises(ValueError):
        G.ordered([a], "p75", "closed")


def test_one_read_of_the_map_by_filter_and_the_busiest_by_their_counts_alone() -> None:
    def packed(h: Histogram) -> bytes:
        return HIST.pack(0, h.sum_us, *h.buckets)  # as the kernel leaves a group's: no count
    rows = [(GroupKey(ByKind.RPORT, port=p).pack(1, 1), bytes(G.GROUP_HEAD.size) + packed(hist(*[100] * n))
             + packed(hist(*[100] * s))) for p, n, s in ((1, 5, 0), (2, 1, 9), (3, 2, 2))]
    assert all(len(v) == G.GROUP_SIZE for _, v in rows)
    other = (GroupKey(ByKind.RPORT, port=9).pack(2, 7), rows[0][1])  # another filter's
    read = G.GroupRows(b"".join(k for k, _ in [*rows, other]), b"".join(v for _, v in [*rows, other]))
    assert len(read) == 4 and (read.count(1, 1), read.count(2, 7), read.count(7, 2)) == (3, 1, 0)
    assert (read.indices(1, 1), read.indices(2, 7), read.indices(3, 3)) == ([0, 1, 2], [3], [])
    assert sorted(read.filters()) == [(1, 1), (2, 7)]
    assert [read.total(i) for i in range(4)] == [5, 10, 4, 5] and (read.key(3), read.value(3)) == other
    assert [GroupKey.unpack(read.key(i))[2].port for i in read.top(1, 1, 2)] == [2, 1]
    assert read.top(1, 1, 5) == [0, 1, 2] and read.top(3, 3, 2) == []
    assert len(G.GroupRows(b"", b"")) == 0 and G.GroupRows(b"", b"").filters() == []


def test_a_later_read_takes_the_index_over_only_when_its_keys_are_the_same_bytes() -> None:
    def value(n: int) -> bytes:
        return bytes(G.GROUP_HEAD.size) + HIST.pack(0, 100 * n, *hist(*[100] * n).buckets) + bytes(HIST.size)
    keys = [GroupKey(ByKind.RPORT, port=p).pack(1, 1) for p in (1, 2)]
    first = G.GroupRows(b"".join(keys), value(1) + value(2))
    assert first.top(1, 1, 1) == [1]
    again = G.GroupRows(b"".join(keys), value(5) + value(2), first.index)  # counts changed, keys did not
    assert again.index is first.index and again.top(1, 1, 1) == [0] and [again.total(i) for i in (0, 1)] == [5, 2]
    moved = [keys[1], GroupKey(ByKind.RPORT, port=1).pack(3, 2)]  # a group made, another gone
    other = G.GroupRows(b"".join(moved), value(1) + value(2), first.index)
    assert other.index is not first.index and (other.indices(1, 1), other.indices(3, 2)) == ([0], [1])
    assert other.others(frozenset({G.filter_id(1, 1)})) == [(3, 2)] and other.count(3, 2) == 1


def test_a_groups_count_is_the_sum_of_its_buckets() -> None:
    raw = G.GROUP_HEAD.pack(5, 9) + HIST.pack(0, 300, 0, 0, 0, 0, 0, 0, 2, 1, *[0] * 18) + HIST.pack(0, 0, *[0] * 26)
    g = Group.unpack(GroupKey(ByKind.RPORT, port=1), raw)
    assert (g.first_ns, g.last_ns, g.closed.count, g.closed.sum_us, g.sampled.count) == (5, 9, 3, 300, 0)


def test_groups_merged_in_user_space_sum_their_parts() -> None:
    """`by container` (issue 23) from the kernel's (cgroup id, netns) groups: the parts of
    one container summed, the others kept apart."""
    def one(cgroup_id: int, netns: int, first: int, last: int, rtts: list[int], restarted: bool = False) -> Group:
        buckets = [0] * BUCKETS
        for r in rtts:
            buckets[bucket_of(r)] += 1
        closed = Histogram(len(rtts), sum(rtts), tuple(buckets))
        return Group(GroupKey(ByKind.WORKLOAD, cgroup_id=cgroup_id, netns=netns), first, last, closed,
                     Histogram.empty(), restarted)

    parts = [one(10, 7, 50, 90, [100, 200]), one(11, 7, 30, 60, [5000], restarted=True), one(12, 8, 1, 2, [9])]
    web, db = GroupKey(ByKind.WORKLOAD, netns=7), GroupKey(ByKind.WORKLOAD, netns=8)
    got = {g.key: g for g in G.merged(parts, lambda k: web if k.netns == 7 else db)}
    assert set(got) == {web, db}
    w = got[web]
    assert (w.first_ns, w.last_ns, w.closed.count, w.closed.sum_us, w.restarted) == (30, 90, 3, 5300, True)
    assert w.closed.buckets == tuple(a + b for a, b in zip(parts[0].closed.buckets, parts[1].closed.buckets))
    assert got[db] == Group(db, 1, 2, parts[2].closed, Histogram.empty(), False)
    assert G.merged([], lambda k: k) == []


def test_a_group_made_again_is_seen_as_restarted_and_stays_so() -> None:
    memory = GroupMemory(limit=3)
    key = GroupKey(ByKind.RPORT, port=1).pack(1, 1)
    assert memory.seen(key, 100) is False
    assert memory.seen(key, 100) is False
    assert memory.seen(key, 500) is True  # evicted and made again: a later first_ns
    assert memory.seen(key, 500) is True  # its counts are still only since then
    for p in (2, 3, 4):  # bounded: the least recently seen goes
        memory.seen(GroupKey(ByKind.RPORT, port=p).pack(1, 1), 1)
    assert memory.seen(key, 900) is False  # forgotten: nothing to compare with
    memory.forget([(1, 1)])
    assert len(memory._first) == 0


def test_evictions_are_what_was_made_and_is_gone_never_going_back() -> None:
    assert G.evicted(created=10, live=4) == 6
    assert G.evicted(created=4, live=5, before=0) == 0  # an insert counted just after it landed
    assert G.evicted(created=9, live=4, before=6) == 6  # ... never below the last answer


# ---- /metrics ----------------------------------------------------------------------------------


def grouped(name: str, k: int, count: int = 3) -> FilterSeries:
    groups = tuple(GroupSeries(f"10.0.{i}.1", hist(*[100] * count), Histogram.empty()) for i in range(k))
    return FilterSeries(name, hist(*[100] * count * k), Histogram.empty(), 1, groups, k + 2, 4)


def snapshot(*series: FilterSeries, bound: SeriesBound | None = None, sampling: bool = False) -> Snapshot:
    return Snapshot(series, events_total=0, dropped={}, filters_max=1024, attach_mode="tp_btf", version="t",
                    sampling=sampling, bound=bound, now_ns=10)


def test_groups_have_families_of_their_own_with_a_group_label() -> None:
    text = metrics.render(snapshot(grouped("dst 10.0.0.0/8 by raddr", 2), FilterSeries("10.9.9.9", hist(5),
                                                                                      Histogram.empty())))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rtt = families["ttcp_group_connection_rtt_seconds"]
    counts = {s.labels["group"]: s.value for s in rtt.samples if s.name.endswith("_count")}
    assert counts == {"10.0.0.1": 3, "10.0.1.1": 3}
    assert {s.labels["filter"] for s in rtt.samples} == {"dst 10.0.0.0/8 by raddr"}
    assert families["ttcp_filter_groups"].samples[0].value == 4
    assert families["ttcp_groups_evicted"].samples[0].value == 4  # the parser drops _total
    # the filters' own families keep one series per filter: a sum by filter counts each connection once
    assert {s.labels.get("group") for s in families["ttcp_connection_rtt_seconds"].samples} == {None}
    assert "ttcp_group_rtt_sample_seconds" not in families  # sampling off
    assert "ttcp_group_rtt_sample_seconds" in {f.name for f in text_string_to_metric_families(
        metrics.render(snapshot(grouped("x by rport", 1), sampling=True)))}


def test_a_filters_groups_are_rendered_again_when_one_changes() -> None:
    """The rendered blocks are kept between answers: a change of a group's counts, of
    which groups are the top ones, of the groups' count or evictions shows at once."""
    def families(s: Snapshot) -> dict[str, dict[tuple[str, str], float]]:
        out: dict[str, dict[tuple[str, str], float]] = {}
        for fam in text_string_to_metric_families(metrics.render(s)):
            for x in fam.samples:
                if x.name.endswith("_count") or not x.name.endswith(("_bucket", "_sum")):
                    out.setdefault(x.name, {})[x.labels.get("filter", ""), x.labels.get("group", "")] = x.value
        return out
    name = "dst 10.0.0.0/8 by raddr"
    first = families(snapshot(grouped(name, 2)))
    assert first["ttcp_group_connection_rtt_seconds_count"] == {(name, "10.0.0.1"): 3, (name, "10.0.1.1"): 3}
    busier = grouped(name, 2)._replace(groups=(GroupSeries("10.0.0.1", hist(*[100] * 7), Histogram.empty()),
                                                GroupSeries("10.0.1.1", hist(100, 100, 100), Histogram.empty())))
    assert families(snapshot(busier))["ttcp_group_connection_rtt_seconds_count"][name, "10.0.0.1"] == 7
    other = busier._replace(groups=(GroupSeries("10.0.2.1", hist(100), Histogram.empty()),))
    assert families(snapshot(other))["ttcp_group_connection_rtt_seconds_count"] == {(name, "10.0.2.1"): 1}
    more = families(snapshot(other._replace(group_count=9, groups_evicted=5)))
    assert more["ttcp_filter_groups"] == {(name, ""): 9} and more["ttcp_groups_evicted_total"] == {(name, ""): 5}
    none = families(snapshot(other._replace(groups=(), group_count=0)))
    assert "ttcp_group_connection_rtt_seconds_count" not in none and none["ttcp_filter_groups"] == {(name, ""): 0}
    assert families(snapshot(grouped(name, 2))) == first


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize("k", [1, 5])
def test_the_answer_stays_within_the_bound_with_groups(k: int) -> None:
    many = [grouped(f"10.{i >> 8}.{i & 255}.0/24 by raddr", k) for i in range(1000)]
    bound = SeriesBound(series_bound.DEFAULT_MAX_SERIES)
    text = metrics.render(snapshot(*many, bound=bound))
    assert series_count(text) <= series_bound.DEFAULT_MAX_SERIES
    shown = {line.split('filter="', 1)[1].split('"', 1)[0] for line in text.splitlines()
             if line.startswith("ttcp_group_connection_rtt_seconds_count")}
    per_filter = HISTOGRAM_SERIES * (1 + k)  # the filter's histogram and its k groups', whole
    always = series_count(metrics.render(snapshot(*many, bound=SeriesBound(1))))  # no histogram fits
    assert len(shown) == (series_bound.DEFAULT_MAX_SERIES - always) // per_filter > 0
    omitted = next(float(line.split()[1]) for line in text.splitlines()
                   if line.startswith("ttcp_metrics_series_omitted"))
    assert omitted == (1000 - len(shown)) * per_filter
    unbounded = metrics.render(snapshot(*many, bound=SeriesBound(0)))
    assert series_count(unbounded) - series_count(text) == omitted


def test_groups_never_make_more_than_k_series_per_filter_whatever_the_traffic() -> None:
    """The kernel may hold thousands of groups for a filter: /metrics shows the K given."""
    few, busy = grouped("a by raddr", 5, count=1), grouped("a by raddr", 5, count=10_000)
    assert series_count(metrics.render(snapshot(few))) == series_count(metrics.render(snapshot(busy)))


# ---- --format histogram -----------------------------------------------------------------------


def test_one_histogram_per_group_largest_first() -> None:
    out = io.StringIO()
    printer = HistogramPrinter(out)
    f = F.parse("dst 10.20.0.0/16 port 5432 by raddr")
    a = Group(GroupKey(ByKind.RADDR, addr("10.20.3.4")), 1, 1, hist(100, 100), Histogram.empty())
    b = Group(GroupKey(ByKind.RADDR, addr("10.20.3.5")), 1, 1, hist(900, 900, 900), Histogram.empty())
    stats = {f: FilterStats(1, hist(100, 100, 900, 900, 900), Histogram.empty())}
    printer.totals(stats, {f: GroupSet(f.by, [a, b], 2, 0, 64)})  # type: ignore[arg-type]
    text = out.getvalue()
    assert "filter dst 10.20.0.0/16 port 5432 by raddr: 5 connections at close, 0 live samples; 2 groups" in text
    first = text.index("raddr 10.20.3.5: RTT at close, 3 samples, mean 900 us")
    assert first < text.index("raddr 10.20.3.4: RTT at close, 2 samples, mean 100 us")  # largest first
    assert text.count("usecs : count") == 2


def test_an_interval_counts_each_groups_rtts_since_the_last_and_a_restarted_one_from_its_start() -> None:
    out = io.StringIO()
    printer = HistogramPrinter(out)
    f = F.parse("10.0.0.1 by rport")
    assert f.by is not None
    g1 = Group(GroupKey(ByKind.RPORT, port=80), 1, 1, hist(100, 100), Histogram.empty())
    printer.interval({f: FilterStats(1, hist(100, 100), Histogram.empty())}, {f: GroupSet(f.by, [g1], 1, 0, 64)})
    g2 = Group(GroupKey(ByKind.RPORT, port=80), 1, 2, hist(100, 100, 100), Histogram.empty())
    out.truncate(0)
    printer.interval({f: FilterStats(2, hist(100, 100, 100), Histogram.empty())}, {f: GroupSet(f.by, [g2], 1, 0, 64)})
    assert "rport 80: RTT at close, 1 samples" in out.getvalue()
    again = Group(GroupKey(ByKind.RPORT, port=80), 5, 5, hist(100, 100), Histogram.empty())  # evicted, made again
    out.truncate(0)
    printer.interval({f: FilterStats(3, hist(100, 100, 100, 100, 100), Histogram.empty())},
                     {f: GroupSet(f.by, [again], 1, 1, 64)})
    assert "rport 80: RTT at close, 2 samples" in out.getvalue() and "(1 evicted" in out.getvalue()
