"""What /metrics says of ttcp itself and how it is bounded (pure, on bytes): the process
metrics as client_python computes them, the BPF program statistics, drops by reason,
the filters file's counters, and --metrics-max-series' choice of histograms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ttcp.api import metrics, process_metrics, series_bound
from ttcp.api.metrics import FileCounters, FilterSeries, ProgramStats, Snapshot
from ttcp.api.process_metrics import Stat
from ttcp.api.series_bound import HISTOGRAM_SERIES, SeriesBound, Usage
from ttcp.errors import FormatError
from ttcp.kernel import bpf_stats
from ttcp.rtt.histogram import BUCKETS, Histogram

parser = pytest.importorskip("prometheus_client.parser")

# ---- process metrics -----------------------------------------------------------------------------

# A real line's shape: a command name with a space and a ')', fields 1..52.
STAT = (b"4242 (tt cp) x) S 1 4242 4242 0 -1 4194560 1503 0 0 0 "
        b"250 37 0 0 20 0 3 0 123456 51372032 11980 18446744073709551615 1 1 0 0 0 0 0 "
        b"16781312 16386 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
LIMITS = (b"Limit                     Soft Limit           Hard Limit           Units     \n"
          b"Max cpu time              unlimited            unlimited            seconds   \n"
          b"Max open files            1024                 524288               files     \n")


def test_the_stat_fields_after_the_last_parenthesis() -> None:
    assert process_metrics.parse_stat(STAT) == Stat(utime_ticks=250, stime_ticks=37, starttime_ticks=123456,
                                                    vsize_bytes=51372032, rss_pages=11980)


def test_computed_as_client_python_does() -> None:
    m = process_metrics.compute(process_metrics.parse_stat(STAT), 1_700_000_000,
                                process_metrics.parse_max_fds(LIMITS), 9, 100, 4096)
    assert m.cpu_seconds == 2.87 and m.resident_memory_bytes == 11980 * 4096
    assert m.start_time_seconds == 1_700_000_000 + 1234.56 and (m.open_fds, m.max_fds) == (9, 1024.0)


@pytest.mark.parametrize("raw", [b"", b"1 (x", b"1 (x) S 1 2", b"1 (x) S " + b"z " * 30])
def test_a_bad_stat_is_a_format_error(raw: bytes) -> None:
    with pytest.raises(FormatError, match="/proc/PID/stat"):
        process_metrics.parse_stat(raw)


def test_btime_and_the_open_files_limit() -> None:
    assert process_metrics.parse_btime(b"cpu  1 2 3\nintr 5\nbtime 1765000000\nprocesses 9\n") == 1765000000
    assert process_metrics.parse_max_fds(LIMITS.replace(b"1024     ", b"unlimited")) == float("inf")
    with pytest.raises(FormatError):
        process_metrics.parse_btime(b"cpu 1\nbtime soon\n")
    with pytest.raises(FormatError):
        process_metrics.parse_max_fds(b"Limit Soft Hard\nMax open files  lots\n")


def test_this_process_reads_as_client_python_reads_it() -> None:
    """Both read this process; CPU and RSS move between the reads, so those compare loosely."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    theirs = {s.name: s.value for family in registry.collect() for s in family.samples}
    ours = process_metrics.ProcessReader().read()
    assert theirs["process_start_time_seconds"] == ours.start_time_seconds
    assert theirs["process_max_fds"] == ours.max_fds and theirs["process_open_fds"] == ours.open_fds
    assert theirs["process_virtual_memory_bytes"] == pytest.approx(ours.virtual_memory_bytes, rel=0.1)
    assert abs(theirs["process_cpu_seconds_total"] - ours.cpu_seconds) < 0.05
    assert abs(theirs["process_resident_memory_bytes"] - ours.resident_memory_bytes) < 4 << 20
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        assert process_metrics.ProcessReader().read().open_fds == ours.open_fds + 1
    finally:
        os.close(fd)


# ---- the whole answer ----------------------------------------------------------------------------


