"""Every kind of filter against real sockets: side, network, port, both families.

One tracer per attach mode the kernel has; each test adds the filters it
needs, makes real loopback connections (127.0.0.0/8 and ::1 only) and checks
the events: exactly the selected connections, each once, naming the most
specific filter that matched, with the table's counters agreeing.
"""

from __future__ import annotations

import itertools
import socket

import pytest

from tests.support.tracing import collect
from tests.support.traffic import Conn, Server, connect_many, connect_once
from ttcp.rtt import events
from ttcp.rtt import filters as F
from ttcp.rtt.table_rules import CONFIG, STALE_HOST_BITS, Config
from ttcp.rtt.tracer import Tracer

pytestmark = pytest.mark.kernel




def add(t: Tracer, *texts: str) -> list[F.Filter]:
    fs = [F.parse(x) for x in texts]
    assert t.table is not None
    t.table.add(fs)
    return fs


def matches(t: Tracer, text: str) -> int:
    assert t.table is not None
    f = F.parse(text)
    return t.table.stats([f])[f].matches


def ends(e: events.Event) -> tuple[str, int, str, int]:
    return (e.saddr, e.sport, e.daddr, e.dport)


def client_ends(conns: list[Conn]) -> list[tuple[str, int, str, int]]:
    return sorted((c.src, c.sport, c.dst, c.dport) for c in conns)


@pytest.mark.matrix
def test_dst_network_with_port_selects_the_clients_of_that_service(tracer: Tracer) -> None:
    add(tracer, "dst 127.0.40.0/24 port 5432")
    with Server("127.0.40.9", port=5432) as db, Server("127.0.40.9") as other, \
            Server("127.0.41.9", port=5433) as elsewhere:
        ours = connect_many(db, "127.0.0.2", 10)
        connect_many(other, "127.0.0.2", 5)  # same network, another port
        connect_many(elsewhere, "127.0.0.2", 5)  # another network
    got = collect(tracer)
    # The accepted sockets' remote side is the client (127.0.0.2): not selected.
    assert sorted(ends(e) for e in got) == client_ends(ours)
    assert {e.filter for e in got} == {"dst 127.0.40.0/24 port 5432"}
    assert matches(tracer, "dst 127.0.40.0/24 port 5432") == 10


def test_src_network_selects_every_address_in_it(tracer: Tracer) -> None:
    add(tracer, "src 127.0.42.0/28")
    with Server("127.0.0.1") as srv:
        inside = [connect_once(srv, f"127.0.42.{i}") for i in (1, 7, 15)]
        for i in (16, 200):
            connect_once(srv, f"127.0.42.{i}")
    got = collect(tracer)
    assert sorted(ends(e) for e in got) == client_ends(inside)
    assert {e.filter for e in got} == {"src 127.0.42.0/28"}
    assert matches(tracer, "src 127.0.42.0/28") == 3


def test_dst_host_and_src_host_with_port(tracer: Tracer) -> None:
    add(tracer, "dst 127.0.43.1", "src 127.0.43.2 port 40001")
    with Server("127.0.43.1") as a, Server("127.0.43.3") as b:
        to_a = connect_many(a, "127.0.0.1", 4)
        port_conn = connect_once(b, "127.0.43.2", sport=40001)
        connect_many(b, "127.0.43.2", 3)  # other source ports: not selected
    got = collect(tracer)
    by_filter: dict[str, list[tuple[str, int, str, int]]] = {}
    for e in got:
        by_filter.setdefault(e.filter, []).append(ends(e))
    assert sorted(by_filter["dst 127.0.43.1"]) == client_ends(to_a)
    assert by_filter["src 127.0.43.2 port 40001"] == client_ends([port_conn])
    assert set(by_filter) == {"dst 127.0.43.1", "src 127.0.43.2 port 40001"}


