"""RLIMIT_MEMLOCK, lifted where the kernel still charges BPF memory to it.

Kernels before 5.11 count BPF maps and programs against the process's
RLIMIT_MEMLOCK (later ones charge the memory cgroup). Like libbpf, and
cilium/ebpf's rlimit package, ttcp lifts the limit before it creates maps,
only where a probe says the kernel needs it, and remembers what happened so
that a refused MAP_CREATE can say why.
"""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass

from ttcp import syscalls
from ttcp.kernel import features


@dataclass
class Memlock:
    """What was done about RLIMIT_MEMLOCK, for the error a refused map gets."""

    needed: bool
    raised: bool
    limit: int
    error: str = ""

    def hint(self) -> str:
        """Why MAP_CREATE may say EPERM although the privileges are right."""
        if not self.needed or self.raised:
            return ""
        shown = "unlimited" if self.limit == resource.RLIM_INFINITY else f"{self.limit} bytes"
        return (f"this kernel charges BPF maps to RLIMIT_MEMLOCK (no memcg accounting, Linux < 5.11), "
                f"the limit is {shown} and raising it failed ({self.error}): run with "
                "`ulimit -l unlimited`, grant CAP_SYS_RESOURCE, or in Docker pass --ulimit memlock=-1")


_memlock: Memlock | None = None


def raise_nofile() -> tuple[int, int]:
    """RLIMIT_NOFILE's soft limit up to its hard limit (no privilege needed): ttcp holds a
    pidfd per containerd task and a namespace per followed container besides the API's
    sockets, and a shell's soft limit is often 1024. Returns the soft limit (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # Linux caps it at fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
                hard = int(f.read())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        except (OSError, ValueError):
            return soft, soft
        return soft, hard
    return soft, soft


def ensure_memlock() -> Memlock:
    """Lift RLIMIT_MEMLOCK where the kernel still charges BPF memory to it,
    as libbpf does before it creates maps; once per process."""
    global _memlock
    if _memlock is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        if soft == resource.RLIM_INFINITY or features.memcg_accounting().supported:
            _memlock = Memlock(needed=False, raised=False, limit=soft)
        else:
            try:
                syscalls.set_memlock_unlimited()
                _memlock = Memlock(needed=True, raised=True, limit=resource.RLIM_INFINITY)
            except OSError as e:
                _memlock = Memlock(needed=True, raised=False, limit=soft,
                                   error=os.strerror(e.errno or errno.EPERM))
    return _memlock
