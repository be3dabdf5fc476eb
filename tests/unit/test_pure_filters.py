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
    ("localhost", "not an IPv4"), ("10.0.0.1:80", "not an IPv4"), ("x" * 600, "at most 512"),
])
def test_malformed_filters_are_refused_naming_the_part(text: str, why: str) -> None:
    with pytest.raises(FilterError) as info:
        F.parse(text)
    assert why in str(info.value)
    assert "\n" not in str(info.value)


# ---- workloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("text,canonical", [
    ("cgroup /system.slice/app.service dst 10.20.0.0/16 port 5432",
     "cgroup /system.slice/app.service dst 10.20.0.0/16 port 5432"),
    ("CGROUP   /system.slice//app.service/ ", "cgroup /system.slice/app.service"),
    ("cgroup /./a/./b/.", "cgroup /a/b"),
    ("cgroup /", "cgroup /"), ("cgroup //", "cgroup /"),
    ("cgroup /a 10.0.0.1", "cgroup /a 10.0.0.1"),  # an address part keeps its own canonical form
    ("cgroup /a SRC 10.0.0.1", "cgroup /a 10.0.0.1"),
    ("netns /run/netns/web", "netns /run/netns/web"),
    ("NETNS /proc/1234/ns/net dst ::1 port 80", "netns /proc/1234/ns/net dst ::1 port 80"),
    ("netns 4026532325", "netns 4026532325"),
    ("netns 4294967295 src 10.0.0.0/8", "netns 4294967295 src 10.0.0.0/8"),
    ("cgroup /a\\b\"c'd", "cgroup /a\\b\"c'd"),  # any other character a directory name may hold
    ("cgroup /" + "/".join("l" for _ in range(31)), "cgroup /" + "/".join("l" for _ in range(31))),
])
def test_workload_canonical_text(text: str, canonical: str) -> None:
    f = F.parse(text)
    assert str(f) == canonical and F.parse(canonical) == f
    assert F.from_json(f.to_json()) == f


@pytest.mark.parametrize("text,why", [
    ("cgroup", "a path must follow 'cgroup'"), ("netns", "a path or inode number must follow 'netns'"),
    ("cgroup system.slice", "must be absolute"), ("cgroup /a/../b", "may not hold '..'"),
    ("cgroup /a/..", "'..'"), ("cgroup /a\x01b", "control character"), ("cgroup /a\x7fb", "control character"),
    ("netns 0", "from 1 to 4294967295"), ("netns 4294967296", "from 1 to 4294967295"),
    ("netns 007", "from 1 to 4294967295"), ("netns 12a", "from 1 to 4294967295"),
    ("netns run/netns/x", "must be absolute"),
    ("dst 10.0.0.1 cgroup /a", "the workload part ('cgroup') comes first"),
    ("src cgroup /a", "the workload part ('cgroup') comes first"),
    ("cgroup /a netns /run/netns/x", "a filter names one workload"),
    ("cgroup /a port 80", "not an IPv4"), ("cgroup /a 10.0.0.1/8", "host bits"),
    ("cgroup /" + "/".join("l" for _ in range(32)), "32 levels deep"),
    ("cgroup /" + "x" * 520, "at most 512"),
])
def test_malformed_workloads_are_refused_naming_the_part(text: str, why: str) -> None:
    with pytest.raises(FilterError) as info:
        F.parse(text)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_a_workload_part_alone_has_no_address() -> None:
    f = F.parse("cgroup /a")
    assert f == Filter.of_workload(F.Workload("cgroup", "/a")) and not f.has_address
    assert f.kind_bit == 0 and f.side == Side.NONE and f.to_json() == {"cgroup": "/a"}
    with pytest.raises(FilterError):
        Filter(Side.NONE, bytes(16), 0)  # no address part and no workload: no filter
    assert F.parse("cgroup /a") != F.parse("cgroup /a src ::/0")  # precedence and naming differ


def test_workload_levels_and_inodes() -> None:
    assert [F.parse(t).workload.level for t in ("cgroup /", "cgroup /a", "cgroup /a/b/c")] == [0, 1, 3]
    assert F.parse("netns 4026532325").workload.inode == 4026532325
    assert F.parse("netns /run/netns/x").workload.inode == 0


