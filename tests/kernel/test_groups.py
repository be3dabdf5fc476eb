"""A filter's groups (its `by` clause) against the real kernel, real sockets and cgroups.

Connections go from 3 local to 5 remote loopback addresses, each pair a known number
of times, so every group's count is known exactly: by remote address, by remote /24,
by remote port, by local address; IPv6 (::1) and v4-mapped sockets (a dual-stack
server); cgroups and network namespaces the test makes (tests/support/workloads.py).
Under a tiny --max-groups the kernel's LRU evicts, and what survives is still exact;
a long-lived connection that never closes shows up in its group's live samples; a
removed filter's groups are gone. Each test runs in every attach mode of the kernel.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.api import Client, run
from tests.support.kernel import mode_probe, require
from tests.support.tracing import collect
from tests.support.traffic import Conn, LongLived, Server, connect_many
from tests.support.workloads import Cgroups, Netns, run_in
from ttcp import syscalls
from ttcp.kernel import lru
from ttcp.rtt import filters as F
from ttcp.rtt import groups as G
from ttcp.rtt.filters import By, ByKind, Filter
from ttcp.rtt.groups import GroupSet
from ttcp.rtt.histogram import HIST
from ttcp.rtt.tracer import MODES, Tracer
from ttcp.workloads.group_names import namer
from ttcp.workloads.registry import Placement, Registry
from ttcp.workloads.resolver import Resolver
from ttcp.workloads.runtime import Container, Seen

pytestmark = [pytest.mark.kernel, pytest.mark.matrix]

REMOTES = ["127.0.90.1", "127.0.90.2", "127.0.90.3", "127.0.91.1", "127.0.91.2"]
LOCALS = ["127.0.92.1", "127.0.92.2", "127.0.92.3"]


def times(i: int, j: int) -> int:
    """Connections from LOCALS[j] to REMOTES[i]: every group's total differs."""
    return i + j + 1


Make = Callable[..., Tracer]


@pytest.fixture(params=MODES)
def make(request: pytest.FixtureRequest, no_bpf_leaks: None) -> Iterator[Make]:
    """Tracers attached in each mode this kernel has, resolving workloads on this host."""
    require(mode_probe(request.param))
    made: list[Tracer] = []
    resolver = Resolver.for_host()

    def tracer(max_groups: int = 64) -> Tracer:
        t = Tracer(max_filters=16, max_groups=max_groups, resolver=resolver)
        made.append(t)
        t.open_maps()
        t.attach(request.param, log=lambda msg: None)
        collect(t, settle_s=0.05)
        return t

    try:
        yield tracer
    finally:
        for t in made:
            t.close()
        resolver.close()


def groups_of(t: Tracer, f: Filter) -> GroupSet:
    assert t.table is not None
    return t.table.groups([f])[f]


def counts(t: Tracer, f: Filter, which: str = "closed") -> dict[str, int]:
    found = groups_of(t, f)
    return {g.key.text(found.by): g.histogram(which).count for g in found.groups}


def traffic(servers: list[Server]) -> list[Conn]:
    """times(i, j) connections from each local address to each remote server."""
    conns = []
    for i, srv in enumerate(servers):
        for j, src in enumerate(LOCALS):
            conns += connect_many(srv, src, times(i, j))
    return conns


@pytest.mark.parametrize("by", ["raddr", "raddr/24", "rport", "laddr"])
def test_each_groups_count_is_exact(make: Make, by: str) -> None:
    t = make()
    f = F.parse(f"dst 127.0.90.0/23 by {by}")
    assert t.table is not None
    t.table.add([f])
    servers = [Server(a) for a in REMOTES]
    try:
        conns = traffic(servers)
    finally:
        for s in servers:
            s.close()
    got = collect(t)
    assert len(got) == len(conns) == sum(times(i, j) for i in range(5) for j in range(3))  # 60
    want: dict[str, int] = {}
    for i, srv in enumerate(servers):
        for j, src in enumerate(LOCALS):
            key = {"raddr": REMOTES[i], "raddr/24": REMOTES[i].rsplit(".", 1)[0] + ".0/24",
                   "rport": str(srv.port), "laddr": src}[by]
            want[key] = want.get(key, 0) + times(i, j)
    assert counts(t, f) == want
    found = groups_of(t, f)
    assert found.live == len(want) and found.evicted == 0
    assert all(g.sampled.count == 0 and g.first_ns <= g.last_ns and not g.restarted for g in found.groups)
    # the groups' histograms add up to the filter's own
    stats = t.table.stats([f])[f]
    assert sum(g.closed.count for g in found.groups) == stats.matches == len(conns)
    assert sum(g.closed.sum_us for g in found.groups) == stats.closed.sum_us


