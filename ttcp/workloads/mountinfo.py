"""Where cgroup v2 is mounted, from /proc/self/mountinfo (pure).

A cgroup filter names a path as /proc/PID/cgroup's `0::` line shows it, which
is relative to the cgroup2 hierarchy's root: /sys/fs/cgroup on a unified host,
/sys/fs/cgroup/unified on a hybrid one (this project's CI machine), elsewhere
if the administrator chose. Nothing is hard-coded: the mount table says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes space, tab, newline, backslash as \ooo


@dataclass(frozen=True)
class Mount:
    """One mountinfo line's parts that matter here."""

    root: str  # the part of the file system mounted there ("/": all of it)
    mount_point: str
    fstype: str


def unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Mount]:
    """Every mount of a mountinfo text; lines that are not mountinfo lines are skipped."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or not rest:
            continue
        mounts.append(Mount(unescape(fields[3]), unescape(fields[4]), rest[0]))
    return mounts


def cgroup2_mount(mounts: list[Mount]) -> Mount | None:
    """The first cgroup2 mount of the whole hierarchy (root "/"), else the first of any."""
    found = [m for m in mounts if m.fstype == "cgroup2"]
    return next((m for m in found if m.root == "/"), found[0] if found else None)