@pytest.mark.parametrize("item,canonical", [
    ({"cgroup": "/a"}, "cgroup /a"),
    ({"cgroup": "/a/", "side": "dst", "address": "10.0.0.0/8", "port": 80}, "cgroup /a dst 10.0.0.0/8 port 80"),
    ({"netns": 4026532325}, "netns 4026532325"), ({"netns": "4026532325"}, "netns 4026532325"),
    ({"netns": "/run/netns/web", "address": "10.1.2.3"}, "netns /run/netns/web 10.1.2.3"),
])
def test_workload_json_forms(item: object, canonical: str) -> None:
    f = F.from_json(item)
    assert str(f) == canonical and F.from_json(f.to_json()) == f


@pytest.mark.parametrize("item,why", [
    ({"cgroup": "/a", "netns": 1}, "one workload"), ({"cgroup": 7}, "cgroup must be a path"),
    ({"netns": True}, "netns must be a path or an inode number"), ({"netns": 0}, "from 1 to"),
    ({"cgroup": "rel"}, "absolute"), ({"cgroup": "/a", "port": 80}, "needs \"address\""),
    ({"cgroup": "/a", "side": "dst"}, "needs \"address\""), ({"cgroup": "/a b"}, "whitespace"),
    ({"cgroup": None}, "cgroup must be a path"),
])
def test_bad_workload_json_forms(item: object, why: str) -> None:
    with pytest.raises(FilterError, match=why):
        F.from_json(item)


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


# ---- breakdowns: `by KEY` ------------------------------------------------------------------


@pytest.mark.parametrize("text,canonical", [
    ("dst 10.20.0.0/16 port 5432 by raddr", "dst 10.20.0.0/16 port 5432 by raddr"),
    ("DST 10.20.0.0/16 PORT 5432 BY RADDR", "dst 10.20.0.0/16 port 5432 by raddr"),
    ("10.0.0.1 by raddr/128", "10.0.0.1 by raddr"),  # the whole address: no prefix
    ("dst 10.0.0.0/8 by raddr/24", "dst 10.0.0.0/8 by raddr/24"),
    ("dst ::/0 by Raddr/64", "dst ::/0 by raddr/64"),
    ("src 10.0.0.0/8 by laddr/32", "src 10.0.0.0/8 by laddr/32"),  # IPv6 peers: /32 of theirs
    ("dst 0.0.0.0/0 port 443 by lport", "dst 0.0.0.0/0 port 443 by lport"),
    ("src 10.0.0.5 by rport", "10.0.0.5 by rport"),  # a plain address keeps its plain form
    ("cgroup /system.slice by cgroup", "cgroup /system.slice by cgroup"),
    ("netns 4026531840 dst 10.0.0.0/8 by netns", "netns 4026531840 dst 10.0.0.0/8 by netns"),
    ("dst 10.20.0.0/16 port 5432 by Container", "dst 10.20.0.0/16 port 5432 by container"),
    ("pod shop/web-0 BY POD", "pod shop/web-0 by pod"),
    ("container web by container", "container web by container"),
    ("container by by pod", "container by by pod"),  # a container may be named "by"
    ("container By", "container By"),
])
def test_by_canonical_text(text: str, canonical: str) -> None:
    f = F.parse(text)
    assert str(f) == canonical and F.parse(canonical) == f
    if " by " not in canonical:
        assert f.by is None
        return
    assert f.by is not None and f.selector == F.parse(canonical.rsplit(" by ", 1)[0])
    assert f != f.selector and hash(f) != hash(f.selector)  # the clause is part of the identity
    assert F.key_of(f) == F.key_of(f.selector) if f.has_address and f.workload is None else True