def hist(count: int) -> Histogram:
    return Histogram(count, 100 * count, (0, 0, 0, 0, 0, 0, count) + (0,) * (BUCKETS - 7))


def snapshot(*series: FilterSeries, sampling: bool = False, bound: SeriesBound | None = None,
             **kw: object) -> Snapshot:
    return Snapshot(list(series), events_total=3, dropped={"ring_full": 2, "recursion": 1}, filters_max=64,
                    attach_mode="tp_btf", version="0.1.0", sampling=sampling, bound=bound, **kw)  # type: ignore[arg-type]


def families(s: Snapshot) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(metrics.render(s))}


def samples(fams: dict[str, object], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in fams[name].samples}  # type: ignore[attr-defined]


def test_drops_by_reason_programs_process_and_the_filters_file() -> None:
    proc = process_metrics.compute(process_metrics.parse_stat(STAT), 1_700_000_000, 1024.0, 9, 100, 4096)
    fams = families(snapshot(FilterSeries("10.0.0.1", hist(2), hist(5)), process=proc, bpf_stats=True,
                             programs=[ProgramStats("tcprtt_tp_btf", 1_500_000_000, 7)],
                             filters_file=FileCounters(errors_total=4, reload_ok=False)))
    assert samples(fams, "ttcp_events_dropped") == {(("reason", "recursion"),): 1, (("reason", "ring_full"),): 2}
    assert samples(fams, "ttcp_bpf_program_run_seconds") == {(("program", "tcprtt_tp_btf"),): 1.5}
    assert samples(fams, "ttcp_bpf_program_runs") == {(("program", "tcprtt_tp_btf"),): 7}
    assert samples(fams, "ttcp_bpf_stats_enabled") == {(): 1}
    assert samples(fams, "ttcp_filters_file_errors") == {(): 4}
    assert samples(fams, "ttcp_filters_file_reload_success") == {(): 0}
    assert samples(fams, "process_cpu_seconds") == {(): 2.87}
    assert samples(fams, "process_max_fds") == {(): 1024}
    assert "ttcp_rtt_sample_seconds" not in fams  # sampling is off: no sampled series
    assert samples(fams, "ttcp_metrics_max_series") == {(): 0}  # no bound given


def test_without_them_their_series_are_absent_not_zero() -> None:
    fams = families(snapshot(FilterSeries("10.0.0.1", hist(2), hist(0)), sampling=True))
    assert {"process_cpu_seconds", "ttcp_bpf_program_runs", "ttcp_filters_file_errors"}.isdisjoint(fams)
    assert samples(fams, "ttcp_rtt_sample_seconds")[(("filter", "10.0.0.1"), ("le", "+Inf"))] == 0


def series(s: Snapshot) -> int:
    return sum(1 for line in metrics.render(s).splitlines() if line and not line.startswith("#"))


def test_the_bound_counts_every_series_and_leaves_whole_histograms_out() -> None:
    many = [FilterSeries(f"10.0.{i // 256}.{i % 256}", hist(i), hist(0), last_match_ns=i) for i in range(100)]
    unbounded = snapshot(*many, bound=SeriesBound(0))
    fixed = series(unbounded) - 100 * (HISTOGRAM_SERIES + 1)
    bound = SeriesBound(fixed + 100 + 10 * HISTOGRAM_SERIES + HISTOGRAM_SERIES - 1)  # room for 10, not 11
    fams = families(snapshot(*many, bound=bound, now_ns=10**12))
    counts = samples(fams, "ttcp_connection_rtt_seconds")
    shown = {dict(k)["filter"] for k in counts}
    assert shown == {f"10.0.0.{i}" for i in range(90, 100)}  # the ten most recently used
    assert len(samples(fams, "ttcp_filter_matches")) == 100  # every filter's counter stays
    assert samples(fams, "ttcp_metrics_series_omitted") == {(): 90 * HISTOGRAM_SERIES}
    assert series(snapshot(*many, bound=bound, now_ns=10**12)) <= bound.max_series
    on = families(snapshot(*many, sampling=True, bound=bound, now_ns=10**12))  # two histograms a filter
    assert len({dict(k)["filter"] for k in samples(on, "ttcp_rtt_sample_seconds")}) == 5
    assert samples(on, "ttcp_metrics_series_omitted") == {(): 95 * 2 * HISTOGRAM_SERIES}


