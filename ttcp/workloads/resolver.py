"""The filter table's workload resolver (ttcp.rtt.filter_table.WorkloadResolver).

`cgroup PATH`: the cgroup at PATH on the host's cgroup2 hierarchy, followed with
inotify (ttcp.workloads.watch); a path with no cgroup yet is accepted and
pending until one appears, and a cgroup created again at the path is followed
without an API call. `netns PATH`: the namespace file's inode, the file held
open while filters name it (ttcp.workloads.netns). `netns INODE`: the number as
given. Refusals (no cgroup2 mount, a namespace file that does not exist) are
WorkloadErrors: the API answers 400 with their message.

`container NAME|ID` and `pod NAMESPACE/NAME`: what the registry of running
containers (ttcp.workloads.registry) selects now, pending while nothing runs
under the name. The runtime sources' changes come in through apply(), which
answers the workloads whose resolution changed, for the table to follow
(KernelFilterTable.workload_moved): ends first, so that a namespace inode
freed by a container leaves the kernel before another container's can take it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import WorkloadError
from ttcp.rtt.filters import Workload
from ttcp.rtt.table_rules import Resolution
from ttcp.workloads.cgroupfs import CgroupPaths, CgroupTree
from ttcp.workloads.netns import NetnsHandles
from ttcp.workloads.placement import Placer
from ttcp.workloads.registry import Found, Registry
from ttcp.workloads.runtime import Change
from ttcp.workloads.watch import PathWatcher


class Resolver:
    """Resolves workload parts on this host; owns the descriptors that takes."""

    def __init__(self, tree: CgroupTree | str) -> None:
        """`tree`: the cgroup2 hierarchy, or why there is none (cgroup filters are then refused so)."""
        self.tree = tree if isinstance(tree, CgroupTree) else None
        self.no_tree = tree if isinstance(tree, str) else ""
        self.watcher: PathWatcher | None = None
        if self.tree is not None:
            try:
                self.watcher = PathWatcher(self.tree.root)
            except OSError as e:  # e.g. fs.inotify.max_user_instances reached
                self.no_tree = f"cgroup paths cannot be followed without inotify ({e.strerror})"
        self.paths = CgroupPaths(self.tree)
        self.netns = NetnsHandles()
        self.registry = Registry()
        self.placer = Placer(self.tree)
        self.followed: dict[Workload, Resolution] = {}  # container and pod filters' workloads, as resolved

    @classmethod
    def for_host(cls) -> Resolver:
        return cls(CgroupTree.find())

    def resolve(self, w: Workload) -> Resolution:
        if w.named:
            found = self.registry.resolve(w).resolution
            self.followed[w] = found
            return found
        if w.kind == F.NETNS:
            return Resolution.netns(w.inode or self.netns.acquire(w.name))
        if self.watcher is None:
            raise WorkloadError(f"{w}: {self.no_tree}")
        cgroup_id = self.watcher.watch(w.name)
        if cgroup_id is not None:
            self.paths.remember(cgroup_id, w.name)
        return Resolution.cgroup(w.name, cgroup_id)

    def release(self, w: Workload) -> None:
        if w.named:
            self.followed.pop(w, None)
        elif w.kind == F.NETNS:
            if not w.inode:
                self.netns.release(w.name)
        elif self.watcher is not None:
            self.watcher.unwatch(w.name)

    def note(self, w: Workload) -> tuple[str, tuple[str, ...]]:
        found = self.found(w)
        return found.note, found.shared_with

    def found(self, w: Workload) -> Found:
        return self.registry.resolve(w)

    def apply(self, changes: Iterable[Change]) -> list[tuple[Workload, Resolution]]:
        """Runtime changes in; the followed workloads whose resolution changed out, those
        that no longer select anything (or select something else) first."""
        before = self.registry.version
        for change in changes:
            self.registry.apply(change, self.placer)
        if self.registry.version == before:
            return []
        moves = []
        for w, old in self.followed.items():
            new = self.registry.resolve(w).resolution
            if new != old:
                self.followed[w] = new
                moves.append((w, new))
        moves.sort(key=lambda m: m[1].id is not None)
        return moves

    def fileno(self) -> int:
        """What to wait on for cgroup changes (-1: nothing ever changes)."""
        return self.watcher.fileno() if self.watcher is not None else -1

    def process(self) -> list[Resolution]:
        """The cgroup paths whose cgroup changed since the last call, resolved as now."""
        if self.watcher is None:
            return []
        out = []
        for path, cgroup_id in self.watcher.process():
            if cgroup_id is not None:
                self.paths.remember(cgroup_id, path)
            out.append(Resolution.cgroup(path, cgroup_id))
        return out

    def close(self) -> None:
        self.netns.close()
        if self.watcher is not None:
            self.watcher.close()
        if self.tree is not None:
            self.tree.close()
