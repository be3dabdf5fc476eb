"""The filter language, histograms and the Prometheus text, on values (no kernel)."""

from __future__ import annotations

import ipaddress
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcp.api import metrics
from ttcp.rtt import filters as F
from ttcp.rtt import histogram
from ttcp.rtt.filters import Filter, FilterError, Side
from ttcp.rtt.histogram import BUCKETS, Histogram

EXAMPLES = int(os.environ.get("TTCP_FUZZ_EXAMPLES", "300"))


# ---- parsing and canonical text ---------------------------------------------------------


@pytest.mark.parametrize("text,canonical", [
    ("10.178.0.5", "10.178.0.5"),  # a plain address keeps its plain form
    ("  10.178.0.5\t", "10.178.0.5"),
    ("src 10.178.0.5", "10.178.0.5"),
    ("SRC ::FFFF:10.178.0.5", "10.178.0.5"),
    ("::ffff:10.0.0.0/104", "src 10.0.0.0/8"),
    ("10.0.0.1/32", "10.0.0.1"),
    ("2001:DB8:0::1/128", "2001:db8::1"),
    ("dst 10.20.0.0/16 port 5432", "dst 10.20.0.0/16 port 5432"),
    ("DST   10.20.0.0/16   PORT   5432", "dst 10.20.0.0/16 port 5432"),
    ("src 172.17.0.0/16", "src 172.17.0.0/16"),
    ("fd00::/8", "src fd00::/8"),
    ("dst ::/0", "dst ::/0"),
    ("src 0.0.0.0/0 port 22", "src 0.0.0.0/0 port 22"),
    ("10.0.0.1 port 65535", "src 10.0.0.1 port 65535"),
])
def test_canonical_text(text: str, canonical: str) -> None:
    assert F.canonical(text) == canonical
    assert F.parse(canonical) == F.parse(text)


@pytest.mark.parametrize("text,why", [
    ("", "empty"), ("   ", "empty"), ("src", "must follow"), ("dst", "must follow"),
    ("10.0.0.1/8", "host bits set under /8 (the network is 10.0.0.0/8)"),
    ("2001:db8::1/32", "host bits"),
    ("10.0.0.0/33", "from 0 to 32"), ("::/129", "from 0 to 128"), ("10.0.0.0/", "from 0 to 32"),
    ("10.0.0.0/08", "from 0 to 32"), ("10.0.0.0/-1", "from 0 to 32"), ("10.0.0.0/٨", "from 0 to 32"),
    ("10.0.0.1 port", "must follow 'port'"), ("10.0.0.1 port 0", "1 to 65535"),
    ("10.0.0.1 port 65536", "1 to 65535"), ("10.0.0.1 port 080", "1 to 65535"),
    ("10.0.0.1 port -1", "1 to 65535"), ("10.0.0.1 port ١٢", "1 to 65535"),
    ("10.0.0.1 port 80 443", "after the port"), ("10.0.0.1 ports 80", "unexpected 'ports'"),
    ("10.0.0.1 10.0.0.2", "unexpected '10.0.0.2'"), ("src dst 10.0.0.1", "'dst' is not an IPv4"),
    ("fe80::1%eth0", "zone"), ("300.1.1.1", "not an IPv4 or IPv6"), ("[::1]", "not an IPv4"),
    ("localhost", "not an IPv4"), ("10.0.0.1:80", "not an IPv4"), ("x" * 300, "at most 256"),
])
def test_malformed_filters_are_refused_naming_the_part(text: str, why: str) -> None:
    with pytest.raises(FilterError) as info:
        F.parse(text)
    assert why in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("item,canonical", [
    ("dst 10.0.0.0/8", "dst 10.0.0.0/8"),
    ({"address": "10.0.0.1"}, "10.0.0.1"),
    ({"side": "dst", "address": "10.20.0.0/16", "port": 5432}, "dst 10.20.0.0/16 port 5432"),
    ({"side": "src", "address": " fd00::/8 "}, "src fd00::/8"),
])
def test_json_forms(item: object, canonical: str) -> None:
    f = F.from_json(item)
    assert str(f) == canonical
    assert F.from_json(f.to_json()) == f


