"""A filter table that outlives ttcp: its maps pinned in a BPF file system.

With `--pin DIR` the maps that hold the filter table (hosts, nets, stats,
texts, and the groups of filters with a breakdown: groups, group_stats) get
names in DIR, so the kernel keeps them when ttcp exits, SIGKILL included, and
the next ttcp on DIR carries on with the same filters, counters and groups. A
table pinned before groups existed has no groups maps: they are made and
pinned beside it (its filter values' breakdown bytes are zero: no `by`).
Nothing else is pinned: the programs and links go with the process
(no tracing without an agent to read the events), and the program's config
word and the workload maps (cgroups, netns: resolved again, ids change while
no ttcp runs) are recomputed from the table at start.

- One agent per directory: an exclusive flock(2) on DIR itself, which the
  kernel drops when the holder dies. bpffs cannot hold a lock file (creating a
  regular file there is EACCES, a name with a dot EPERM), and a lock file under
  /run would not be seen from another container; a lock on DIR's inode works on
  bpffs and is shared by every mount of it (containers given the host's
  /sys/fs/bpf).
- Every pinned map is checked against the object's spec (ttcp.obj.map_compat):
  equal, it is reused; different only in max entries (another --max-filters),
  its entries are copied into a map of the new size, which then replaces the
  pin with rename(2), atomic per name (the groups map is sized by --max-groups,
  the others by --max-filters; a smaller groups map keeps what fits); `hosts` and `nets` of the previous key
  layout (before workloads: no wid) are migrated the same way, each key
  rewritten (ttcp.rtt.filters.upgraded_*_key); any other difference is an
  IncompatiblePinError and nothing changes.
- Copies keep each filter's counter slot, so any mix of old- and new-size maps
  that a crash between two renames leaves is a consistent table, which the
  next start finishes migrating. A table about to shrink first moves filters
  whose slot would not fit to free lower slots, in place
  (ttcp.rtt.filter_table.compact_slots, as ttcp.rtt.table_rules plans it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ttcp import syscalls
from ttcp.elf_loader import Collection
from ttcp.errors import BpfError, TtcpError
from ttcp.kernel.uapi import BPF_FS_MAGIC
from ttcp.maps import Array, HashMap, LpmTrie, PerCpuArray, RawCodec, copy_entries
from ttcp.obj.map_compat import Difference, MapShape, differences, only_size_differs
from ttcp.obj.map_specs import MapSpec
from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import GroupMaps, compact_slots, held_filters

log = logging.getLogger("ttcp")

GROUP_MAPS = ("groups", "group_stats")  # a filter's groups (sized by --max-groups) and their counts
STAGING_SUFFIX = "_new"  # a map is pinned as NAME_new, then renamed to NAME (bpffs refuses dots)
# The maps whose keys changed with workloads: the previous key size and how a key of it becomes one of now.
PREVIOUS_KEYS = {"hosts": (F.OLD_HOST_KEY.size, F.upgraded_host_key),
                 "nets": (F.OLD_NET_KEY.size, F.upgraded_net_key)}


class PinError(TtcpError):
    """A pin directory ttcp cannot use; the message says what to change."""


class PinDirError(PinError):
    """The directory is not in a writable BPF file system."""


class PinLockedError(PinError):
    """Another process holds the directory."""


class IncompatiblePinError(PinError):
    """A pinned map that this ttcp cannot reuse or migrate (nothing was changed)."""


class PinnedTableTooBigError(PinError):
    """The pinned table holds more filters than the size asked for (nothing was changed)."""

    def __init__(self, count: int, limit: int, directory: Path) -> None:
        self.count, self.limit = count, limit
        super().__init__(f"the filter table pinned in {directory} holds {count} filters, more than "
                         f"the {limit} entries asked for")


def check_bpffs(directory: Path) -> None:
    """DIR, or the nearest ancestor that exists, must be in a BPF file system."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        on_bpffs = syscalls.fs_type(probe) == BPF_FS_MAGIC
    except OSError as e:
        raise PinDirError(f"cannot inspect {probe}: {e.strerror}") from None
    if not on_bpffs:
        raise PinDirError(
            f"{directory} is not in a BPF file system: mount one there (mount -t bpf bpf /sys/fs/bpf) "
            "or, in a container, mount the host's (docker run -v /sys/fs/bpf:/sys/fs/bpf; Kubernetes: "
            "a hostPath volume of /sys/fs/bpf)")
    if probe == directory and not directory.is_dir():
        raise PinDirError(f"{directory} is not a directory (a pinned object?); give a directory")


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        hint = {errno.EROFS: " (the BPF file system must be mounted read-write)",
                errno.EACCES: " (as root: an LSM such as AppArmor denies it; a container needs an "
                              "unconfined AppArmor profile to pin)"}.get(e.errno or 0, "")
        raise PinDirError(f"cannot create {directory}: {e.strerror}{hint}") from None
    if not os.access(directory, os.W_OK):
        raise PinDirError(f"{directory} is not writable (the BPF file system must be mounted read-write)")