def test_the_default_bound_keeps_1000_filters_under_a_megabyte() -> None:
    many = [FilterSeries(f"dst 10.{20 + i // 256}.{i % 256}.0/24 port 5432", hist(i % 50), hist(3 * i),
                         last_match_ns=i) for i in range(1000)]
    for sampling in (False, True):
        unbounded = metrics.body(snapshot(*many, sampling=sampling, bound=SeriesBound(0)))
        bounded = metrics.body(snapshot(*many, sampling=sampling, bound=SeriesBound(series_bound.DEFAULT_MAX_SERIES),
                                        now_ns=10**12))
        assert len(unbounded) > 2.5e6 and len(bounded) < 1e6, (sampling, len(unbounded), len(bounded))


# ---- the bound's choice (pure) ------------------------------------------------------------------------

MINUTE = 60 * 10**9


def test_ranked_by_recent_use_then_count_then_order() -> None:
    usage = [Usage("a", 0, 9), Usage("b", 5, 1), Usage("c", 5, 3), Usage("d", 0, 9), Usage("e", 0, 0)]
    assert series_bound.ranked(usage) == ["c", "b", "a", "d", "e"]


def test_membership_is_sticky_for_a_minute() -> None:
    members = series_bound.choose(["a", "b", "c"], 2, {}, now_ns=0, stay_ns=MINUTE)
    assert members == {"a": 0, "b": 0}
    # c overtakes b: b keeps its place until it has had it for a minute
    assert series_bound.choose(["a", "c", "b"], 2, members, now_ns=MINUTE - 1, stay_ns=MINUTE) == members
    assert series_bound.choose(["a", "c", "b"], 2, members, now_ns=MINUTE, stay_ns=MINUTE) == {
        "a": 0, "c": MINUTE}
    # a smaller room is enforced at once, the best-ranked members staying
    assert series_bound.choose(["b", "a", "c"], 1, members, now_ns=1, stay_ns=MINUTE) == {"b": 0}
    # a member that left the table leaves the membership
    assert series_bound.choose(["b", "c"], 2, members, now_ns=1, stay_ns=MINUTE) == {"b": 0, "c": 1}
    assert series_bound.choose(["a"], 0, members, now_ns=1, stay_ns=MINUTE) == {}


def test_live_samples_count_as_use_from_the_second_look() -> None:
    bound = SeriesBound(1000)
    assert bound.usage("a", 0, 1, sampled=50, now_ns=100) == Usage("a", 0, 51)  # first seen: no sign of use
    assert bound.usage("a", 0, 1, sampled=50, now_ns=200) == Usage("a", 0, 51)
    assert bound.usage("a", 0, 1, sampled=60, now_ns=300) == Usage("a", 300, 61)
    assert bound.usage("a", 400, 2, sampled=60, now_ns=500) == Usage("a", 400, 62)  # a match since


def test_room_beside_the_fixed_series_and_the_counters() -> None:
    assert SeriesBound(0).room(30, 1000, 28) is None
    assert SeriesBound(10_000).room(30, 1000, 28) == (10_000 - 30 - 1000) // 28
    assert SeriesBound(500).room(30, 1000, 28) == 0


# ---- the kernel's BPF statistics switch ------------------------------------------------------------


def test_the_sysctl_alone_counts_as_on(tmp_path: Path) -> None:
    path = tmp_path / "bpf_stats_enabled"
    assert not bpf_stats.sysctl_on(path)  # missing
    path.write_text("0\n")
    assert not bpf_stats.sysctl_on(path)
    path.write_text("1\n")
    assert bpf_stats.sysctl_on(path)