def test_the_top_groups_in_order_over_the_api(make: Make) -> None:
    t = make()
    f = F.parse("dst 127.0.90.0/23 by raddr")
    assert t.table is not None
    t.table.add([f])
    servers = [Server(a) for a in REMOTES]
    try:
        traffic(servers)
    finally:
        for s in servers:
            s.close()
    collect(t)

    async def scenario(c: Client) -> None:
        path = "/filters/dst%20127.0.90.0%2F23%20by%20raddr/groups"
        body = (await c.call("GET", path + "?top=3", 200)).body
        assert [(g["group"], g["closed"]["count"]) for g in body["groups"]] == [
            ("127.0.91.2", 18), ("127.0.91.1", 15), ("127.0.90.3", 12)]
        assert body["groups_total"] == 5 and body["evicted"] == 0
        rtt = body["groups"][0]["closed"]
        assert rtt["mean_us"] > 0 and rtt["p50_us"] <= rtt["p99_us"]
        by_mean = (await c.call("GET", path + "?sort=mean", 200)).body["groups"]
        means = [g["closed"]["mean_us"] for g in by_mean]
        assert means == sorted(means, reverse=True) and len(means) == 5
        listed = (await c.call("GET", "/filters", 200)).body["filters"]
        assert [(e["groups"], e["groups_evicted"]) for e in listed] == [(5, 0)]

    run(t.table, scenario)


def test_max_groups_n_holds_n_groups(make: Make) -> None:
    """--max-groups N: N groups are held before any eviction, on every kernel (the map
    has room for each CPU's batch of free LRU entries: ttcp.kernel.lru)."""
    t = make(max_groups=10)
    f = F.parse("dst 127.0.93.0/24 by raddr")
    assert t.table is not None and t.table.group_maps is not None
    assert t.table.group_maps.groups.max_entries == lru.entries_to_hold(10)
    t.table.add([f])
    for i in range(1, 11):
        with Server(f"127.0.93.{i}") as srv:
            connect_many(srv, "127.0.92.1", i)
    found = groups_of(t, f)
    assert (found.live, found.evicted, found.max_groups) == (10, 0, 10)
    assert counts(t, f) == {f"127.0.93.{i}": i for i in range(1, 11)}


def local(k: int) -> str:
    """The k-th source address of the eviction test (k from 1)."""
    return f"127.1.{k // 250}.{k % 250 + 1}"


def test_past_the_map_evictions_are_counted_and_survivors_exact(make: Make) -> None:
    """More groups than the map holds (--max-groups 4, plus the LRU's room): the kernel
    evicts, every eviction is counted, and what survives is exact."""
    t = make(max_groups=4)
    f = F.parse("dst 127.0.93.1 by laddr")
    assert t.table is not None and t.table.group_maps is not None
    made = t.table.group_maps.groups.max_entries + 10

    def n(k: int) -> int:
        return k % 3 + 1  # connections from local(k): the groups' counts differ

    with Server("127.0.93.1") as srv:
        t.table.add([f])
        connect_many(srv, local(1), n(1))
        assert counts(t, f) == {local(1): n(1)}  # seen once: this ttcp remembers when it was made
        for k in range(2, made + 1):  # one group after the other
            connect_many(srv, local(k), n(k))
        found = groups_of(t, f)
        survivors = counts(t, f)
        assert 4 <= found.live < made and found.live == len(survivors)
        assert found.evicted == made - found.live  # made and gone: evicted
        assert all(survivors[a] == n(k) for k in range(1, made + 1) if (a := local(k)) in survivors), survivors
        assert local(made) in survivors  # the most recent stays
        if local(1) not in survivors:  # evicted: seen again, it starts from zero, and says so
            connect_many(srv, local(1), 2)
            again = next(g for g in groups_of(t, f).groups if g.key.text(f.by) == local(1))
            assert again.closed.count == 2 and again.restarted
    assert t.table.stats([f])[f].matches == sum(n(k) for k in range(1, made + 1)) + (
        2 if local(1) not in survivors else 0)