@pytest.mark.parametrize("text,why", [
    ("by raddr", "`by` follows what it breaks down"), ("10.0.0.1 by", "a key must follow 'by'"),
    ("10.0.0.1 by raddr rport", "unexpected 'rport' after the by clause"),
    ("10.0.0.1 by by", "the key is raddr"), ("10.0.0.1 by host", "the key is raddr"),
    ("10.0.0.1 by rport/16", "the key is raddr"), ("10.0.0.1 by raddr/0", "from 1 to 128"),
    ("10.0.0.1 by raddr/129", "from 1 to 128"), ("10.0.0.1 by raddr/024", "from 1 to 128"),
    ("10.0.0.1 by raddr/", "from 1 to 128"), ("10.0.0.1 by raddr/x", "from 1 to 128"),
    ("10.0.0.1 port by rport", "must follow 'port'"), ("by raddr 10.0.0.1", "`by` follows"),
    ("10.0.0.1 by container/24", "the key is raddr"), ("10.0.0.1 by pods", "the key is raddr"),
    ("container by raddr", "'raddr' is not an IPv4 or IPv6 address"),
])
def test_malformed_by_clauses_are_refused_naming_the_part(text: str, why: str) -> None:
    with pytest.raises(FilterError, match=why.replace("(", r"\(").replace(")", r"\)")):
        F.parse(text)


@pytest.mark.parametrize("item,canonical", [
    ({"side": "dst", "address": "10.20.0.0/16", "port": 5432, "by": "raddr"}, "dst 10.20.0.0/16 port 5432 by raddr"),
    ({"address": "10.0.0.1", "by": " RPORT "}, "10.0.0.1 by rport"),
    ({"cgroup": "/app", "by": "raddr/24"}, "cgroup /app by raddr/24"),
])
def test_by_json_forms(item: object, canonical: str) -> None:
    f = F.from_json(item)
    assert str(f) == canonical and F.from_json(f.to_json()) == f


@pytest.mark.parametrize("item,why", [
    ({"address": "10.0.0.1", "by": 1}, "by must be a key"), ({"by": "raddr"}, "give an address or a workload"),
    ({"address": "10.0.0.1", "by": "x" * 20}, "by must be a key"), ({"address": "10.0.0.1", "by": "raddr/200"}, "1 to 128"),
])
def test_bad_by_json_forms(item: object, why: str) -> None:
    with pytest.raises(FilterError, match=why):
        F.from_json(item)


def test_the_value_carries_the_breakdown_with_each_familys_prefix() -> None:
    cases = {"10.0.0.1": (0, 0, 0), "10.0.0.1 by raddr": (1, 128, 128), "10.0.0.1 by raddr/24": (1, 120, 24),
             "10.0.0.1 by laddr/64": (2, 128, 64), "10.0.0.1 by laddr/33": (2, 128, 33),
             "10.0.0.1 by rport": (3, 0, 0), "10.0.0.1 by lport": (4, 0, 0), "10.0.0.1 by cgroup": (5, 0, 0),
             "10.0.0.1 by netns": (6, 0, 0), "10.0.0.1 by container": (7, 0, 0), "10.0.0.1 by pod": (7, 0, 1)}
    for text, (kind, bits4, bits6) in cases.items():
        f = F.parse(text)
        raw = F.value_of(f, 7, 9)
        assert F.VALUE.unpack(raw) == (7, 9, 128, kind, bits4, bits6)
        assert F.by_of_value(raw) == f.by  # a restarted ttcp reads it back from a pinned key's value
    assert F.by_of_value(F.VALUE.pack(1, 1, 128, 9, 0, 0)) is None  # bytes ttcp never writes
    assert F.by_of_value(F.VALUE.pack(1, 1, 128, 1, 100, 24)) is None
    assert F.by_of_value(F.VALUE.pack(1, 1, 128, 7, 0, 2)) is None
    assert str(F.By(F.ByKind.WORKLOAD)) == "container" and str(F.By(F.ByKind.WORKLOAD, pod=True)) == "pod"
    with pytest.raises(FilterError):
        F.By(F.ByKind.CGROUP, pod=True)
    with pytest.raises(FilterError):
        F.parse("10.0.0.1 by workload")  # the kernel's name, no word of the language


_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


_component = st.text(st.characters(blacklist_categories=("Cc", "Zs", "Zl", "Zp"), blacklist_characters="/\x85"),
                     min_size=1, max_size=8).filter(lambda c: c not in (".", "..") and not any(x.isspace() for x in c))


