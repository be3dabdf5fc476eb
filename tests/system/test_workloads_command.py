"""Workload filters through the `ttcp` command: the JSON cgroup fields, the -w
Workload column, a netns filter, and a cgroup created again followed by the
running agent within a second, with no API call (the agent's event loop reads
the watcher's inotify descriptor)."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.cli_process import TtcpProcess
from tests.support.kernel import scaled
from tests.support.traffic import Conn, Server, connect_many
from tests.support.workloads import Cgroups, Netns, run_in
from ttcp.rtt import events

pytestmark = pytest.mark.kernel


def workload_state(t: TtcpProcess, text: str) -> dict[str, object]:
    status, body = t.api("GET", "/filters")
    assert status == 200
    return next(e["workload"] for e in json.loads(body)["filters"] if e["filter"] == text)


def test_json_lines_carry_the_cgroup_and_a_cgroup_created_again_is_followed(cgroups: Cgroups) -> None:
    app = cgroups.make()
    with TtcpProcess("--format", "json", "--filter", f"cgroup {app}") as t, Server("127.0.60.1") as srv:
        first = run_in(lambda: connect_many(srv, "127.0.60.2", 3), cgroup=cgroups.tree.dir_of(app))
        got = [json.loads(line) for line in t.lines_until_quiet()]
        assert sorted(e["sport"] for e in got) == sorted(c.sport for c in first)
        assert {(e["filter"], e["cgroup_id"], e["cgroup"]) for e in got} == {
            (f"cgroup {app}", cgroups.id_of(app), app)}
        cgroups.remove(app)
        cgroups.make()  # a service restarted: the same path, a new cgroup
        created, new_id = time.monotonic(), cgroups.id_of(app)
        while workload_state(t, f"cgroup {app}")["cgroup_id"] != new_id:  # reads only: no API write
            assert time.monotonic() - created < scaled(1.0), "the new cgroup was not followed within 1 s"
            time.sleep(0.02)
        second = run_in(lambda: connect_many(srv, "127.0.60.2", 2), cgroup=cgroups.tree.dir_of(app))
        got = [json.loads(line) for line in t.lines_until_quiet()]
        assert sorted(e["sport"] for e in got) == sorted(c.sport for c in second)
        assert {e["cgroup_id"] for e in got} == {new_id}
        assert t.stop() == 0


def test_the_wide_table_shows_each_connections_cgroup(cgroups: Cgroups) -> None:
    app = cgroups.make("svc")
    with TtcpProcess("-w", "--filter", "src 127.0.60.12", "--filter", f"cgroup {app} dst 127.0.60.11") as t, \
            Server("127.0.60.11") as srv:
        assert t.header == events.WIDE_HEADER
        run_in(lambda: connect_many(srv, "127.0.60.12", 2), cgroup=cgroups.tree.dir_of(app))
        connect_many(srv, "127.0.60.12", 1)  # this process's own cgroup: the address filter
        lines = t.lines_until_quiet()
        assert len(lines) == 3
        assert sum(line.endswith(f" {app}") for line in lines) == 2
        ours = [line for line in lines if not line.endswith(f" {app}")]
        assert ours and ours[0].split()[-1].startswith("/")  # the test's own cgroup, by its path
        assert t.stop() == 0


def test_a_netns_filter_from_the_command_line(netns: Netns) -> None:
    with TtcpProcess("--format", "json", "--filter", f"netns {netns.path}") as t:
        def inside() -> list[Conn]:
            with Server("127.0.0.1") as srv:
                return connect_many(srv, "127.0.0.1", 2)

        run_in(inside, netns=netns.path)
        with Server("127.0.60.21") as srv:
            connect_many(srv, "127.0.60.22", 2)
        got = [json.loads(line) for line in t.lines_until_quiet()]
        assert len(got) == 4 and {(e["netns"], e["filter"]) for e in got} == {(netns.inode, f"netns {netns.path}")}
        assert t.stop() == 0


def test_a_namespace_file_that_does_not_exist_is_a_usage_error_at_start() -> None:
    with pytest.raises(RuntimeError, match="netns /run/netns/ttcp-test-absent does not exist"):
        TtcpProcess("--filter", "netns /run/netns/ttcp-test-absent", ready_timeout=10)
