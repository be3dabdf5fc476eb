"""End to end against the real kernel: the shipped object, loaded by our own
loader, attached in each mode this kernel allows, fed real loopback traffic."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import time

import pytest

from tests.support.kernel import TIMEOUT_SCALE, mode_probe, require, scaled
from tests.support.tracing import collect
from tests.support.traffic import Server, connect_many, connect_once
from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel import features
from ttcp.kernel.btf import VMLINUX_BTF
from ttcp.rtt import events
from ttcp.rtt import filters as F
from ttcp.rtt.tracer import MODES, Tracer

pytestmark = pytest.mark.kernel

N = 200
HOOK_OF_MODE = {"fentry": 1, "tp_btf": 2, "tracepoint": 3}  # enum hook in bpf/tcprtt.bpf.c


@pytest.mark.matrix
def test_exactly_n_events_from_filtered_source(tracer):
    tracer.add_filters([F.parse("127.0.0.2")])
    with Server("127.0.0.1") as srv:
        conns = connect_many(srv, "127.0.0.2", N)
    got = collect(tracer)
    assert len(got) == N
    # Ports may repeat: the client closes last, so it never holds TIME_WAIT.
    assert sorted(e.sport for e in got) == sorted(c.sport for c in conns)
    by_port = {c.sport: c for c in conns}
    netns = os.stat("/proc/self/ns/net").st_ino
    for e in got:
        assert e.sport in by_port
        assert (e.saddr, e.daddr, e.dport) == ("127.0.0.2", "127.0.0.1", srv.port)
        assert e.family == events.AF_INET
        assert e.netns == netns
        assert e.hook == HOOK_OF_MODE[tracer.report.mode]
        assert e.rtt_us > 0 and e.bytes_acked > 0 and e.bytes_received > 0
    assert tracer.drops() == 0


@pytest.mark.matrix
def test_rtt_agrees_with_tcp_info(tracer):
    tracer.add_filters([F.parse("127.0.0.2")])
    with Server("127.0.0.1") as srv:
        conns = connect_many(srv, "127.0.0.2", 50)
    got = collect(tracer)
    assert len(got) == 50
    assert [e.sport for e in got] == [c.sport for c in conns]  # in order, one each
    diffs = []
    for e, c in zip(got, conns, strict=True):
        before = c.rtt_us
        # One more RTT sample (the ACK of our FIN) moves srtt by 1/8 of its
        # distance from that sample. Loopback samples stay well under 8 ms on a
        # host; an emulated kernel (make vmtest) stretches them like everything else.
        assert abs(e.rtt_us - before) <= before // 8 + int(scaled(1000)), (e, before)
        diffs.append(abs(e.rtt_us - before))
    # Typically far closer than one sample's worth; under emulation samples scatter widely.
    assert statistics.median(diffs) <= statistics.median(c.rtt_us for c in conns) // 4 + int(5 * TIMEOUT_SCALE ** 2)


def test_client_closing_first_is_reported_once(tracer):
    tracer.add_filters([F.parse("127.0.0.2")])
    with Server("127.0.0.1") as srv:
        conns = connect_many(srv, "127.0.0.2", 30, client_first=True)
    got = collect(tracer)
    assert sorted(e.sport for e in got) == sorted(c.sport for c in conns)


def test_both_closing_orders_from_the_server_side(tracer):
    """The accepted socket is reported too when its address is a filter, once,
    whichever side closes first."""
    tracer.add_filters([F.parse("127.0.0.6")])
    with Server("127.0.0.6") as srv:
        a = connect_many(srv, "127.0.0.1", 10)
        b = connect_many(srv, "127.0.0.1", 10, client_first=True)
    got = collect(tracer)
    assert len(got) == 20
    assert all(e.saddr == "127.0.0.6" and e.sport == srv.port for e in got)
    assert sorted(e.dport for e in got) == sorted(c.sport for c in a + b)


def test_modes_yield_the_same_events(no_bpf_leaks):
    """Every mode this kernel has, attached side by side, sees the same connections."""
    modes = [m for m in MODES if mode_probe(m).supported]
    assert len(modes) >= 2
    key = F.parse("127.0.0.7")
    with contextlib.ExitStack() as stack:
        tracers = [stack.enter_context(Tracer()) for _ in modes]
        for t, mode in zip(tracers, modes, strict=True):
            t.open_maps()
            t.add_filters([key])
            t.attach(mode, log=lambda m: None)
        with Server("127.0.0.1") as srv:
            connect_many(srv, "127.0.0.7", 20)
            connect_many(srv, "127.0.0.7", 20, client_first=True)
        seen = [collect(t) for t in tracers]
    first = sorted((e.saddr, e.sport, e.daddr, e.dport, e.family, e.netns) for e in seen[0])
    assert len(first) == 40
    for mode, got in zip(modes[1:], seen[1:], strict=True):
        assert sorted((e.saddr, e.sport, e.daddr, e.dport, e.family, e.netns) for e in got) == first, mode


def test_unfiltered_source_gives_nothing(tracer):
    tracer.add_filters([F.parse("127.0.0.2")])
    with Server("127.0.0.1") as srv:
        connect_many(srv, "127.0.0.3", 50)
    assert collect(tracer) == []


def test_adding_and_removing_switches_events(tracer):
    key = F.parse("127.0.0.3")
    with Server("127.0.0.1") as srv:
        connect_many(srv, "127.0.0.3", 20)
        assert collect(tracer) == []
        tracer.add_filters([key])
        connect_many(srv, "127.0.0.3", 20)
        assert len(collect(tracer)) == 20
        tracer.table.remove([key])
        connect_many(srv, "127.0.0.3", 20)
        assert collect(tracer) == []
    assert key not in tracer.table


def test_match_counters_in_filter_map(tracer):
    key = F.parse("127.0.0.2")
    tracer.add_filters([key])
    with Server("127.0.0.1") as srv:
        connect_many(srv, "127.0.0.2", 10)
    assert len(collect(tracer)) == 10
    stats = tracer.table.stats([key])[key]
    matches, last_ns = stats.matches, stats.last_match_ns
    assert matches == 10
    assert 0 < time.monotonic_ns() - last_ns < 60e9


@pytest.mark.matrix
def test_ipv6_loopback_both_ends(tracer):
    tracer.add_filters([F.parse("::1")])
    with Server("::1", socket.AF_INET6) as srv:
        conns = connect_many(srv, "::1", 20)
    got = collect(tracer)
    # Both the client and the accepted socket have local address ::1.
    assert len(got) == 40
    client_ports = {c.sport for c in conns}
    clients = [e for e in got if e.sport in client_ports]
    servers = [e for e in got if e.sport == srv.port]
    assert len(clients) == 20 and len(servers) == 20
    assert all(e.family == events.AF_INET6 and e.saddr == "::1" and e.daddr == "::1" for e in got)
    assert {e.dport for e in servers} == client_ports


@pytest.mark.matrix
def test_dual_stack_socket_matches_ipv4_entry(tracer):
    tracer.add_filters([F.parse("127.0.0.4")])
    with Server("::", socket.AF_INET6, dual_stack=True) as srv:
        conns = connect_many(srv, "::ffff:127.0.0.4", 10, dst="::ffff:127.0.0.1")
    got = collect(tracer)
    assert len(got) == 10
    assert {e.sport for e in got} == {c.sport for c in conns}
    assert all(e.family == events.AF_INET6 and e.saddr == "127.0.0.4" and e.daddr == "127.0.0.1"
               for e in got)


@pytest.mark.matrix
def test_listeners_and_failed_connects_give_nothing(tracer):
    tracer.add_filters([F.parse("127.0.0.5")])
    srv = Server("127.0.0.5")
    port = srv.port
    srv.close()  # a listener that never accepted anything
    for _ in range(10):  # refused: SYN_SENT -> CLOSE, never established
        s = socket.socket()
        s.bind(("127.0.0.5", 0))
        with pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.5", port))
        s.close()
    assert collect(tracer) == []
    # ... while an established one from the same address is reported.
    with Server("127.0.0.1") as other:
        connect_once(other, "127.0.0.5")
    assert len(collect(tracer)) == 1


@pytest.mark.matrix
def test_auto_lands_on_a_working_mode_and_says_why(no_bpf_leaks):
    said: list[str] = []
    fentry = mode_probe("fentry")
    with Tracer() as t:
        report = t.attach("auto", log=said.append)
        assert said[-1].startswith(f"attached via {report.mode}")
        if fentry.supported:
            assert report.mode == "fentry" and report.skipped == []
        else:  # the first fallback, with the reason the probe saw too
            assert report.mode == "tp_btf"
            assert [m for m, _ in report.skipped] == ["fentry"]
            assert "PROG_LOAD" in report.skipped[0][1]
            assert any(line.startswith("fentry unavailable") for line in said)
        prog_id = syscalls.prog_info(t.prog_fd()).id
        assert prog_id in syscalls.prog_ids()
    assert prog_id not in syscalls.prog_ids() or _freed_soon(prog_id)


def _freed_soon(prog_id: int) -> bool:
    deadline = time.monotonic() + scaled(3)
    while time.monotonic() < deadline:
        if prog_id not in syscalls.prog_ids():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.matrix
def test_forced_fentry_works_exactly_where_the_probe_says(no_bpf_leaks):
    fentry = mode_probe("fentry")
    with Tracer() as t:
        if fentry.supported:
            t.attach("fentry", log=lambda m: None)
            assert t.report.mode == "fentry" and t.report.skipped == []
        else:
            with pytest.raises(BpfError) as exc:
                t.attach("fentry", log=lambda m: None)
            assert "PROG_LOAD" in exc.value.step and exc.value.errno
            # Without the capabilities the hint names them; with them (root), it names ftrace.
            assert "CAP_BPF" in str(exc.value) or "ftrace" in str(exc.value) or exc.value.log_tail()


@pytest.mark.matrix
def test_fentry_rtt_is_tcp_info_at_close(no_bpf_leaks):
    """fentry runs at close(): the RTT it reads is exactly what TCP_INFO said
    just before, connection by connection (no FIN exchange in between)."""
    require(mode_probe("fentry"))
    with Tracer() as t:
        t.open_maps()
        t.add_filters([F.parse("127.0.0.2")])
        t.attach("fentry", log=lambda m: None)
        with Server("127.0.0.1") as srv:
            conns = connect_many(srv, "127.0.0.2", 30)
        got = collect(t)
    assert [e.sport for e in got] == [c.sport for c in conns]
    assert [e.rtt_us for e in got] == [c.rtt_us for c in conns]
    assert all(e.hook == HOOK_OF_MODE["fentry"] for e in got)


def test_releasing_the_kernel_btf_closes_its_file_at_once(no_bpf_leaks):
    """The kernel's BTF (mapped where sysfs allows, else read) is let go when the
    tracer says so, without waiting for the cyclic collector: a long-running agent
    holds no descriptor of it, and counts its descriptors steadily."""
    import gc

    def btf_files() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") == "/sys/kernel/btf/vmlinux":
                    out.append(fd)
        return out

    before = btf_files()
    # Another spelling of the path: conftest shares one parse of the usual one between tests.
    path = VMLINUX_BTF.parent / ".." / VMLINUX_BTF.parent.name / VMLINUX_BTF.name
    gc.disable()
    try:
        with Tracer(btf_path=path) as t:
            t.attach("tp_btf", log=lambda _: None)
            assert len(btf_files()) > len(before) or not features.sysfs_btf_mmap(VMLINUX_BTF).supported
            t.release_kernel_btf()
            assert btf_files() == before
    finally:
        gc.enable()
