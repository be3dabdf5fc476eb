"""Which BPF programs, maps and links exist, and which process holds them.

A process holds a BPF object through an fd whose /proc/PID/fdinfo names its
id; that is how the leak checks tell this test's objects from those of any
other process running ttcp at the same time on the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
from pathlib import Path

from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.maps import RingBuffer

KINDS = ("prog", "map", "link")
_FDINFO_ID = re.compile(r"^(prog|map|link)_id:\s+(\d+)$", re.MULTILINE)
_LISTERS = {"prog": syscalls.prog_ids, "map": syscalls.map_ids, "link": syscalls.link_ids}


def all_ids() -> dict[str, set[int]]:
    return {kind: set(_LISTERS[kind]()) for kind in KINDS}


def held_ids(pid: int) -> dict[str, set[int]]:
    """The BPF objects one process holds through its fds."""
    held: dict[str, set[int]] = {kind: set() for kind in KINDS}
    with contextlib.suppress(OSError):  # the process may be gone
        for info in Path(f"/proc/{pid}/fdinfo").iterdir():
            with contextlib.suppress(OSError):  # an fd closed while we read
                for kind, num in _FDINFO_ID.findall(info.read_text()):
                    held[kind].add(int(num))
    return held


def held_by_others(ours: set[int] | frozenset[int] = frozenset()) -> dict[str, set[int]]:
    """Objects held by any process except this one and the pids in `ours`."""
    skip = {str(os.getpid()), *map(str, ours)}
    held: dict[str, set[int]] = {kind: set() for kind in KINDS}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name not in skip:
            for kind, ids in held_ids(int(proc.name)).items():
                held[kind] |= ids
    return held


def readable(ring: RingBuffer, timeout_s: float) -> bool:
    """Whether the ring's fd polls readable (data pending) within `timeout_s`:
    the kernel's own level-triggered signal, which the agent's loop waits on."""
    poller = select.poll()
    poller.register(ring.fileno(), select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def prog_name(prog_id: int) -> str | None:
    """A program's name, None once it is gone."""
    try:
        fd = syscalls.prog_get_fd_by_id(prog_id)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    try:
        return syscalls.prog_info(fd).name
    finally:
        syscalls.close(fd)