def test_removing_the_filter_removes_its_groups(make: Make) -> None:
    t = make()
    f, other = F.parse("dst 127.0.90.0/24 by raddr"), F.parse("dst 127.0.91.0/24 by raddr")
    assert t.table is not None and t.table.group_maps is not None
    t.table.add([f, other])
    with Server("127.0.90.1") as a, Server("127.0.91.1") as b:
        connect_many(a, "127.0.92.1", 3)
        connect_many(b, "127.0.92.1", 2)
        collect(t)
        assert counts(t, f) == {"127.0.90.1": 3} and counts(t, other) == {"127.0.91.1": 2}
        t.table.remove([f])
        rows = list(t.table.group_maps.groups.items())
        assert len(rows) == 1 and G.GroupKey.unpack(rows[0][0])[:2] == (t.table.rules.slots[other].index,
                                                                         t.table.rules.slots[other].gen)
        t.table.add([f])  # again: a new generation, its groups from zero
        assert counts(t, f) == {}
        connect_many(a, "127.0.92.1", 1)
        collect(t)
        assert counts(t, f) == {"127.0.90.1": 1} and counts(t, other) == {"127.0.91.1": 2}


def test_a_connection_that_never_closes_shows_in_its_groups_live_samples(make: Make) -> None:
    t = make()
    f = F.parse("dst 127.0.90.0/24 by raddr")
    assert t.table is not None
    t.table.add([f])
    t.enable_sampling(t.report.mode, log=lambda m: None)  # the sampler of the tracer's own family
    started = time.monotonic_ns()
    with Server("127.0.90.1") as pool, Server("127.0.90.2") as other:
        conn = LongLived("127.0.92.1", pool)
        try:
            conn.exchange(40)
            connect_many(other, "127.0.92.1", 2)  # short connections beside it
            found = {g.key.text(f.by): g for g in groups_of(t, f).groups}
            live = found["127.0.90.1"]
            assert live.sampled.count >= 40 and live.closed.count == 0  # it never closed
            # stamped with the socket's own clock (CLOCK_MONOTONIC, us): since then, and not in the future
            assert started <= live.first_ns <= live.last_ns <= time.monotonic_ns()
            assert found["127.0.90.2"].closed.count == 2
        finally:
            conn.close()
    assert t.table.stats([f])[f].sampled.count >= 40


# ---- IPv6 and v4-mapped sockets ------------------------------------------------------------


@pytest.mark.parametrize("by", ["rport", "raddr/64", "laddr"])
def test_ipv6_sockets(make: Make, by: str) -> None:
    """Both sockets of a connection on ::1 have ::1 at the far end: `dst ::1` selects both."""
    t = make()
    f = F.parse(f"dst ::1 by {by}")
    assert t.table is not None
    t.table.add([f])
    with Server("::1", socket.AF_INET6) as a, Server("::1", socket.AF_INET6) as b:
        conns = connect_many(a, "::1", 2) + connect_many(b, "::1", 3)
    collect(t)
    want = {"raddr/64": {"::/64": 10}, "laddr": {"::1": 10},
            # the clients' sockets by the servers' ports; the servers' by each client's port
            "rport": {str(a.port): 2, str(b.port): 3, **{str(c.sport): 1 for c in conns}}}[by]
    assert counts(t, f) == want


def test_v4_mapped_sockets_are_grouped_as_ipv4(make: Make) -> None:
    """The accepted sockets of a dual-stack server hold ::ffff:a.b.c.d: a /24 of the
    IPv4 address, not of the 16 bytes (which would be ::/24 for every peer)."""
    t = make()
    with Server("::", socket.AF_INET6, dual_stack=True) as srv:
        f = F.parse(f"src 127.0.90.1 port {srv.port} by raddr/24")
        g = F.parse(f"src 127.0.90.2 port {srv.port} by laddr")
        assert t.table is not None
        t.table.add([f, g])
        for j, src in enumerate(LOCALS):
            connect_many(srv, src, j + 1, dst="127.0.90.1", family=socket.AF_INET)
        connect_many(srv, "127.0.92.1", 2, dst="127.0.90.2", family=socket.AF_INET)
    got = collect(t)
    assert {e.family for e in got} == {socket.AF_INET6}  # the server's sockets: v4-mapped
    assert counts(t, f) == {"127.0.92.0/24": 6}
    assert counts(t, g) == {"127.0.90.2": 2}


# ---- workloads -----------------------------------------------------------------------------


def own_cgroup_id(cgroups: Cgroups) -> int:
    line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
    return os.stat(cgroups.tree.dir_of(line[3:])).st_ino


