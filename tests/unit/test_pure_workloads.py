"""The workloads' pure parts on text and bytes: where cgroup2 is mounted (mountinfo),
which directories a path watcher watches, inotify records, and the resolver's
refusals that need no file system."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from ttcp import syscalls
from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import WorkloadError
from ttcp.rtt.table_rules import Resolution
from ttcp.workloads import mountinfo
from ttcp.workloads.cgroupfs import NO_CGROUP2, CgroupTree
from ttcp.workloads.placement import Placer
from ttcp.workloads.registry import Placement, Registry
from ttcp.workloads.resolver import Resolver
from ttcp.workloads.runtime import Container, Seen
from ttcp.workloads.watch import ancestors, child_below

HYBRID = """\
22 27 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
36 31 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,net_cls,net_prio
"""
UNIFIED = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
CONTAINER = "1185 1180 0:26 /docker/abc /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw\n"
V1_ONLY = "33 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu\n"


def test_the_cgroup2_mount_is_found_wherever_it_is() -> None:
    assert mountinfo.cgroup2_mount(mountinfo.parse(HYBRID)) == mountinfo.Mount(
        "/", "/sys/fs/cgroup/unified", "cgroup2")
    assert mountinfo.cgroup2_mount(mountinfo.parse(UNIFIED)).mount_point == "/sys/fs/cgroup"
    assert mountinfo.cgroup2_mount(mountinfo.parse(V1_ONLY)) is None
    inner = mountinfo.cgroup2_mount(mountinfo.parse(CONTAINER))
    assert inner is not None and inner.root == "/docker/abc"  # a sub-tree: not the host's


def test_mountinfo_escapes_and_odd_lines() -> None:
    text = "40 1 0:50 / /mnt/with\\040space rw - cgroup2 none rw\ngarbage\n\n41 1 0:51 / /x rw shared:1\n"
    assert mountinfo.parse(text) == [mountinfo.Mount("/", "/mnt/with space", "cgroup2")]
    assert mountinfo.unescape("a\\011b\\134c\\012") == "a\tb\\c\n"


@pytest.mark.parametrize("text,why", [(V1_ONLY, NO_CGROUP2), (CONTAINER, "inside a cgroup namespace")])
def test_cgroup_filters_are_refused_where_no_host_tree_is_seen(text: str, why: str) -> None:
    tree = CgroupTree.find(text)
    assert isinstance(tree, str) and why in tree
    resolver = Resolver(tree)
    with pytest.raises(WorkloadError, match=re.escape(why)):
        resolver.resolve(F.parse("cgroup /system.slice").workload)
    assert resolver.resolve(F.parse("netns 4026532325").workload).id == 4026532325  # netns: still fine
    assert resolver.fileno() == -1 and resolver.process() == []
    resolver.close()


def test_a_path_watcher_watches_the_ancestors_and_reads_their_entries() -> None:
    assert ancestors("/") == []
    assert ancestors("/a") == ["/"]
    assert ancestors("/a/b/c") == ["/", "/a", "/a/b"]
    assert child_below("/", "/a/b") == "a"
    assert child_below("/a", "/a/b/c") == "b"
    assert child_below("/a", "/ab/c") is None  # a prefix of the name is not its parent
    assert child_below("/a/b", "/a/b") is None and child_below("/x", "/a") is None


def test_inotify_records_are_read_from_their_bytes() -> None:
    def record(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + bytes(-len(name) % 16 + (16 if name else 0))
        return struct.pack("=iIII", wd, mask, 0, len(padded)) + padded

    data = record(1, 0x100 | 0x40000000, b"app.service") + record(2, 0x8000, b"") + record(3, 0x200, b"x")
    assert syscalls.parse_inotify(data) == [(1, 0x40000100, "app.service"), (2, 0x8000, ""), (3, 0x200, "x")]
    with pytest.raises(ValueError):  # a torn record: the kernel only ever returns whole ones
        syscalls.parse_inotify(data[:10])


def test_a_namespace_that_cannot_be_held_stays_pending() -> None:
    """The container's process ended between its placement and the hold: no move to an
    inode nobody holds; the next change resolves it again."""
    places: dict[int, Placement] = {}

    class Given(Placer):
        def __call__(self, c: Container) -> Placement | None:
            return places.get(c.pid)

    resolver = Resolver(NO_CGROUP2)
    resolver.placer = Given(None)
    mine = os.stat("/proc/self/ns/net").st_ino
    gone_pid = 1 << 30  # above pid_max: its /proc/PID/ns/net cannot be opened
    places[gone_pid] = places[os.getpid()] = Placement(mine, None, None, False)
    web = F.parse("container web").workload
    assert web is not None
    assert resolver.resolve(web) == Resolution.pending(web)
    assert resolver.apply([Seen(Container("docker", "a" * 64, "web", pid=gone_pid))]) == []  # still pending
    assert resolver.followed[web] == Resolution.pending(web) and not resolver._holds
    assert resolver.apply([Seen(Container("docker", "a" * 64, "web", pid=os.getpid()))]) == [
        (web, Resolution.netns(mine))]
    assert resolver._holds[web][1] == mine
    resolver.close()


@pytest.mark.parametrize("depth", [F.MAX_CGROUP_LEVEL, F.MAX_CGROUP_LEVEL + 1, 40])
def test_a_cgroup_deeper_than_the_kernel_walk_counts_as_none(tmp_path: Path, depth: int) -> None:
    """A tree and a /proc laid out in directories: a cgroup past MAX_CGROUP_LEVEL is no cgroup
    (its note says why), never a resolution the table cannot pack."""
    path = "/" + "/".join(f"l{i}" for i in range(1, depth + 1))
    (tmp_path / "tree" / path.lstrip("/")).mkdir(parents=True)
    for pid in (1, 7):  # the host's (pid 1's) namespace and the container's
        (tmp_path / "proc" / str(pid) / "ns").mkdir(parents=True)
        (tmp_path / "proc" / str(pid) / "ns" / "net").write_bytes(b"")
    (tmp_path / "proc" / "7" / "cgroup").write_text(f"0::{path}\n")
    tree = CgroupTree(tmp_path / "tree")
    try:
        c = Container("docker", "a" * 64, "web", pid=7, host_network=True)
        place = Placer(tree, str(tmp_path / "proc"))(c)
        assert place is not None
        registry = Registry()
        registry.apply(Seen(c), lambda _: place)
        web = F.parse("container web").workload
        assert web is not None
        found = registry.resolve(web)
        if depth <= F.MAX_CGROUP_LEVEL:
            assert place.cgroup == path and found.resolution.level == depth
        else:
            assert place.cgroup is None and place.cgroup_id is None
            assert found.resolution == Resolution.pending(web) and "deeper than level 31" in found.note
    finally:
        tree.close()
