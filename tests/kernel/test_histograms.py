"""Per-filter RTT histograms kept by the program, at close and from live samples.

The oracle is what the events and TCP_INFO say: a filter's closed-connection
histogram must hold exactly the RTTs of its events (count, sum and bucket by
bucket), fentry's must equal TCP_INFO's RTTs read just before close(), and a
delay put on a veth pair with netem (where the kernel has it) must show up
in the right buckets.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.kernel import mode_probe, require, scaled
from tests.support.tracing import collect
from tests.support.traffic import LongLived, Server, connect_many, tcp_info_rtt
from ttcp.kernel.features import Probe
from ttcp.rtt import filters as F
from ttcp.rtt import histogram
from ttcp.rtt.filter_table import FilterStats
from ttcp.rtt.histogram import BUCKETS, Histogram
from ttcp.rtt.tracer import Tracer

pytestmark = pytest.mark.kernel


def of(rtts: list[int]) -> Histogram:
    buckets = [0] * BUCKETS
    for r in rtts:
        buckets[histogram.bucket_of(r)] += 1
    return Histogram(len(rtts), sum(rtts), tuple(buckets))


def stats(t: Tracer, text: str) -> FilterStats:
    assert t.table is not None
    f = F.parse(text)
    return t.table.stats([f])[f]




@pytest.mark.matrix
def test_closed_histogram_holds_exactly_the_events_rtts(tracer: Tracer) -> None:
    tracer.add_filters([F.parse("src 127.0.50.0/24"), F.parse("dst 127.0.51.1")])
    with Server("127.0.0.1") as a, Server("127.0.51.1") as b:
        connect_many(a, "127.0.50.7", 40)
        connect_many(b, "127.0.0.1", 25)
    got = collect(tracer)
    for text, n in (("src 127.0.50.0/24", 40), ("dst 127.0.51.1", 25)):
        rtts = [e.rtt_us for e in got if e.filter == text]
        s = stats(tracer, text)
        assert len(rtts) == n and s.matches == n
        assert s.closed == of(rtts)
        assert s.sampled == Histogram.empty()  # sampling is off
        assert s.last_match_ns > 0


@pytest.mark.matrix
def test_fentry_histogram_is_tcp_info_at_close(no_bpf_leaks: None) -> None:
    require(mode_probe("fentry"))
    with Tracer(max_filters=4) as t:
        t.add_filters([F.parse("127.0.52.1")])
        t.attach("fentry", log=lambda m: None)
        with Server("127.0.0.1") as srv:
            conns = connect_many(srv, "127.0.52.1", 30)
        assert len(collect(t)) == 30
        assert stats(t, "127.0.52.1").closed == of([c.rtt_us for c in conns])


def test_removing_a_filter_removes_its_histograms(tracer: Tracer) -> None:
    f = F.parse("src 127.0.53.1")
    tracer.add_filters([f])
    with Server("127.0.0.1") as srv:
        connect_many(srv, "127.0.53.1", 5)
        collect(tracer)
        assert stats(tracer, "src 127.0.53.1").matches == 5
        assert tracer.table is not None
        tracer.table.remove([f])
        tracer.table.add([f])
        assert stats(tracer, "src 127.0.53.1").closed == Histogram.empty()
        connect_many(srv, "127.0.53.1", 2)
        collect(tracer)
    assert stats(tracer, "src 127.0.53.1").matches == 2


@pytest.mark.matrix
def test_live_sampling_fills_the_sample_histogram_without_events(tracer: Tracer) -> None:
    tracer.add_filters([F.parse("src 127.0.54.1")])
    with Server("127.0.0.1") as srv:
        conn = LongLived("127.0.54.1", srv)
        try:
            conn.exchange(20)  # sampling off: nothing counted
            assert stats(tracer, "src 127.0.54.1").sampled == Histogram.empty()
            # The sampling hook of the same family as the tracer's: each is tested somewhere.
            report = tracer.enable_sampling(tracer.report.mode, log=lambda m: None)
            assert report.mode == tracer.report.mode
            conn.exchange(50)
            sampled = stats(tracer, "src 127.0.54.1").sampled
            assert sampled.count >= 50  # at least one RTT measurement per round trip
            rtt_now = tcp_info_rtt(conn.cli)
            assert histogram.bucket_of(rtt_now) in {k for k, n in enumerate(sampled.buckets) if n} | {
                k + d for k, n in enumerate(sampled.buckets) if n for d in (-1, 1)}
            assert collect(tracer) == []  # samples never produce events
            tracer.disable_sampling()
            before = stats(tracer, "src 127.0.54.1").sampled
            conn.exchange(20)
            assert stats(tracer, "src 127.0.54.1").sampled == before  # off again: no more samples
        finally:
            conn.close()
    assert stats(tracer, "src 127.0.54.1").matches == 1  # the connection's close, once
    assert stats(tracer, "src 127.0.54.1").sampled.count >= 50


def test_sampling_is_only_for_filtered_sockets(tracer: Tracer) -> None:
    tracer.add_filters([F.parse("src 127.0.55.1")])
    tracer.enable_sampling(tracer.report.mode, log=lambda m: None)
    with Server("127.0.0.1") as srv:
        conn = LongLived("127.0.55.2", srv)  # not a filter
        try:
            conn.exchange(20)
        finally:
            conn.close()
    assert stats(tracer, "src 127.0.55.1").sampled == Histogram.empty()


# ---- a known delay, where netem exists ----------------------------------------------------------


@contextlib.contextmanager
def delayed_pair(delay_ms: int) -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair (198.18.250.1 <-> .2) whose
    both ends delay every packet by `delay_ms`; yields the two netns names."""
    a, b = "ttcp-h-a", "ttcp-h-b"
    cmds = [
        f"ip netns add {a}", f"ip netns add {b}",
        f"ip link add ttcph0 netns {a} type veth peer name ttcph1 netns {b}",
        f"ip -n {a} addr add 198.18.250.1/30 dev ttcph0", f"ip -n {b} addr add 198.18.250.2/30 dev ttcph1",
        f"ip -n {a} link set ttcph0 up", f"ip -n {b} link set ttcph1 up",
        f"ip netns exec {a} tc qdisc add dev ttcph0 root netem delay {delay_ms}ms",
        f"ip netns exec {b} tc qdisc add dev ttcph1 root netem delay {delay_ms}ms",
    ]
    try:
        for c in cmds:
            subprocess.run(c.split(), check=True, capture_output=True, text=True)
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def netem_probe() -> Probe:
    ns = "ttcp-netem-probe"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                            "delay", "1ms"], capture_output=True, text=True, check=False)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    if r.returncode:
        return Probe("netem", False, r.stderr.strip() or "tc refused netem")
    return Probe("netem", True)


