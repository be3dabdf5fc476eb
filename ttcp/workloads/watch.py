"""Following cgroup paths as cgroups come and go, with inotify (no polling).

A cgroup filter names a path; the cgroup there may not exist yet, or be
removed and created again (a service or container restart: a new id each
time). For each path, every existing ancestor directory below the hierarchy's
root is watched for children created, removed or moved: the parent's event
says when the path's cgroup appears or goes, and an ancestor's when a whole
branch does. A watch on a removed cgroupfs directory gets no event of its own
(kernfs, measured), which is why the ancestors are watched rather than the
directory itself; a watch whose directory went is removed by hand (it would
leak otherwise), and a directory created again gets a new one. Arming walks
down from the root and watches each level before looking at the next, so a
directory made meanwhile is either seen by the walk or reported by the watch.
The kernel queues an event before mkdir/rmdir returns; the agent reads them
as soon as the descriptor is readable.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ttcp import syscalls
from ttcp.kernel.uapi import Inotify

WATCH_MASK = (Inotify.CREATE | Inotify.DELETE | Inotify.MOVED_FROM | Inotify.MOVED_TO
              | Inotify.DELETE_SELF | Inotify.MOVE_SELF | Inotify.ONLYDIR)


def ancestors(path: str) -> list[str]:
    """The directories above a canonical path, from the root down ("/a/b" -> ["/", "/a"])."""
    if path == "/":
        return []
    parts = path.strip("/").split("/")
    return ["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def child_below(directory: str, path: str) -> str | None:
    """The name of the entry of `directory` on the way to `path` (None: not on its way)."""
    prefix = "/" if directory == "/" else directory + "/"
    if not path.startswith(prefix) or path == directory:
        return None
    return path[len(prefix):].split("/", 1)[0]


@dataclass
class _Path:
    uses: int
    id: int | None = None
    dirs: list[str] = field(default_factory=list)  # the ancestors it watches now


class PathWatcher:
    """Cgroup paths under `root`, each with its id now (None: nothing there)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.fd = syscalls.inotify_init()
        self._paths: dict[str, _Path] = {}
        self._dirs: dict[str, tuple[int, int]] = {}  # directory -> (wd, inode)
        self._by_wd: dict[int, str] = {}
        self._dir_uses: Counter[str] = Counter()

    def fileno(self) -> int:
        return self.fd

    def watch(self, path: str) -> int | None:
        """Follow `path` (counted: each watch() wants an unwatch()); its id now."""
        held = self._paths.get(path)
        if held is not None:
            held.uses += 1
            return held.id
        held = self._paths[path] = _Path(1)
        self._arm(path)
        return held.id

    def unwatch(self, path: str) -> None:
        held = self._paths.get(path)
        if held is None:
            return
        held.uses -= 1
        if held.uses <= 0:
            del self._paths[path]
            self._drop_dirs(held.dirs)

    def id_of(self, path: str) -> int | None:
        held = self._paths.get(path)
        return None if held is None else held.id

    def process(self) -> list[tuple[str, int | None]]:
        """Read the queued events and follow them: (path, id now) of each path whose id changed."""
        touched: dict[str, None] = {}
        for wd, mask, name in syscalls.inotify_read(self.fd):
            if mask & Inotify.Q_OVERFLOW:
                touched.update(dict.fromkeys(self._paths))
                continue
            directory = self._by_wd.get(wd)
            if directory is None:
                continue  # a watch removed meanwhile
            if mask & (Inotify.IGNORED | Inotify.DELETE_SELF | Inotify.MOVE_SELF):
                touched.update(dict.fromkeys(p for p, held in self._paths.items() if directory in held.dirs))
                continue
            touched.update(dict.fromkeys(p for p in self._paths if child_below(directory, p) == name))
        changed = []
        for path in touched:
            held = self._paths.get(path)
            if held is not None:
                before = held.id
                self._arm(path)
                if held.id != before:
                    changed.append((path, held.id))
        return changed

    def _arm(self, path: str) -> None:
        """Watch every existing ancestor of `path`, root first, and read its id."""
        held = self._paths[path]
        dirs: list[str] = []
        for directory in ancestors(path):
            if not self._ensure(directory):
                break
            dirs.append(directory)
        self._use_dirs(dirs)
        self._drop_dirs(held.dirs)
        held.dirs = dirs
        held.id = self._id(path)

    def _id(self, path: str) -> int | None:
        if path == "/":
            return os.stat(self.root).st_ino
        try:
            st = os.stat(self.root / path.lstrip("/"))
        except OSError:
            return None
        return st.st_ino if os.path.isdir(self.root / path.lstrip("/")) else None

    def _ensure(self, directory: str) -> bool:
        """Watch `directory` (again, if it was created anew); False if it does not exist."""
        full = self.root / directory.lstrip("/")
        try:
            inode = os.stat(full).st_ino
            wd = syscalls.inotify_add_watch(self.fd, full, WATCH_MASK)
        except OSError:
            self._forget(directory)
            return False
        known = self._dirs.get(directory)
        if known is not None and known != (wd, inode):
            self._forget(directory)
        self._dirs[directory] = (wd, inode)
        self._by_wd[wd] = directory
        return True

    def _forget(self, directory: str) -> None:
        """The directory went (or came back as another): its watch goes."""
        known = self._dirs.pop(directory, None)
        if known is not None:
            self._by_wd.pop(known[0], None)
            syscalls.inotify_rm_watch(self.fd, known[0])

    def _use_dirs(self, dirs: list[str]) -> None:
        self._dir_uses.update(dirs)

    def _drop_dirs(self, dirs: list[str]) -> None:
        for directory in dirs:
            self._dir_uses[directory] -= 1
            if self._dir_uses[directory] <= 0:
                del self._dir_uses[directory]
                self._forget(directory)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