def test_by_cgroup(make: Make, cgroups: Cgroups) -> None:
    t = make()
    app, worker = cgroups.make("app"), cgroups.make("worker")
    with Server("127.0.94.1") as srv:
        f = F.parse(f"dst 127.0.94.1 port {srv.port} by cgroup")
        assert t.table is not None
        t.table.add([f])
        run_in(lambda: connect_many(srv, "127.0.92.1", 3), cgroup=cgroups.tree.dir_of(app))
        run_in(lambda: connect_many(srv, "127.0.92.1", 2), cgroup=cgroups.tree.dir_of(worker))
        connect_many(srv, "127.0.92.1", 1)  # this process's own cgroup
    collect(t)
    found = groups_of(t, f)
    assert {g.key.cgroup_id: g.closed.count for g in found.groups} == {
        cgroups.id_of(app): 3, cgroups.id_of(worker): 2, own_cgroup_id(cgroups): 1}
    assert all(g.key.netns == 0 and g.key.addr == bytes(16) for g in found.groups)


def test_by_netns(make: Make, netns: Netns) -> None:
    t = make()
    port = 24781
    f = F.parse(f"dst 127.0.0.0/8 port {port} by netns")
    assert t.table is not None
    t.table.add([f])

    def inside() -> list[Conn]:
        with Server("127.0.0.1", port=port) as srv:  # the namespace's own loopback
            return connect_many(srv, "127.0.0.1", 3)

    run_in(inside, netns=netns.path)
    with Server("127.0.94.2", port=port) as srv:
        connect_many(srv, "127.0.92.1", 2)
    collect(t)
    root = os.stat("/proc/self/ns/net").st_ino
    assert {g.key.netns: g.closed.count for g in groups_of(t, f).groups} == {netns.inode: 3, root: 2}


def test_by_workload_the_kernel_keys_cgroup_and_netns_both(make: Make, cgroups: Cgroups, netns: Netns) -> None:
    """The key `by container` and `by pod` (issue 23) will name in user space."""
    t = make()
    port = 24782
    app = cgroups.make("app")
    f = F.parse(f"dst 127.0.0.0/8 port {port}").with_by(By(ByKind.WORKLOAD))
    assert t.table is not None
    t.table.add([f])

    def inside() -> list[Conn]:
        with Server("127.0.0.1", port=port) as srv:
            return connect_many(srv, "127.0.0.1", 2)

    run_in(inside, cgroup=cgroups.tree.dir_of(app), netns=netns.path)
    with Server("127.0.94.3", port=port) as srv:
        connect_many(srv, "127.0.92.1", 1)
    collect(t)
    root = os.stat("/proc/self/ns/net").st_ino
    assert {(g.key.cgroup_id, g.key.netns): g.closed.count for g in groups_of(t, f).groups} == {
        (cgroups.id_of(app), netns.inode): 2, (own_cgroup_id(cgroups), root): 1}


def test_by_container_merges_a_containers_cgroups_into_one_named_group(make: Make, cgroups: Cgroups,
                                                                       netns: Netns) -> None:
    """`by container` (issue 23): a container whose processes use two cgroups of its own
    namespace is two kernel groups and one named group; a socket of no container (this
    process's) keeps its own (cgroup, netns) group. The registry is filled from
    runtime records placed in the namespace and cgroup the test made."""
    t = make()
    port = 24783
    app, worker = cgroups.make("ctr"), cgroups.make("ctr/worker")
    registry = Registry()
    web = Container("docker", "e" * 64, "ttcp-web", pid=os.getpid())
    assert registry.apply(Seen(web), lambda c: Placement(netns.inode, app, cgroups.id_of(app), False))
    f = F.parse(f"dst 127.0.0.0/8 port {port} by container")
    assert t.table is not None
    t.table.add([f])
    t.table.workload_names = namer(registry)

    def inside(n: int) -> Callable[[], list[Conn]]:
        def work() -> list[Conn]:
            with Server("127.0.0.1", port=port) as srv:
                return connect_many(srv, "127.0.0.1", n)
        return work

    run_in(inside(2), cgroup=cgroups.tree.dir_of(app), netns=netns.path)
    run_in(inside(3), cgroup=cgroups.tree.dir_of(worker), netns=netns.path)  # by the namespace it owns
    with Server("127.0.94.3", port=port) as srv:
        connect_many(srv, "127.0.92.1", 1)
    collect(t)
    root = os.stat("/proc/self/ns/net").st_ino
    found = groups_of(t, f)
    assert [(g.key.text(found.by), g.closed.count) for g in found.groups] == [
        ("ttcp-web", 5), (f"cgroup {own_cgroup_id(cgroups)} netns {root}", 1)]
    assert found.live == 2 and found.evicted == 0
    assert t.table.group_maps is not None
    assert G.GroupRows(*t.table.group_maps.groups.dump()).count(*_slot_gen(t, f)) == 3  # the kernel's: 3
    assert found.groups[0].key.to_json(found.by) == {"container": "ttcp-web"}
    assert t.table.groups([f], top=1)[f].groups == found.groups[:1]
    t.table.workload_names = G.no_names  # no runtime: the kernel's groups as they are
    assert {(g.key.cgroup_id, g.key.netns): g.closed.count for g in groups_of(t, f).groups} == {
        (cgroups.id_of(app), netns.inode): 2, (cgroups.id_of(worker), netns.inode): 3,
        (own_cgroup_id(cgroups), root): 1}