@st.composite
def workloads(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "cgroup /" + "/".join(draw(st.lists(_component, max_size=5)))
    if draw(st.booleans()):
        return f"netns {draw(st.integers(1, 2**32 - 1))}"
    return "netns /" + "/".join(draw(st.lists(_component, min_size=1, max_size=4)))


@st.composite
def filters(draw: st.DrawFn) -> Filter:
    ip = draw(st.one_of(_v4, _v6))
    width = 32 if ip.version == 4 else 128
    plen = draw(st.integers(0, width))
    net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
    port = draw(st.one_of(st.just(0), st.integers(1, 65535)))
    side = draw(st.sampled_from(["src", "dst", ""]))
    text = f"{side} {net.network_address}/{plen}" + (f" port {port}" if port else "")
    workload = draw(st.one_of(st.just(""), workloads()))
    if workload and draw(st.booleans()):
        text = ""  # the workload alone
    by = draw(st.sampled_from(["", "raddr", "laddr", "rport", "lport", "cgroup", "netns", "container", "pod",
                               "raddr/", "laddr/"]))
    if by.endswith("/"):
        by += str(draw(st.integers(1, 128)))
    return F.parse(f"{workload} {text}" + (f" by {by}" if by else ""))


@settings(max_examples=EXAMPLES, deadline=None)
@given(filters(), st.integers(0, 2**32 - 1))
def test_canonical_round_trip(f: Filter, wid: int) -> None:
    text = str(f)
    assert F.parse(text) == f
    assert str(F.parse(text)) == text
    assert F.from_json(f.to_json()) == f
    assert F.by_of_value(F.value_of(f, 1, 1)) == f.by
    if f.has_address:
        decode = F.from_host_key if f.in_hosts else F.from_net_key
        assert decode(F.key_of(f, wid)) == (wid, f.address_part())
        assert F.key_of(f, wid) == F.key_of(f.selector, wid)
    if f.side == Side.SRC and f.is_host and not f.port and f.workload is None:
        assert " " not in text.removesuffix(f" by {f.by}")  # the plain form


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_with_one_line(text: str) -> None:
    try:
        f = F.parse(text)
    except FilterError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert F.parse(str(f)) == f


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
    assert (F.KIND_CGROUP, F.KIND_NETNS) == (1 << 8, 1 << 9)
    assert [F.parse(t).workload.kind_bit for t in ("cgroup /a", "netns 7")] == [F.KIND_CGROUP, F.KIND_NETNS]


def test_a_workloads_exact_addresses_are_full_prefixes_in_nets() -> None:
    """The program tries a workload's address filters in `nets` only (four lookups at most)."""
    f = F.parse("cgroup /a dst 10.0.0.1 port 80")
    assert f.is_host and not f.in_hosts and f.kind_bit == 1 << 5  # KIND_DST_NET_PORT
    assert F.key_of(f, 7) == F.net_key(f, 7)
    assert F.key_of(F.parse("dst 10.0.0.1"), 0) == F.host_key(F.parse("dst 10.0.0.1"))


def test_keys_are_the_programs_layout() -> None:
    f = F.parse("dst 10.20.0.0/16 port 5432")
    key = F.net_key(f, 0x01020304)
    assert len(key) == 28 and key[:4] == (56 + 112).to_bytes(4, "little")
    assert key[4:8] == bytes([1, 2, 3, 4])  # big-endian, like the port: the trie compares bytes in order
    assert key[8] == 2 and key[9:11] == (5432).to_bytes(2, "big")
    assert key[11:27] == bytes(10) + b"\xff\xff" + bytes([10, 20, 0, 0]) and key[27] == 0
    h = F.host_key(F.parse("src 10.0.0.1 port 80"), 9)
    assert len(h) == 24 and h[:4] == (9).to_bytes(4, "little") and h[4] == 1
    assert h[6:8] == (80).to_bytes(2, "little")
    assert len(F.WORKLOAD.pack(1, 2, F.VALUE.pack(3, 4, 0, 0, 0, 0))) == 24


@settings(max_examples=EXAMPLES, deadline=None)
@given(filters())
def test_keys_of_the_previous_layout_are_upgraded_to_wid_0(f: Filter) -> None:
    """A pinned table of the layout before workloads (no wid) is migrated key by key."""
    f = f.address_part() if f.has_address else F.parse("10.0.0.1")
    old_host = F.OLD_HOST_KEY.pack(f.side, f.port, f.addr)
    old_net = F.OLD_NET_KEY.pack(24 + f.bits, f.side, f.port.to_bytes(2, "big"), f.addr)
    assert F.upgraded_host_key(old_host) == F.host_key(f)
    assert F.upgraded_net_key(old_net) == F.net_key(f)


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