@pytest.mark.parametrize("item,why", [
    (7, "not int"), (None, "not NoneType"), ({"side": "dst"}, "needs \"address\""),
    ({"address": "10.0.0.1", "side": "SRC"}, "side must be"), ({"address": 1}, "needs"),
    ({"address": "10.0.0.1", "port": 0}, "1 to 65535"), ({"address": "10.0.0.1", "port": True}, "1 to 65535"),
    ({"address": "10.0.0.1", "port": 80.0}, "1 to 65535"), ({"address": "10.0.0.1/8"}, "host bits"),
    ({"address": "10.0.0.1", "prefix": 8}, "unknown filter field(s) prefix"),
])
def test_bad_json_forms(item: object, why: str) -> None:
    with pytest.raises(FilterError, match=why.replace("(", r"\(").replace(")", r"\)")):
        F.from_json(item)


_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def filters(draw: st.DrawFn) -> Filter:
    ip = draw(st.one_of(_v4, _v6))
    width = 32 if ip.version == 4 else 128
    plen = draw(st.integers(0, width))
    net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
    port = draw(st.one_of(st.just(0), st.integers(1, 65535)))
    side = draw(st.sampled_from(["src", "dst", ""]))
    text = f"{side} {net.network_address}/{plen}" + (f" port {port}" if port else "")
    return F.parse(text)


@settings(max_examples=EXAMPLES, deadline=None)
@given(filters())
def test_canonical_round_trip(f: Filter) -> None:
    text = str(f)
    assert F.parse(text) == f
    assert str(F.parse(text)) == text
    assert F.from_json(f.to_json()) == f
    assert F.from_host_key(F.host_key(f)) == f if f.is_host else F.from_net_key(F.net_key(f)) == f
    if f.side == Side.SRC and f.is_host and not f.port:
        assert " " not in text  # the plain form


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_with_one_line(text: str) -> None:
    try:
        f = F.parse(text)
    except FilterError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert F.parse(str(f)) == f


@settings(max_examples=EXAMPLES, deadline=None)
@given(filters(), st.integers(0, 2**128 - 1))
def test_an_event_names_the_filter_that_matched_it(f: Filter, noise: int) -> None:
    """Any address inside the filter's network (host bits anything), with its
    side, prefix and port flag, rebuilds exactly that filter."""
    host_mask = (1 << (128 - f.bits)) - 1
    addr = (int.from_bytes(f.addr, "big") | (noise & host_mask)).to_bytes(16, "big")
    assert F.matched(f.side, f.bits, addr, f.port) == f


def test_specificity_orders_as_documented() -> None:
    order = ["src 10.0.0.1 port 80", "dst 10.0.0.1 port 80", "10.0.0.1", "dst 10.0.0.1",
             "src 10.0.0.0/24 port 80", "src 10.0.0.0/24", "dst 10.0.0.0/24", "src 10.0.0.0/8 port 80",
             "src 10.0.0.0/8"]
    ranked = sorted((F.parse(t) for t in order), key=lambda x: x.specificity(), reverse=True)
    assert [str(x) for x in ranked] == order


def test_kind_bits_are_the_programs() -> None:
    # enum kind_bit in bpf/tcprtt.bpf.c
    assert [F.parse(t).kind_bit for t in ("src 1.2.3.4 port 1", "dst 1.2.3.4 port 1", "1.2.3.4",
                                          "dst 1.2.3.4", "src 1.2.3.0/24 port 1", "dst 1.2.3.0/24 port 1",
                                          "src 1.2.3.0/24", "dst 1.2.3.0/24")] == [1 << i for i in range(8)]


def test_keys_are_the_programs_layout() -> None:
    f = F.parse("dst 10.20.0.0/16 port 5432")
    key = F.net_key(f)
    assert len(key) == 24 and key[:4] == (24 + 112).to_bytes(4, "little")
    assert key[4] == 2 and key[5:7] == (5432).to_bytes(2, "big")  # big-endian: the trie compares bytes
    assert key[7:23] == bytes(10) + b"\xff\xff" + bytes([10, 20, 0, 0]) and key[23] == 0
    h = F.host_key(F.parse("src 10.0.0.1 port 80"))
    assert len(h) == 20 and h[0] == 1 and h[2:4] == (80).to_bytes(2, "little")