def _slot_gen(t: Tracer, f: Filter) -> tuple[int, int]:
    assert t.table is not None
    slot = t.table.rules.slots[f]
    return slot.index, slot.gen


# ---- breakdowns of workload filters (issue 22's `cgroup PATH`, `netns PATH`) ------------------


def test_a_cgroup_filter_by_cgroup_counts_each_cgroup_below_it(make: Make, cgroups: Cgroups) -> None:
    """`cgroup APP by cgroup`: the kernel matches the cgroup's subtree, one group per
    cgroup of it; the sockets of cgroups outside (this process's) are not counted."""
    t = make()
    app = cgroups.make("app")
    a, b = cgroups.make("app/a"), cgroups.make("app/b")
    f = F.parse(f"cgroup {app} by cgroup")
    assert t.table is not None
    t.table.add([f])
    with Server("127.0.94.4") as srv:
        run_in(lambda: connect_many(srv, "127.0.92.1", 3), cgroup=cgroups.tree.dir_of(a))
        run_in(lambda: connect_many(srv, "127.0.92.1", 2), cgroup=cgroups.tree.dir_of(b))
        run_in(lambda: connect_many(srv, "127.0.92.1", 1), cgroup=cgroups.tree.dir_of(app))
        connect_many(srv, "127.0.92.1", 4)  # this process's own cgroup: outside the filter
    collect(t)
    found = groups_of(t, f)
    assert {g.key.cgroup_id: g.closed.count for g in found.groups} == {
        cgroups.id_of(a): 3, cgroups.id_of(b): 2, cgroups.id_of(app): 1}
    assert found.live == 3 and found.evicted == 0


def test_a_netns_filter_with_an_address_by_raddr(make: Make, netns: Netns) -> None:
    """`netns NS dst NET by raddr`: a workload and an address part, broken down by the
    remote address; the same traffic in this process's namespace is not counted."""
    t = make()
    f = F.parse(f"netns {netns.path} dst 127.0.90.0/24 by raddr")
    assert t.table is not None
    t.table.add([f])

    def traffic_here() -> list[Conn]:
        with Server("127.0.90.1") as one, Server("127.0.90.2") as two, Server("127.0.91.1") as other:
            return (connect_many(one, "127.0.92.1", 3) + connect_many(two, "127.0.92.1", 2)
                    + connect_many(other, "127.0.92.1", 1))

    run_in(traffic_here, netns=netns.path)
    traffic_here()  # the root namespace: not counted
    collect(t)
    assert counts(t, f) == {"127.0.90.1": 3, "127.0.90.2": 2}


def test_a_cgroup_filter_by_netns(make: Make, cgroups: Cgroups, netns: Netns) -> None:
    """`cgroup APP dst NET port P by netns`: the cgroup's sockets in two namespaces, one
    group each (the key `by container` merges with the cgroup's, issue 23)."""
    t = make()
    port = 24783
    app = cgroups.make("app")
    f = F.parse(f"cgroup {app} dst 127.0.0.0/8 port {port} by netns")
    assert t.table is not None
    t.table.add([f])

    def inside() -> list[Conn]:
        with Server("127.0.0.1", port=port) as srv:
            return connect_many(srv, "127.0.0.1", 2)

    run_in(inside, cgroup=cgroups.tree.dir_of(app), netns=netns.path)
    with Server("127.0.94.5", port=port) as srv:
        run_in(lambda: connect_many(srv, "127.0.92.1", 3), cgroup=cgroups.tree.dir_of(app))
        connect_many(srv, "127.0.92.1", 1)  # not in the cgroup
    collect(t)
    root = os.stat("/proc/self/ns/net").st_ino
    found = groups_of(t, f)
    assert {g.key.netns: g.closed.count for g in found.groups} == {netns.inode: 2, root: 3}
    assert all(g.key.cgroup_id == 0 for g in found.groups)


