"""--filters-file at run time: the file read, each new good version applied to the
table, and the watch that says when to read it again (the I/O around
ttcp.rtt.filters_file, which decides).

The watch is inotify on the file's directory, not on the file: Kubernetes
updates a mounted ConfigMap by writing a new directory and swapping the
`..data` symlink the file points through (one rename), which a watch on the
file itself would never see; an editor's save, a `mv` into place, a file
deleted and created again all show as events in the directory. Any event
that may have changed what the path reads (a rename, a closed writer, a
deletion, a new symlink) asks for a read; a read whose content has the digest
already applied changes nothing. A regular file being created is not read
until its writer closes it, so a half-written file is never seen.

A version that cannot be applied leaves the last good one in force: one
stderr line names the file, the line and the reason (once per bad version),
`errors_total` grows, and GET /filters shows the error until a good version
(or the good one again) is read.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ttcp import syscalls
from ttcp.errors import TtcpError
from ttcp.kernel.uapi import Inotify
from ttcp.rtt import filters_file
from ttcp.rtt.filter_table import FilterTable
from ttcp.rtt.filters_file import FiltersFileError, Problem, Status, Version
from ttcp.rtt.table_rules import Origin, SelectorHeldError

log = logging.getLogger("ttcp")

WATCHED = (Inotify.CLOSE_WRITE | Inotify.MOVED_TO | Inotify.MOVED_FROM | Inotify.CREATE | Inotify.DELETE
           | Inotify.ATTRIB | Inotify.DELETE_SELF | Inotify.MOVE_SELF | Inotify.ONLYDIR)
_GONE = Inotify.DELETE_SELF | Inotify.MOVE_SELF | Inotify.IGNORED
SETTLE_S = 0.1  # events within this long of the first are one change (kubelet's swap is several)


class FiltersFile:
    """One filters file kept applied to one table."""

    def __init__(self, path: Path, table: FilterTable, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.table = table
        self.wall = wall
        self.errors_total = 0  # versions refused (each bad version once)
        self._applied: Version | None = None
        self._applied_at: float | None = None
        self._problem: tuple[str, Problem] | None = None  # (what was read, why it was refused)
        self.watch: DirectoryWatch | None = None

    @property
    def reload_ok(self) -> bool:
        """Whether the file as it is now is the version in force."""
        return self._problem is None

    def status(self) -> Status:
        applied = self._applied
        return Status(str(self.path), applied.digest if applied else None, self._applied_at,
                      len(applied.filters) if applied else 0, self._problem[1] if self._problem else None)

    def start(self, watch: bool = True) -> None:
        """The first read, before the program attaches, with the directory watched from
        just before it (a change meanwhile is seen): a file that is missing or bad is
        an error at start (it is configuration, like --filter)."""
        if watch:
            self.watch = DirectoryWatch(self.path)
        try:
            self._apply(filters_file.parse(self._read()))
        except FiltersFileError as e:
            self.close()
            raise TtcpError(f"--filters-file {self.path}: {e}") from None

    def changed(self) -> bool:
        """Drain the watch's events: True if the file should be read again."""
        return self.watch is not None and self.watch.due()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def reload(self) -> bool:
        """Read the file again; apply it if it changed. False when it was refused."""
        try:
            raw = self._read()
        except FiltersFileError as e:
            return self._refuse(e.message, e)
        seen = filters_file.digest(raw)
        try:
            version = filters_file.parse(raw)
            if self._applied is None or version.digest != self._applied.digest:
                self._apply(version)
        except FiltersFileError as e:
            return self._refuse(seen, e)
        self._problem = None
        return True

    def lost_watch(self) -> bool:
        """True when the directory went away; then it says so (once) and the filters in
        force stay."""
        if self.watch is None or not self.watch.gone:
            return False
        self._refuse("watch", FiltersFileError(None, f"the directory {self.path.parent} was removed or moved: "
                                                     "changes are no longer seen (restart ttcp)"))
        return True

    # ---- the file ----

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(filters_file.MAX_BYTES + 1)
        except FileNotFoundError:
            raise FiltersFileError(None, "the file is missing (deleted, or a dangling symlink)") from None
        except OSError as e:
            raise FiltersFileError(None, f"cannot read it: {e.strerror or e}") from None
        return raw

    def _refuse(self, seen: str, e: FiltersFileError) -> bool:
        """Keep what is in force; say why once per thing read (a digest, or the problem)."""
        if self._problem is not None and self._problem[0] == seen:
            return False
        self._problem = (seen, Problem(e.line, e.message, self.wall()))
        self.errors_total += 1
        kept = f"version {self._applied.digest}" if self._applied else "no filters from it"
        where = f" line {e.line}" if e.line is not None else ""
        log.warning("filters file %s%s: %s; keeping the last good one (%s)", self.path, where, e.message, kept)
        return False

    def _apply(self, version: Version) -> None:
        """The diff from the table to `version`, all of it or (FiltersFileError) none."""
        held = {f: origin for f in self.table.filters() if (origin := self.table.origin(f)) is not None}
        step = filters_file.plan(version.filters, held)
        if len(held) + step.growth > self.table.max_entries:
            api = sum(origin is not Origin.FILE for origin in held.values())
            raise FiltersFileError(None, f"its {len(version.filters)} filters and the {api} the API added do "
                                         f"not fit in the table of {self.table.max_entries} (--max-filters)")
        if step.remove:
            self.table.remove(step.remove)
        try:
            self.table.add(step.add, Origin.FILE)
        except TtcpError as e:
            self.table.add(step.remove, Origin.FILE)  # back as they were (their counters from zero)
            why = str(e) if isinstance(e, SelectorHeldError) else f"the kernel refused a filter: {e}"
            raise FiltersFileError(None, why) from None
        self.table.set_origin(step.claim, Origin.FILE)
        self._applied, self._applied_at = version, self.wall()


class DirectoryWatch:
    """inotify on the directory that holds the filters file; `due()` says whether its
    events since the last call may have changed what the file reads."""

    def __init__(self, path: Path) -> None:
        self.dir = path.parent
        self.fd = syscalls.inotify_init()
        try:
            syscalls.inotify_add_watch(self.fd, self.dir, WATCHED)
        except OSError as e:
            os.close(self.fd)
            raise TtcpError(f"--filters-file {path}: cannot watch {self.dir}: {e.strerror or e}") from None
        self.gone = False

    def fileno(self) -> int:
        return self.fd

    def due(self) -> bool:
        """Drain the events; True if the file should be read again."""
        due = False
        for event in syscalls.inotify_read(self.fd):
            if event.mask & _GONE:
                self.gone = True
            due = due or _may_change(event.mask, self.dir / event.name)
        return due

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _may_change(mask: Inotify, entry: Path) -> bool:
    """Every event but a regular file's creation: that one is read once its writer
    closes it (CLOSE_WRITE follows)."""
    if not mask & Inotify.CREATE:
        return True
    try:
        return not stat.S_ISREG(entry.lstat().st_mode)
    except OSError:
        return True  # gone already