@pytest.mark.matrix
def test_ipv6_networks_and_v4_mapped_sockets(tracer: Tracer) -> None:
    add(tracer, "dst ::/120", "src 127.0.44.0/24")
    with Server("::1", socket.AF_INET6) as v6, Server("::", socket.AF_INET6, dual_stack=True) as dual:
        six = connect_many(v6, "::1", 5)
        mapped = connect_many(dual, "::ffff:127.0.44.5", 5, dst="::ffff:127.0.0.1")
    got = collect(tracer)
    v6_events = [e for e in got if e.filter == "dst ::/120"]
    mapped_events = [e for e in got if e.filter == "src 127.0.44.0/24"]
    # Both ends of a ::1 connection have the remote address ::1: clients and accepted sockets.
    clients = [e for e in v6_events if e.dport == v6.port]
    accepted = [e for e in v6_events if e.sport == v6.port]
    assert sorted(ends(e) for e in clients) == client_ends(six) and len(accepted) == 5
    assert all(e.family == events.AF_INET6 and e.daddr == "::1" for e in v6_events)
    assert all(e.family == events.AF_INET6 and e.saddr == "127.0.44.5" for e in mapped_events)
    assert sorted(e.sport for e in mapped_events) == sorted(c.sport for c in mapped)
    assert len(got) == 15


@pytest.mark.matrix
def test_overlapping_filters_report_once_naming_the_most_specific(tracer: Tracer) -> None:
    add(tracer, "src 127.0.45.0/24", "src 127.0.45.0/28", "src 127.0.45.3", "dst 127.0.45.0/24 port 5432")
    with Server("127.0.45.200", port=5432) as srv:
        exact = connect_once(srv, "127.0.45.3")
        narrow = connect_once(srv, "127.0.45.9")
        wide = connect_once(srv, "127.0.45.100")
    got = collect(tracer)
    named = {ends(e): e.filter for e in got}
    assert len(got) == 6 and len(named) == 6  # each socket of each connection once
    client = {c.sport: (c.src, c.sport, c.dst, c.dport) for c in (exact, narrow, wide)}
    assert named[client[exact.sport]] == "127.0.45.3"  # exact before any network (a plain address)
    assert named[client[narrow.sport]] == "src 127.0.45.0/28"  # a longer prefix first
    assert named[client[wide.sport]] == "dst 127.0.45.0/24 port 5432"  # same prefix: the port wins
    accepted = [name for (_, sport, _, _), name in named.items() if sport == 5432]
    assert accepted == ["src 127.0.45.0/24"] * 3  # their remote port is ephemeral
    assert [matches(tracer, x) for x in ("src 127.0.45.3", "src 127.0.45.0/28",
                                          "dst 127.0.45.0/24 port 5432", "src 127.0.45.0/24")] == [1, 1, 1, 3]


def test_removing_a_filter_stops_its_events_at_once(tracer: Tracer) -> None:
    f, = add(tracer, "dst 127.0.46.0/24 port 5432")
    assert tracer.table is not None
    with Server("127.0.46.1", port=5432) as srv:
        first = connect_many(srv, "127.0.0.3", 5)
        assert sorted(ends(e) for e in collect(tracer)) == client_ends(first)
        tracer.table.remove([f])
        connect_many(srv, "127.0.0.3", 5)
        assert collect(tracer) == []
        tracer.table.add([f])  # re-added: its counters start from zero
        connect_many(srv, "127.0.0.3", 2)
        assert len(collect(tracer)) == 2
    assert matches(tracer, "dst 127.0.46.0/24 port 5432") == 2


def test_unused_kinds_cost_no_lookups(tracer: Tracer) -> None:
    """The program learns which kinds exist from cfg.kinds: with only a dst host
    in the table, a src host entry written behind the table's back is never
    looked up (its kind bit is clear), so it selects nothing."""
    add(tracer, "dst 127.0.47.1")
    assert tracer.table is not None
    sneaky = F.host_key(F.parse("127.0.47.2"))
    tracer.table.hosts.put(sneaky, F.VALUE.pack(63, 1, 128, 0, 0, 0))
    try:
        with Server("127.0.47.1") as srv:
            connect_many(srv, "127.0.47.2", 3)
        got = collect(tracer)
    finally:
        tracer.table.hosts.delete(sneaky)
    assert {e.filter for e in got} == {"dst 127.0.47.1"} and len(got) == 3


