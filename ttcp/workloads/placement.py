"""Where a running container's sockets are: its netns inode and cgroup-v2 cgroup, read
from /proc/PID (the runtimes report the pid; the kernel matches these).

A pid can exit between the runtime's answer and these reads: `place` returns
None then, and the container counts as not running until its next event.
"""

from __future__ import annotations

import os

from ttcp.rtt import filters as F
from ttcp.rtt.filters import Workload
from ttcp.workloads.cgroupfs import CgroupTree
from ttcp.workloads.registry import Placement
from ttcp.workloads.runtime import Container


def cgroup_v2_path(text: str) -> str | None:
    """The `0::` line's path of a /proc/PID/cgroup text; None when there is none, or it
    is the root (on a hybrid host, a process the runtime did not place in cgroup v2:
    the root would select every socket)."""
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if hid == "0" and sep and not controllers:
            return path if path.startswith("/") and path != "/" else None
    return None


def host_netns_inode(proc: str = "/proc") -> int:
    """The host's namespace: pid 1's, or ttcp's own where pid 1's cannot be read (pid 1 may
    hold a capability ttcp lacks: EACCES even for root; ttcp runs in the host's namespace
    anyway, to see the host's sockets)."""
    try:
        return os.stat(f"{proc}/1/ns/net").st_ino
    except OSError:
        return os.stat(f"{proc}/self/ns/net").st_ino


class Placer:
    """Reads Placements under one /proc and cgroup2 tree (None: no cgroup2 mount)."""

    def __init__(self, tree: CgroupTree | None, proc: str = "/proc") -> None:
        self.tree = tree
        self.proc = proc
        self.host_netns = host_netns_inode(proc)

    def __call__(self, c: Container) -> Placement | None:
        try:
            netns = os.stat(f"{self.proc}/{c.pid}/ns/net").st_ino
            with open(f"{self.proc}/{c.pid}/cgroup", encoding="utf-8", errors="replace") as f:
                text = f.read(65536)
        except OSError:  # it exited, or no ptrace access to its ns (SYS_PTRACE: README)
            return None
        path = cgroup_v2_path(text)
        why = ""
        if path is not None and Workload(F.CGROUP, path).level > F.MAX_CGROUP_LEVEL:
            why = f"its cgroup is deeper than level {F.MAX_CGROUP_LEVEL}, where the kernel's walk stops"
            path = None  # no filter could select it: as if in no cgroup
        cgroup_id = self.tree.id_of(path) if path is not None and self.tree is not None else None
        return Placement(netns, path if cgroup_id is not None else None, cgroup_id,
                         c.host_network or netns == self.host_netns, why)