# ---- histograms ------------------------------------------------------------------------


@pytest.mark.parametrize("rtt,bucket", [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (1023, 9), (1024, 10),
                                       (2**25 - 1, 24), (2**25, 25), (10**9, 25)])
def test_bucket_of(rtt: int, bucket: int) -> None:
    assert histogram.bucket_of(rtt) == bucket
    assert histogram.low_us(bucket) <= rtt or bucket == 0
    high = histogram.high_us(bucket)
    assert high is None or rtt <= high


def test_render_is_bcc_style() -> None:
    h = Histogram(7, 300, (0, 0, 1, 0, 4, 2) + (0,) * (BUCKETS - 6))
    text = histogram.render(h, "filter 10.0.0.1: RTT at close")
    lines = text.splitlines()
    assert lines[0] == "filter 10.0.0.1: RTT at close"
    assert lines[1].split() == ["usecs", ":", "count", "distribution"]
    assert lines[2].split("|")[0].split() == ["4", "->", "7", ":", "1"]
    assert lines[4].split("|")[1] == "*" * 40  # the fullest bucket fills the bar
    assert lines[5].split("|")[1] == "*" * 20 + " " * 20
    assert len(lines) == 6  # from the first to the last non-empty bucket
    ms = histogram.render(h, "t", ms=True).splitlines()
    assert ms[1].split()[0] == "msecs" and ms[2].split()[:3] == ["0.004", "->", "0.007"]
    assert histogram.render(Histogram.empty(), "t").endswith("(no RTTs)")


def test_cumulative_buckets_in_seconds() -> None:
    h = Histogram(4, 0, (1, 0, 2) + (0,) * (BUCKETS - 4) + (1,))
    cum = histogram.cumulative(h)
    assert cum[0] == (2e-06, 1) and cum[2] == (8e-06, 3)
    assert cum[-2] == (2**25 / 1e6, 3)  # the last closed bucket ends at 2^25 us
    assert cum[-1] == (float("inf"), 4)  # the open-ended bucket only counts in +Inf
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(cum))


# ---- Prometheus text ----------------------------------------------------------------------


def _snapshot(*names: str) -> metrics.Snapshot:
    h = Histogram(3, 1500, (0, 0, 0, 1, 2) + (0,) * (BUCKETS - 5))
    series = [metrics.FilterSeries(n, h, Histogram.empty()) for n in names]
    return metrics.Snapshot(series, events_total=3, dropped={"ring_full": 1}, filters_max=1024, attach_mode="tp_btf",
                            version="0.1.0", sampling=False, stream_clients_dropped=2)


def test_prometheus_text_parses_and_says_what_it_should() -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    text = metrics.render(_snapshot("10.0.0.1", "dst 10.20.0.0/16 port 5432"))
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    rtt = families["ttcp_connection_rtt_seconds"]
    assert rtt.type == "histogram"
    count = {s.labels["filter"]: s.value for s in rtt.samples if s.name.endswith("_count")}
    assert count == {"10.0.0.1": 3, "dst 10.20.0.0/16 port 5432": 3}
    total = [s.value for s in rtt.samples if s.name.endswith("_sum")]
    assert total == [0.0015, 0.0015]
    inf = [s for s in rtt.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert [s.value for s in inf] == [3, 3]
    assert families["ttcp_events"].samples[0].value == 3  # counters drop _total in the family name
    dropped = {s.labels["reason"]: s.value for s in families["ttcp_events_dropped"].samples}
    assert dropped == {"ring_full": 1, "recursion": 0}
    assert families["ttcp_filters"].samples[0].value == 2
    assert families["ttcp_filters_max"].samples[0].value == 1024
    info = families["ttcp_info"].samples[0]
    assert info.labels == {"attach_mode": "tp_btf", "version": "0.1.0"} and info.value == 1


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4, unique=True))
def test_hostile_label_values_stay_valid(names: list[str]) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    text = metrics.render(_snapshot(*names))
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    got = {s.labels["filter"] for s in families["ttcp_filter_matches"].samples}
    assert got == set(names)
