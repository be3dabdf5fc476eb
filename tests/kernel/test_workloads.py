"""Workload filters against real cgroups, network namespaces and sockets (issue 22).

Each test makes what it needs (cgroups under the cgroup2 mount found in
/proc/self/mountinfo, namespaces with `ip netns add`), runs child processes
that join them and make loopback connections, and checks the events: exactly
the connections the filter selects, named by it, with the socket's cgroup id
(`stat -c %i` of its directory) and path. The client sockets are the child's;
an accepted socket belongs to its listener's cgroup (the test process's).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel import mode_probe, require, scaled
from tests.support.tracing import collect
from tests.support.traffic import Conn, Server, connect_many
from tests.support.workloads import Cgroups, Netns, run_in
from ttcp.rtt import filters as F
from ttcp.rtt.events import Event
from ttcp.rtt.tracer import MODES, Tracer
from ttcp.workloads.resolver import Resolver

pytestmark = [pytest.mark.kernel, pytest.mark.matrix]

N = 5


@pytest.fixture(params=MODES)
def wtracer(request: pytest.FixtureRequest, no_bpf_leaks: None) -> Iterator[Tracer]:
    """A tracer attached in each mode this kernel has, resolving workloads on this host."""
    require(mode_probe(request.param))
    resolver = Resolver.for_host()
    try:
        with Tracer(max_filters=64, resolver=resolver) as t:
            t.open_maps()
            t.attach(request.param, log=lambda msg: None)
            collect(t, settle_s=0.05)
            yield t
    finally:
        resolver.close()


def add(t: Tracer, *texts: str) -> None:
    assert t.table is not None
    t.table.add([F.parse(x) for x in texts])


def state(t: Tracer, text: str) -> tuple[str, int | None]:
    assert t.table is not None
    s = t.table.workload_state(F.parse(text))
    assert s is not None
    return s.state, s.id


def follow(t: Tracer, wait_s: float = 1.0) -> float:
    """What the agent does when the watcher's descriptor is readable: the cgroup
    changes applied to the table. Waits at most `wait_s` (scaled) for the first;
    returns how long it took."""
    resolver = t.resolver
    assert isinstance(resolver, Resolver) and t.table is not None
    start = time.monotonic()
    ready, _, _ = select.select([resolver.fileno()], [], [], scaled(wait_s))
    assert ready, f"no cgroup change seen within {wait_s} s"
    for resolution in resolver.process():
        t.table.resolution_changed(resolution)
    return time.monotonic() - start


def clients(conns: list[Conn]) -> list[tuple[str, int, str, int]]:
    return sorted((c.src, c.sport, c.dst, c.dport) for c in conns)


def ends(got: list[Event]) -> list[tuple[str, int, str, int]]:
    return sorted((e.saddr, e.sport, e.daddr, e.dport) for e in got)


def test_a_cgroup_filter_selects_its_processes_and_those_below(wtracer: Tracer, cgroups: Cgroups) -> None:
    app, child = cgroups.make(), cgroups.make("worker")
    add(wtracer, f"cgroup {app}")
    assert state(wtracer, f"cgroup {app}") == ("resolved", cgroups.id_of(app))
    with Server("127.0.50.1") as srv:
        inside = run_in(lambda: connect_many(srv, "127.0.50.2", N), cgroup=cgroups.tree.dir_of(app))
        below = run_in(lambda: connect_many(srv, "127.0.50.3", 2), cgroup=cgroups.tree.dir_of(child))
        run_in(lambda: connect_many(srv, "127.0.50.4", 3))  # a process outside: the test's own cgroup
        connect_many(srv, "127.0.50.5", 2)  # this process: outside too
    got = collect(wtracer)
    assert ends(got) == clients(inside + below)  # exactly N + 2: nothing from outside
    assert {e.filter for e in got} == {f"cgroup {app}"}
    by_src = {e.saddr: e for e in got}
    assert by_src["127.0.50.2"].cgroup_id == cgroups.id_of(app)  # stat -c %i of its directory
    assert by_src["127.0.50.3"].cgroup_id == cgroups.id_of(child)  # the socket's own cgroup
    assert (by_src["127.0.50.2"].cgroup, by_src["127.0.50.3"].cgroup) == (app, child)
    assert wtracer.table is not None
    assert wtracer.table.stats([F.parse(f"cgroup {app}")])[F.parse(f"cgroup {app}")].matches == N + 2


def test_a_cgroup_created_again_is_followed_without_an_api_call(wtracer: Tracer, cgroups: Cgroups) -> None:
    app = cgroups.make()
    add(wtracer, f"cgroup {app}")
    first = cgroups.id_of(app)
    cgroups.remove(app)
    follow(wtracer)
    assert state(wtracer, f"cgroup {app}") == ("pending", None)
    cgroups.make()
    took = follow(wtracer)
    second = cgroups.id_of(app)
    assert second != first and state(wtracer, f"cgroup {app}") == ("resolved", second)
    assert took < scaled(1.0)
    with Server("127.0.50.11") as srv:
        conns = run_in(lambda: connect_many(srv, "127.0.50.12", N), cgroup=cgroups.tree.dir_of(app))
    got = collect(wtracer)
    assert ends(got) == clients(conns) and {e.cgroup_id for e in got} == {second}


def test_a_removed_cgroups_sockets_are_still_selected_a_while(wtracer: Tracer, cgroups: Cgroups) -> None:
    """A socket keeps the id of the cgroup it was made in; a service's connections often
    end just after its cgroup went (a restart). The old id lingers (LINGER_S)."""
    app = cgroups.make("app")
    add(wtracer, f"cgroup {app}")
    old = cgroups.id_of(app)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with Server("127.0.50.71") as srv:
        pid = os.fork()
        if pid == 0:  # the child: a connection made in the cgroup, held while it goes
            code = 1
            try:
                (cgroups.tree.dir_of(app) / "cgroup.procs").write_text(str(os.getpid()))
                cli = socket.create_connection(("127.0.50.71", srv.port), source_address=("127.0.50.72", 0))
                (cgroups.tree.dir_of(cgroups.top) / "cgroup.procs").write_text(str(os.getpid()))
                os.write(ready_w, str(cli.getsockname()[1]).encode())
                os.read(go_r, 1)
                cli.close()
                code = 0
            finally:
                os._exit(code)
        sport = int(os.read(ready_r, 16))
        conn, _ = srv.sock.accept()
        cgroups.remove(app)  # empty now: the process moved out, its socket did not
        follow(wtracer)
        assert state(wtracer, f"cgroup {app}") == ("pending", None)
        os.write(go_w, b"x")
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        conn.close()
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)
    got = collect(wtracer)
    assert [(e.sport, e.cgroup_id, e.filter) for e in got] == [(sport, old, f"cgroup {app}")]


def test_a_path_that_does_not_exist_yet_is_pending_until_it_does(wtracer: Tracer, cgroups: Cgroups) -> None:
    parent = cgroups.make()
    later = f"{parent}/a/b"  # two levels that do not exist yet: the deepest existing one is watched
    add(wtracer, f"cgroup {later}")
    assert state(wtracer, f"cgroup {later}") == ("pending", None)
    cgroups.make("a/b")  # mkdir -p: the watcher walks down what appeared before its watch
    deadline = time.monotonic() + scaled(1.0)
    while state(wtracer, f"cgroup {later}")[0] == "pending":
        follow(wtracer, max(deadline - time.monotonic(), 0.01))
    assert state(wtracer, f"cgroup {later}") == ("resolved", cgroups.id_of(later))
    with Server("127.0.50.21") as srv:
        conns = run_in(lambda: connect_many(srv, "127.0.50.22", 3), cgroup=cgroups.tree.dir_of(later))
    assert ends(collect(wtracer)) == clients(conns)


def test_a_netns_filter_selects_exactly_that_namespace(wtracer: Tracer, netns: Netns) -> None:
    add(wtracer, f"netns {netns.path}")
    assert state(wtracer, f"netns {netns.path}") == ("resolved", netns.inode)

    def inside() -> list[Conn]:
        with Server("127.0.0.1") as srv:  # the namespace's own loopback
            return connect_many(srv, "127.0.0.1", N)

    conns = run_in(inside, netns=netns.path)
    with Server("127.0.50.31") as srv:
        connect_many(srv, "127.0.50.32", 3)  # the root namespace: not selected
    got = collect(wtracer)
    assert len(got) == 2 * N  # both sockets of each connection live in the namespace
    assert {e.netns for e in got} == {netns.inode} and {e.filter for e in got} == {f"netns {netns.path}"}
    assert sorted((e.saddr, e.sport) for e in got if e.dport == conns[0].dport) == \
        sorted((c.src, c.sport) for c in conns)


def test_a_workload_with_an_address_part_selects_both(wtracer: Tracer, cgroups: Cgroups) -> None:
    app = cgroups.make()
    with Server("127.0.50.41") as db, Server("127.0.50.41") as other, Server("127.0.50.42") as elsewhere:
        add(wtracer, f"cgroup {app} dst 127.0.50.41 port {db.port}")

        def work() -> list[Conn]:
            ours = connect_many(db, "127.0.50.43", N)
            connect_many(other, "127.0.50.43", 2)  # the same address, another port
            connect_many(elsewhere, "127.0.50.43", 2)  # another address
            return ours

        ours = run_in(work, cgroup=cgroups.tree.dir_of(app))
        connect_many(db, "127.0.50.44", 3)  # the right destination, from outside the cgroup
    got = collect(wtracer)
    assert ends(got) == clients(ours)
    assert {e.filter for e in got} == {f"cgroup {app} dst 127.0.50.41 port {ours[0].dport}"}


def test_nested_cgroups_are_tried_deepest_first_then_the_ones_above(wtracer: Tracer, cgroups: Cgroups) -> None:
    app, worker = cgroups.make(), cgroups.make("worker/x")
    add(wtracer, f"cgroup {app}", f"cgroup {worker} dst 127.0.50.51", "src 127.0.50.53")
    with Server("127.0.50.51") as special, Server("127.0.50.52") as plain:
        def work() -> list[Conn]:
            return connect_many(special, "127.0.50.53", 2) + connect_many(plain, "127.0.50.53", 3)

        conns = run_in(work, cgroup=cgroups.tree.dir_of(worker))
        outside = connect_many(plain, "127.0.50.53", 1)
    named = {(e.saddr, e.sport): e.filter for e in collect(wtracer)}
    assert len(named) == 6
    for c in conns:
        want = f"cgroup {worker} dst 127.0.50.51" if c.dst == "127.0.50.51" else f"cgroup {app}"
        assert named[c.src, c.sport] == want  # the deeper cgroup's filter, else the one above
    assert named["127.0.50.53", outside[0].sport] == "127.0.50.53"  # no workload: the address filter


def test_live_samples_of_a_workload_filter(wtracer: Tracer, cgroups: Cgroups) -> None:
    """The samplers that have the socket (fentry, tp_btf, tcp_probe with skaddr: 6.9+)
    match workloads; where the tracepoint's record lacks it, a workload filter gets none."""
    app = cgroups.make()
    add(wtracer, f"cgroup {app}", "src 127.0.50.62")
    wtracer.enable_sampling(wtracer.report.mode, log=lambda msg: None)
    with Server("127.0.50.61") as srv:
        run_in(lambda: connect_many(srv, "127.0.50.62", N, payload=b"x" * 20000), cgroup=cgroups.tree.dir_of(app))
        connect_many(srv, "127.0.50.62", N, payload=b"x" * 20000)
    collect(wtracer)
    assert wtracer.table is not None
    stats = wtracer.table.stats(wtracer.table.filters())
    sampled = {str(f): s.sampled.count for f, s in stats.items()}
    assert sampled["127.0.50.62"] > 0
    assert (sampled[f"cgroup {app}"] > 0) == wtracer.sampling_workloads, (sampled, wtracer.sampling.mode)


def test_a_netns_file_that_does_not_exist_is_refused(wtracer: Tracer) -> None:
    assert wtracer.table is not None
    with pytest.raises(F.FilterError, match="does not exist"):
        wtracer.table.add([F.parse("netns /run/netns/ttcp-test-no-such-namespace")])
    assert len(wtracer.table) == 0
    with pytest.raises(F.FilterError, match="not a namespace file"):
        wtracer.table.add([F.parse(f"netns {Path('/proc/self/cgroup').resolve()}")])
    with pytest.raises(F.FilterError, match="not of a network namespace"):
        wtracer.table.add([F.parse(f"netns /proc/{os.getpid()}/ns/uts")])