def test_a_known_delay_lands_in_its_buckets(no_bpf_leaks: None) -> None:
    require(netem_probe())
    delay_ms = 5  # on each end's way out: an RTT of about 10 ms
    with delayed_pair(delay_ms) as (a, b), Tracer(max_filters=4) as t:
        t.add_filters([F.parse("dst 198.18.250.2 port 7")])
        t.attach("auto", log=lambda m: None)
        script = ("import socket,sys\n"
                  "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                  "s.bind(('198.18.250.2',7));s.listen();print('ready',flush=True)\n"
                  "for _ in range(5):\n c,_=s.accept();c.sendall(c.recv(10));c.close()\n")
        srv = subprocess.Popen(["ip", "netns", "exec", b, "python3", "-c", script], stdout=subprocess.PIPE,
                               text=True)
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
            client = ("import socket\n"
                      "for _ in range(5):\n"
                      " c=socket.create_connection(('198.18.250.2',7));c.sendall(b'ping');c.recv(10);c.close()\n")
            subprocess.run(["ip", "netns", "exec", a, "python3", "-c", client], check=True, timeout=scaled(30))
            srv.wait(scaled(10))
        finally:
            srv.kill()
        deadline = time.monotonic() + scaled(5)
        while stats(t, "dst 198.18.250.2 port 7").matches < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        closed = stats(t, "dst 198.18.250.2 port 7").closed
    assert closed.count == 5
    rtt_us = 2 * delay_ms * 1000
    assert all(histogram.low_us(k) >= rtt_us // 2 for k, n in enumerate(closed.buckets) if n), closed
    assert rtt_us * 3 // 4 <= closed.sum_us // closed.count <= rtt_us * 3
