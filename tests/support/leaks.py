"""BPF leak checks: what a test left open in this process, or alive in the kernel.

Based on this process's own file descriptors (what a test forgot to close)
plus BPF objects created meanwhile that are still alive and held by no other
process (e.g. pinned, or leaked through a kernel reference). Objects of other
processes running at the same time are ignored by looking them up in
/proc/*/fdinfo.
"""

from __future__ import annotations

import errno
import os
import time

from tests.support import kernel_objects
from ttcp import syscalls
from ttcp.errors import BpfError

_BPF_LINK_TARGETS = ("anon_inode:bpf-map", "anon_inode:bpf-prog", "anon_inode:bpf_link",
                     "anon_inode:bpf-link", "anon_inode:[perf_event]", "anon_inode:btf")
_GRACE_S = 3.0  # the kernel frees closed objects asynchronously (RCU, workqueues)


def bpf_fds() -> dict[int, str]:
    """This process's fds that refer to BPF objects or perf events: fd -> kind."""
    found: dict[int, str] = {}
    for entry in os.scandir("/proc/self/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # closed while we looked (e.g. the scandir fd itself)
        if target.startswith(_BPF_LINK_TARGETS):
            found[int(entry.name)] = target
    return found


def _describe(kind: str, obj_id: int) -> str | None:
    """A readable name for a leaked object; None if it is gone by now."""
    opener = {"prog": syscalls.prog_get_fd_by_id, "map": syscalls.map_get_fd_by_id,
              "link": syscalls.link_get_fd_by_id}[kind]
    try:
        fd = opener(obj_id)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        return f"{kind} {obj_id} ({errno.errorcode.get(e.errno, e.errno)})"
    try:
        if kind == "prog":
            return f"prog {obj_id} {syscalls.prog_info(fd).name!r}"
        if kind == "map":
            return f"map {obj_id} {syscalls.map_info(fd).name!r}"
        return f"link {obj_id} -> prog {syscalls.link_info(fd).prog_id}"
    finally:
        syscalls.close(fd)


def leaked_objects(before: dict[str, set[int]]) -> list[str]:
    """Objects absent from `before`, still alive after a grace period and not
    held by another process; [] when nothing leaked."""
    deadline = time.monotonic() + _GRACE_S
    while True:
        now = kernel_objects.all_ids()
        new = {k: now[k] - before[k] for k in now}
        if any(new.values()):
            foreign = kernel_objects.held_by_others()
            new = {k: ids - foreign[k] for k, ids in new.items()}
        if not any(new.values()):
            return []
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    described = (_describe(k, i) for k in sorted(new) for i in sorted(new[k]))
    return [d for d in described if d is not None]


def fd_leaks(before: dict[int, str]) -> list[str]:
    """BPF fds open now that were not in `before` (or now refer to something else)."""
    return [f"fd {fd} -> {kind}" for fd, kind in sorted(bpf_fds().items()) if before.get(fd) != kind]