# ---- what a scrape keeps between reads (the kernel's maps written as the program would) ----


@pytest.fixture
def table_maps(no_bpf_leaks: None) -> Iterator[Tracer]:
    t = Tracer(max_filters=16, max_groups=64)
    t.open_maps()
    try:
        yield t
    finally:
        t.close()


def put_groups(t: Tracer, f: Filter, ports: dict[int, int], made: int) -> None:
    """The groups the program would hold for `f` (port: connections), `made` of them
    made in all (group_stats on CPU 0)."""
    assert t.table is not None and t.table.group_maps is not None
    maps, slot = t.table.group_maps, t.table.rules.slots[f]
    for port, n in ports.items():
        buckets = [0] * 26
        buckets[7] = n
        value = G.GROUP_HEAD.pack(1, 1) + HIST.pack(0, 200 * n, *buckets) + bytes(HIST.size)
        maps.groups.put(G.GroupKey(ByKind.RPORT, port=port).pack(slot.index, slot.gen), value)
    cpus = syscalls.possible_cpus()
    maps.stats.put_each(slot.index, [G.GROUP_STAT.pack(slot.gen, made)] + [G.GROUP_STAT.pack(slot.gen, 0)] * (cpus - 1))


def scrape(t: Tracer, *fs: Filter) -> dict[Filter, tuple[int, int, dict[int, int]]]:
    assert t.table is not None
    return {f: (s.live, s.evicted, {g.key.port: g.closed.count for g in s.groups})
            for f, s in t.table.groups(fs, top=2).items()}


def test_a_scrapes_evictions_and_top_groups_follow_every_change(table_maps: Tracer) -> None:
    t, f, other = table_maps, F.parse("dst 127.0.95.0/24 by rport"), F.parse("dst 127.0.96.0/24 by rport")
    assert t.table is not None and t.table.group_maps is not None
    t.table.add([f, other])
    put_groups(t, f, {1: 3, 2: 2, 3: 1}, made=3)
    put_groups(t, other, {9: 1}, made=1)
    assert scrape(t, f, other) == {f: (3, 0, {1: 3, 2: 2}), other: (1, 0, {9: 1})}
    assert scrape(t, f, other) == {f: (3, 0, {1: 3, 2: 2}), other: (1, 0, {9: 1})}  # nothing changed
    put_groups(t, f, {3: 9}, made=3)  # a group's count: no key, no group_stats changed
    assert scrape(t, f, other)[f] == (3, 0, {3: 9, 1: 3})
    put_groups(t, f, {}, made=5)  # two made and evicted meanwhile: group_stats alone changed
    assert scrape(t, f, other)[f] == (3, 2, {3: 9, 1: 3})
    t.table.group_maps.groups.delete(G.GroupKey(ByKind.RPORT, port=3).pack(t.table.rules.slots[f].index,
                                                                          t.table.rules.slots[f].gen))
    assert scrape(t, f, other)[f] == (2, 3, {1: 3, 2: 2})  # one more evicted: the live count alone changed
    put_groups(t, f, {}, made=7)  # two more made and evicted, then another filter read alone
    assert scrape(t, other)[other] == (1, 0, {9: 1})
    assert scrape(t, f, other)[f] == (2, 5, {1: 3, 2: 2})


def test_a_slot_taken_again_by_a_filter_with_the_same_groups_starts_from_zero(table_maps: Tracer) -> None:
    t, f = table_maps, F.parse("dst 127.0.95.0/24 by rport")
    assert t.table is not None
    t.table.add([f])
    put_groups(t, f, {1: 3, 2: 2}, made=6)
    assert scrape(t, f)[f] == (2, 4, {1: 3, 2: 2})
    before = t.table.rules.slots[f]
    t.table.remove([f])
    t.table.add([f])  # the same slot, a new generation
    after = t.table.rules.slots[f]
    assert after.index == before.index and after.gen != before.gen
    assert scrape(t, f)[f] == (0, 0, {})
    put_groups(t, f, {1: 1, 2: 2}, made=2)  # the same groups again, as the program makes them anew
    assert scrape(t, f)[f] == (2, 0, {2: 2, 1: 1})
