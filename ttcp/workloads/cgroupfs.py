"""The cgroup2 hierarchy: a cgroup path's id, and a cgroup id's path.

A cgroup's id (what the kernel's sk->sk_cgrp_data gives the BPF program) is
the inode number of its directory on the cgroup2 mount. The other way, an id
back to a path (for the `cgroup` field of events), open_by_handle_at(2) finds
the kernfs node by its id, in memory, and readlink of /proc/self/fd/N spells
its path: microseconds, never a wait on anything else, so the event path may
do it on a miss. It needs CAP_DAC_READ_SEARCH; without it paths are unknown
(null), ids are still right.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from pathlib import Path

from ttcp import syscalls
from ttcp.kernel.uapi import FidType
from ttcp.workloads import mountinfo

log = logging.getLogger("ttcp")

MOUNTINFO = Path("/proc/self/mountinfo")
ROOT_CGROUP_ID = 1  # the root cgroup's kernfs id: the inode of the hierarchy's top directory
NO_CGROUP2 = ("no cgroup2 mount on this host (cgroup v1 only): cgroup filters need cgroup v2 "
              "(netns filters work everywhere)")


def below_root(mount: str, root: str) -> str:
    return (f"ttcp sees cgroup2 from inside a cgroup namespace (the mount at {mount} shows {root}, not the "
            f"hierarchy's root): the paths it would resolve are not the host's; run ttcp in the host's cgroup "
            f"namespace (docker run --cgroupns=host)")


class CgroupTree:
    """The cgroup2 hierarchy at `root` (a directory held open)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    @classmethod
    def find(cls, mountinfo_text: str | None = None) -> CgroupTree | str:
        """The host's cgroup2 hierarchy from the mount table, or why there is none to use."""
        try:
            text = MOUNTINFO.read_text() if mountinfo_text is None else mountinfo_text
        except OSError as e:
            return f"{MOUNTINFO}: {e.strerror}"
        mount = mountinfo.cgroup2_mount(mountinfo.parse(text))
        if mount is None:
            return NO_CGROUP2
        try:
            top = os.stat(mount.mount_point)
        except OSError as e:
            return f"the cgroup2 mount {mount.mount_point}: {e.strerror}"
        if mount.root != "/" or top.st_ino != ROOT_CGROUP_ID:
            return below_root(mount.mount_point, mount.root if mount.root != "/" else f"cgroup {top.st_ino}")
        try:
            return cls(mount.mount_point)
        except OSError as e:
            return f"the cgroup2 mount {mount.mount_point}: {e.strerror}"

    def dir_of(self, path: str) -> Path:
        """The directory of a cgroup path (canonical, as a filter holds it)."""
        return self.root / path.lstrip("/")

    def id_of(self, path: str) -> int | None:
        """The cgroup's id, None while no cgroup is there."""
        try:
            st = os.stat(self.dir_of(path))
        except OSError:
            return None
        return st.st_ino if stat.S_ISDIR(st.st_mode) else None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CgroupPaths:
    """cgroup id -> path on the hierarchy, cached (at most `limit` ids; emptied when
    full). A cgroup removed since answers None, and so does every id once the
    kernel refused the lookup for want of privilege (said once)."""

    def __init__(self, tree: CgroupTree | None, limit: int = 4096) -> None:
        self.tree = tree
        self.limit = limit
        self._known: dict[int, str | None] = {}
        self._allowed = tree is not None

    def remember(self, cgroup_id: int, path: str) -> None:
        """A path the caller knows (a filter's cgroup): no lookup needed for it."""
        self._room()
        self._known[cgroup_id] = path

    def __call__(self, cgroup_id: int) -> str | None:
        if not cgroup_id:
            return None
        try:
            return self._known[cgroup_id]
        except KeyError:
            pass
        self._room()
        path = self._known[cgroup_id] = self._lookup(cgroup_id)
        return path

    def _room(self) -> None:
        if len(self._known) >= self.limit:
            self._known.clear()

    def _lookup(self, cgroup_id: int) -> str | None:
        if not self._allowed or self.tree is None:
            return None
        try:
            fd = syscalls.open_by_handle(self.tree.fd, FidType.KERNFS, struct.pack("=Q", cgroup_id),
                                         os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
                self._allowed = False
                log.warning("cgroup paths of events are unknown: open_by_handle_at is refused (%s; it needs "
                            "CAP_DAC_READ_SEARCH)", os.strerror(e.errno or 0))
            return None  # ESTALE: a cgroup removed since
        try:
            full = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        root = str(self.tree.root).rstrip("/")
        if full == root:
            return "/"
        return full[len(root):] if full.startswith(root + "/") else None