def _lock_holder(directory: Path) -> int | None:
    """The pid /proc/locks names for a flock on the directory (None: unknown)."""
    st = directory.stat()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and inode in fields:
                pid = int(fields[fields.index(inode) - 1])
                return pid or None
    return None


def lock_dir(directory: Path) -> int:
    """An fd of `directory` holding an exclusive flock, released when it closes or the process dies."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = _lock_holder(directory)
        raise PinLockedError(f"{directory} is in use by another ttcp"
                             + (f" (pid {pid})" if pid else "")
                             + ": two agents on one filter table would undo each other's changes") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _pinned_fd(path: Path) -> int | None:
    """A fd of the map pinned at `path`, None when nothing is pinned there."""
    try:
        return syscalls.obj_get(path)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


class PinnedTable:
    """The pinned maps of one directory, held (locked) by this process until close().

    open() locks the directory and sorts its pins; hand_over() gives the
    reusable ones to the collection, which creates the rest; commit() then fills
    the new maps from the old ones and pins them.
    """

    def __init__(self, directory: Path, lock_fd: int, specs: Mapping[str, MapSpec]) -> None:
        self.directory = directory
        self._lock_fd: int | None = lock_fd
        self._specs = dict(specs)
        self._reusable: dict[str, int] = {}
        self._resized: dict[str, int] = {}  # old maps whose entries move to new ones
        self.upgraded: set[str] = set()  # those of them with keys of the previous layout
        self.reused: list[str] = []  # handed to the collection as they were
        self._committed = False

    @classmethod
    def open(cls, directory: str | os.PathLike[str], specs: Mapping[str, MapSpec], *,
             reset: bool = False) -> PinnedTable:
        """Lock `directory` (created if missing) and check what is pinned there against `specs`.

        `reset` first removes the pins of `specs` (their filters and counters go).
        """
        path = Path(os.path.abspath(directory))
        check_bpffs(path)
        _make_dir(path)
        pins = cls(path, lock_dir(path), specs)
        try:
            for name in specs:
                _unlink(pins._path(name + STAGING_SUFFIX))  # an interrupted replace; ours, since we hold the lock
            if reset:
                removed = [name for name in specs if _unlink(pins._path(name))]
                if removed:
                    log.info("removed the pinned filter table in %s (%s)", path, ", ".join(removed))
            pins._sort()
        except BaseException:
            pins.close()
            raise
        return pins

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _filter_limit(self) -> int:
        """The filters the new table holds: its smallest map sized by filters (not `groups`)."""
        return min(spec.max_entries for name, spec in self._specs.items() if name != "groups")

    def _sort(self) -> None:
        problems: list[str] = []
        for name, spec in self._specs.items():
            fd = _pinned_fd(self._path(name))
            if fd is None:
                continue
            try:
                info = syscalls.map_info(fd)
            except BpfError:
                syscalls.close(fd)
                problems.append(f"{self._path(name)} is not a map")
                continue
            diffs = differences(MapShape.of(spec), MapShape.of_info(info))
            if not diffs:
                self._reusable[name] = fd
            elif only_size_differs(diffs):
                self._resized[name] = fd
            elif _previous_layout(name, diffs):
                self._resized[name] = fd
                self.upgraded.add(name)
            else:
                syscalls.close(fd)
                problems.append(f"{self._path(name)}: " + ", ".join(map(str, diffs)))
        if problems:
            raise IncompatiblePinError("pinned maps this ttcp cannot use (another program or ttcp "
                                       "version made them): " + "; ".join(problems))
        if self._resized:
            self._prepare_resize()

    def _prepare_resize(self) -> None:
        """Check that the filters fit the new size and move counter slots that would not."""
        old = {**self._reusable, **self._resized}
        limit = self._filter_limit()
        hosts = self._view(HashMap, old.get("hosts"), "hosts")
        nets = self._view(LpmTrie, old.get("nets"), "nets")
        texts_fd = old.get("texts")
        texts = None if texts_fd is None else Array(texts_fd, self._specs["texts"].value_size,
                                                    syscalls.map_info(texts_fd).max_entries, "texts",
                                                    owns_fd=False)
        count = len(held_filters(hosts, nets, texts, self.upgraded))
        if count > limit:
            raise PinnedTableTooBigError(count, limit, self.directory)
        stats_fd = self._resized.get("stats")
        if stats_fd is not None:
            stats = PerCpuArray(stats_fd, self._specs["stats"].value_size,
                                syscalls.map_info(stats_fd).max_entries, "stats", owns_fd=False)
            moved = compact_slots(hosts, nets, stats, texts, self._specs["stats"].max_entries, self.upgraded,
                                  self._group_view(old))
            if moved:
                log.info("moved %d counter slots below %d to fit the smaller table", moved, limit)

    def _group_view(self, old: Mapping[str, int]) -> GroupMaps | None:
        """The pinned groups maps, for a compaction to move counter slots' groups too."""
        groups = self._view(HashMap, old.get("groups"), "groups")
        stats_fd = old.get("group_stats")
        if groups is None or stats_fd is None:
            return None
        return GroupMaps(groups, PerCpuArray(stats_fd, self._specs["group_stats"].value_size,
                                             syscalls.map_info(stats_fd).max_entries, "group_stats", owns_fd=False))

    def _view(self, kind: type[HashMap[bytes, bytes]], fd: int | None, name: str) -> HashMap[bytes, bytes] | None:
        if fd is None:
            return None
        info = syscalls.map_info(fd)
        return kind(fd, RawCodec(info.key_size), RawCodec(info.value_size), info.max_entries, name, owns_fd=False)

    def hand_over(self, collection: Collection) -> None:
        """Give the collection every pinned map it can use as it is (it owns their fds from then on)."""
        while self._reusable:
            name, fd = self._reusable.popitem()
            try:
                collection.reuse_map(name, fd)
            except BaseException:
                syscalls.close(fd)
                raise
            self.reused.append(name)

    def commit(self, fds: Mapping[str, int]) -> None:
        """Pin every map of `fds` that is not pinned yet (the collection created it), after
        copying the entries of the map of another size it replaces (once)."""
        if self._committed:
            return
        done: dict[str, list[str]] = {"reused": list(self.reused), "migrated": [], "new": []}
        for name in self._specs:
            if name in self.reused:
                continue
            old = self._resized.pop(name, None)
            if old is not None:
                try:
                    copy_entries(old, fds[name], name, PREVIOUS_KEYS[name][1] if name in self.upgraded else None)
                finally:
                    syscalls.close(old)
            self._replace_pin(name, fds[name])
            done["new" if old is None else "migrated"].append(name)
        self._committed = True
        log.info("filter table pinned in %s: %s", self.directory,
                 "; ".join(f"{state} {', '.join(sorted(names))}" for state, names in done.items() if names)
                 + (f" (now {self._filter_limit()} entries)" if done["migrated"] else "")
                 + (f" (keys of {', '.join(sorted(self.upgraded))} rewritten for workloads)"
                    if self.upgraded else ""))

    def _replace_pin(self, name: str, fd: int) -> None:
        """Pin under a staging name, then rename over NAME: readers see the old map or the new one."""
        staging = self._path(name + STAGING_SUFFIX)
        syscalls.obj_pin(fd, staging)
        try:
            os.rename(staging, self._path(name))
        except OSError as e:
            _unlink(staging)
            raise PinError(f"cannot rename {staging} to {name}: {e.strerror}") from None

    def close(self) -> None:
        """Release the lock and every fd still held (the pins stay)."""
        for fd in [*self._reusable.values(), *self._resized.values()]:
            syscalls.close(fd)
        self._reusable.clear()
        self._resized.clear()
        lock, self._lock_fd = self._lock_fd, None
        if lock is not None:
            os.close(lock)


def _previous_layout(name: str, diffs: list[Difference]) -> bool:
    """A filter map of the layout before workloads: only its key size (and maybe its
    size) differs, and the key size is the previous one."""
    previous = PREVIOUS_KEYS.get(name)
    return (previous is not None and all(d.field in ("key_size", "max_entries") for d in diffs)
            and any(d.field == "key_size" and d.found == previous[0] for d in diffs))
