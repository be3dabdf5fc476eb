"""The kernel's BPF statistics: each program's run time and run count.

The kernel counts `run_time_ns` and `run_cnt` of every BPF program (bpf_prog_info)
only while its statistics are on: while someone holds a BPF_ENABLE_STATS fd
(Linux 5.8; needs CAP_SYS_ADMIN, CAP_BPF is not enough), or while the sysctl
kernel.bpf_stats_enabled is 1. Both are one switch for the whole machine and
cost every BPF program on it (two clock reads per run, tens of ns), not only
ttcp's; the fd turns them off when it closes, however ttcp ends. The sysctl
reads back only its own setting: another process's fd does not show there.
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path

from ttcp import syscalls
from ttcp.errors import BpfError, TtcpError

SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
REFUSED_HINT = ("turning the kernel's BPF statistics on (BPF_ENABLE_STATS) needs CAP_SYS_ADMIN, which "
                "CAP_BPF does not replace: grant it, or turn them on for the node (sysctl -w "
                "kernel.bpf_stats_enabled=1) and run ttcp without --bpf-stats, which reports them "
                "whenever they are on")


def sysctl_on(path: Path = SYSCTL) -> bool:
    """kernel.bpf_stats_enabled is 1 (False where it cannot be read)."""
    with contextlib.suppress(OSError):
        return path.read_text().strip() == "1"
    return False


class BpfStats:
    """The statistics as ttcp sees them, and the BPF_ENABLE_STATS fd it may hold."""

    def __init__(self, fd: int = -1) -> None:
        self.fd = fd

    @classmethod
    def enable(cls) -> BpfStats:
        """Hold the statistics on until close(); TtcpError saying what to do when refused."""
        try:
            return cls(syscalls.enable_stats())
        except BpfError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                raise TtcpError(f"--bpf-stats: {e.step}: {errno.errorcode[e.errno]}: {REFUSED_HINT}") from None
            raise

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def enabled(self) -> bool:
        """On, as far as ttcp can tell: its own fd, or the sysctl."""
        return self.held or sysctl_on()

    def close(self) -> None:
        if self.fd >= 0:
            syscalls.close(self.fd)
            self.fd = -1
