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
(KernelFilterTable.workload_moved): ends first. A namespace a name resolves
to is held open (/proc/PID/ns/net) until the table has moved away from it
(settle()): the kernel reuses a namespace's inode as soon as it is freed, and
the runtime's event that the container ended comes after its end, so without
the hold a new container could take the inode and match the old name's
filters in between.
"""

from __future__ import annotations

import contextlib
import os
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
        self._by_text: dict[str, dict[Workload, None]] = {}  # followed, by their name or id text
        self._holds: dict[Workload, tuple[int, int]] = {}  # a followed workload's namespace: fd, inode
        self._stale: list[int] = []  # holds to close once the table has moved

    @classmethod
    def for_host(cls) -> Resolver:
        return cls(CgroupTree.find())

    def resolve(self, w: Workload) -> Resolution:
        if w.named:
            found = self.registry.resolve(w)
            resolution = found.resolution if self._hold(w, found) else Resolution.pending(w)
            self.followed[w] = resolution
            self._by_text.setdefault(w.name, {})[w] = None
            self.settle()
            return resolution
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
            same = self._by_text.get(w.name, {})
            same.pop(w, None)
            if not same:
                self._by_text.pop(w.name, None)
            held = self._holds.pop(w, None)
            if held is not None:
                os.close(held[0])
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
        touched = self.registry.touched()
        if self.registry.version == before:
            return []
        moves = []
        for w in self._touching(touched):
            old = self.followed[w]
            found = self.registry.resolve(w)
            new = found.resolution if self._hold(w, found) else Resolution.pending(w)
            if new != old:
                self.followed[w] = new
                moves.append((w, new))
        moves.sort(key=lambda m: m[1].id is not None)
        return moves

    def _touching(self, touched: set[str]) -> list[Workload]:
        """The followed workloads a change to these ids, names and pods may move: by the
        text itself, or an id's prefix (≥ 12 hex digits). Not a scan of every filter: with
        a thousand of them, a runtime's change must not hold up the event loop."""
        out: dict[Workload, None] = {}
        for text in touched:
            out.update(self._by_text.get(text, {}))
            if len(text) > F.CONTAINER_ID_PREFIX:
                for n in range(F.CONTAINER_ID_PREFIX, len(text)):
                    out.update(self._by_text.get(text[:n], {}))
        return list(out)

    def _hold(self, w: Workload, found: Found) -> bool:
        """Hold the namespace `w` resolves to now (the one held before goes at settle());
        False when it cannot be held: `w` stays pending, since the kernel would select an
        inode nobody holds (free for another namespace) until the container's end event."""
        inode = found.resolution.id if found.resolution.selector[0] == F.NETNS else None
        held = self._holds.get(w)
        if held is not None and held[1] == inode:
            return True
        if held is not None:
            self._stale.append(held[0])
            del self._holds[w]
        if inode is None:
            return True
        try:
            fd = os.open(f"{self.placer.proc}/{found.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # it ended already: its end is the next change
            return False
        if os.fstat(fd).st_ino != inode:  # the pid is another process's now
            os.close(fd)
            return False
        self._holds[w] = (fd, inode)
        return True

    def settle(self) -> None:
        """The table has followed apply()'s moves: namespaces no longer selected are let go."""
        stale, self._stale = self._stale, []
        for fd in stale:
            with contextlib.suppress(OSError):
                os.close(fd)

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
        self.settle()
        for fd, _ in self._holds.values():
            os.close(fd)
        self._holds.clear()
        self.netns.close()
        if self.watcher is not None:
            self.watcher.close()
        if self.tree is not None:
            self.tree.close()