def test_a_host_whose_bitmap_bit_is_clear_is_never_looked_up(tracer: Tracer) -> None:
    """cfg.host_bits: a src host entry written behind the table's back, whose
    address has a clear bit, selects nothing; once the table holds a filter that
    sets its bit, the program looks it up (and host_bit agrees with the program)."""
    add(tracer, "127.0.48.1")
    assert tracer.table is not None
    hidden = "127.0.48.2"
    assert F.host_bit(F.address_bytes(hidden)) != F.host_bit(F.address_bytes("127.0.48.1"))
    sneaky = F.host_key(F.parse(hidden))
    tracer.table.hosts.put(sneaky, F.VALUE.pack(63, 1, 128, 0, 0, 0))
    try:
        with Server("127.0.48.1") as srv:
            connect_many(srv, hidden, 3)
            got = collect(tracer)
    finally:
        tracer.table.hosts.delete(sneaky)
    assert {e.filter for e in got} == {"127.0.48.1"} and len(got) == 3  # the server side only
    add(tracer, hidden)  # its bit set, and its own entry
    with Server("127.0.48.1") as srv:
        connect_many(srv, hidden, 2)
    assert sorted(e.filter for e in collect(tracer)) == ["127.0.48.1"] * 2 + [hidden] * 2


def _kernel_cfg(t: Tracer) -> tuple[int, list[int]]:
    assert t.table is not None
    cfg = Config.unpack(t.table.config.get(0)[:CONFIG.size])
    return cfg.kinds, list(cfg.host_bits)


def _exact_cfg(t: Tracer) -> tuple[int, list[int]]:
    assert t.table is not None
    kinds, bits = 0, [0, 0]
    for f in t.table.filters():
        kinds |= f.kind_bit
        if f.is_host:
            bits[f.side - 1] |= 1 << F.host_bit(f.addr)
    return kinds, bits


def test_removals_keep_kinds_exact_and_few_stale_host_bits(tracer: Tracer) -> None:
    """Removing a host may leave its bit in the kernel's cfg (a lookup that
    misses, no cfg write for an API client toggling addresses), never more than
    STALE_HOST_BITS of them; the kinds are exact after every change, and every
    held host's bit is always set."""
    assert tracer.table is not None
    add(tracer, "127.0.49.1", "dst 127.0.49.2")
    stale_seen = []
    for batch in (50, 51):  # 2 x 60 hosts removed: more stale bits than may be kept
        many = [f"127.0.{batch}.{i}" for i in range(60)]
        add(tracer, *many)
        for text in [*many, "dst 127.0.49.2"] if batch == 51 else many:
            tracer.table.remove([F.parse(text)])
            (kinds, bits), (want_kinds, want_bits) = _kernel_cfg(tracer), _exact_cfg(tracer)
            assert kinds == want_kinds, text
            assert all(w & ~b == 0 for b, w in zip(bits, want_bits, strict=True)), text
            stale = sum((b & ~w).bit_count() for b, w in zip(bits, want_bits, strict=True))
            assert stale <= STALE_HOST_BITS, text
            stale_seen.append(stale)
    assert max(stale_seen) > 0  # removals skipped cfg writes
    assert any(b < a for a, b in itertools.pairwise(stale_seen)), stale_seen  # and past the limit, wrote it exact
    assert _kernel_cfg(tracer)[0] & F.parse("dst 127.0.49.2").kind_bit == 0  # its kind left with it
    with Server("127.0.49.1") as srv:  # what is held still reports
        connect_many(srv, "127.0.49.3", 2)
    assert [e.filter for e in collect(tracer)] == ["127.0.49.1"] * 2
