"""Workload filters through the HTTP API, on the real table with this host's resolver:
their JSON forms, the state GET /filters shows (resolved, pending, shadowed), the
400 for a workload this host cannot give, and all-or-nothing bodies."""

from __future__ import annotations

import select
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.support.api import Client, run, texts
from tests.support.kernel import scaled
from tests.support.workloads import Cgroups, Netns
from ttcp.rtt.filter_table import KernelFilterTable
from ttcp.rtt.tracer import Tracer
from ttcp.workloads.resolver import Resolver

pytestmark = pytest.mark.kernel


@pytest.fixture
def table(no_bpf_leaks: None) -> Iterator[KernelFilterTable]:
    resolver = Resolver.for_host()
    try:
        with Tracer(max_filters=16, ringbuf_size=4096, resolver=resolver) as t:
            yield t.open_maps()
    finally:
        resolver.close()


def follow(table: KernelFilterTable) -> None:
    """What the agent's loop does when the watcher's descriptor is readable."""
    resolver = table.resolver
    assert isinstance(resolver, Resolver)
    assert select.select([resolver.fileno()], [], [], scaled(1.0))[0], "no cgroup change within 1 s"
    for r in resolver.process():
        table.resolution_changed(r)


def url(text: str) -> str:
    return "/filters/" + quote(text, safe="/:")


def test_a_cgroup_filter_shows_its_state_as_its_cgroup_comes(table: KernelFilterTable, cgroups: Cgroups) -> None:
    path = f"{cgroups.top}/app.service"

    async def scenario(c: Client) -> None:
        r = await c.call("PUT", url(f"cgroup {path} dst 10.20.0.0/16 port 5432"), 201)
        assert r.body["workload"] == {"kind": "cgroup", "path": path, "state": "pending", "cgroup_id": None}
        assert (r.body["cgroup"], r.body["side"], r.body["address"], r.body["port"]) == (
            path, "dst", "10.20.0.0/16", 5432)
        cgroups.make("app.service")
        follow(table)
        listed = (await c.call("GET", "/filters", 200)).body["filters"]
        assert [e["workload"] for e in listed] == [
            {"kind": "cgroup", "path": path, "state": "resolved", "cgroup_id": cgroups.id_of(path)}]
        assert (await c.call("GET", "/", 200)).body == [f"cgroup {path} dst 10.20.0.0/16 port 5432"]

    run(table, scenario)


def test_json_bodies_take_workloads_and_a_bad_one_changes_nothing(table: KernelFilterTable, cgroups: Cgroups,
                                                                   netns: Netns) -> None:
    app = cgroups.make()

    async def scenario(c: Client) -> None:
        bad = {"filters": ["10.0.0.1", {"cgroup": app}, {"netns": "/run/netns/ttcp-test-not-there"}]}
        r = await c.call("PUT", "/filters", 400, json=bad)
        assert "netns /run/netns/ttcp-test-not-there does not exist" in r.body["error"]
        assert len(table) == 0  # nothing half-applied
        good = {"filters": ["10.0.0.1", {"cgroup": app}, {"netns": netns.path, "side": "dst", "address": "::1"}]}
        await c.call("PUT", "/filters", 204, json=good)
        assert texts(table) == {"10.0.0.1", f"cgroup {app}", f"netns {netns.path} dst ::1"}
        await c.call("DELETE", "/filters", 204, json={"filters": [{"cgroup": app}]})
        assert texts(table) == {"10.0.0.1", f"netns {netns.path} dst ::1"}
        r = await c.call("PUT", "/", 400, data="cgroup relative/path")
        assert "must be absolute" in r.body["error"]

    run(table, scenario)


def test_two_names_of_one_namespace_one_shadowed_until_the_other_goes(table: KernelFilterTable,
                                                                     netns: Netns) -> None:
    by_path, by_inode = f"netns {netns.path}", f"netns {netns.inode}"

    async def scenario(c: Client) -> None:
        await c.call("PUT", "/", 204, data=f"{by_path}\n{by_inode}")
        states = {e["filter"]: e["workload"] for e in (await c.call("GET", "/filters", 200)).body["filters"]}
        assert states[by_path] == {"kind": "netns", "path": netns.path, "state": "resolved", "netns": netns.inode}
        assert states[by_inode] == {"kind": "netns", "inode": netns.inode, "state": "shadowed",
                                    "netns": netns.inode, "shadowed_by": by_path}
        await c.call("DELETE", url(by_path), 204)
        r = await c.call("GET", url(by_inode), 200)
        assert r.body["workload"]["state"] == "resolved"

    run(table, scenario)
