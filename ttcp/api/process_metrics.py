"""The standard process metrics, as Prometheus' client libraries compute them.

Same sources and arithmetic as client_python's ProcessCollector (and
client_golang's, through procfs), so dashboards and alerts written for any
exporter's process_* series work on ttcp's:

- process_cpu_seconds_total      (utime + stime) / CLK_TCK      stat fields 14, 15
- process_virtual_memory_bytes   vsize                           stat field 23
- process_resident_memory_bytes  rss pages * page size           stat field 24
- process_start_time_seconds     btime + starttime / CLK_TCK     stat field 22, /proc/stat btime
- process_open_fds               entries of /proc/self/fd (the listing's own fd included, as both count)
- process_max_fds                the soft "Max open files" of /proc/self/limits

The parsers are pure (bytes in); ProcessReader is the I/O. Fields are numbered
as proc(5) does; the command name (field 2) is in parentheses and may hold
spaces and ')', so the fields are split after the last ')'. The numbers cover
every thread of ttcp.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from ttcp.errors import FormatError


@dataclass(frozen=True)
class Stat:
    """What /proc/PID/stat gives these metrics."""

    utime_ticks: int
    stime_ticks: int
    starttime_ticks: int
    vsize_bytes: int
    rss_pages: int


def parse_stat(raw: bytes) -> Stat:
    """/proc/PID/stat."""
    end = raw.rfind(b")")
    if end < 0:
        raise FormatError("/proc/PID/stat", "no ')' after the command name")
    rest = raw[end + 1:].split()  # rest[0] is field 3 (state): field n is rest[n - 3]
    if len(rest) < 22:
        raise FormatError("/proc/PID/stat", f"{len(rest) + 2} fields, at least 24 wanted")
    try:
        return Stat(int(rest[11]), int(rest[12]), int(rest[19]), int(rest[20]), int(rest[21]))
    except ValueError as e:
        raise FormatError("/proc/PID/stat", str(e)) from None


def parse_btime(raw: bytes) -> int:
    """/proc/stat: the boot time, in seconds since the epoch."""
    for line in raw.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == b"btime" and words[1].isdigit():
            return int(words[1])
    raise FormatError("/proc/stat", "no btime line")


def parse_max_fds(raw: bytes) -> float:
    """/proc/PID/limits: the soft limit of open files ("unlimited": +Inf, where
    client_python would fail)."""
    head = b"Max open files"
    for line in raw.splitlines():
        if line.startswith(head):
            soft = line[len(head):].split()[:1]
            if soft == [b"unlimited"]:
                return float("inf")
            if soft and soft[0].isdigit():
                return float(soft[0])
    raise FormatError("/proc/PID/limits", "no 'Max open files' line with a number")


@dataclass(frozen=True)
class ProcessMetrics:
    cpu_seconds: float
    virtual_memory_bytes: int
    resident_memory_bytes: int
    start_time_seconds: float
    open_fds: int
    max_fds: float


def compute(stat: Stat, btime: int, max_fds: float, open_fds: int, clk_tck: int, page_size: int) -> ProcessMetrics:
    return ProcessMetrics(cpu_seconds=(stat.utime_ticks + stat.stime_ticks) / clk_tck,
                          virtual_memory_bytes=stat.vsize_bytes,
                          resident_memory_bytes=stat.rss_pages * page_size,
                          start_time_seconds=btime + stat.starttime_ticks / clk_tck,
                          open_fds=open_fds, max_fds=max_fds)


# name, type, help (client_python's words), attribute
FAMILIES = (
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", "cpu_seconds"),
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", "virtual_memory_bytes"),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", "resident_memory_bytes"),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
     "start_time_seconds"),
    ("process_open_fds", "gauge", "Number of open file descriptors.", "open_fds"),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors.", "max_fds"),
)


class ProcessReader:
    """Reads /proc for one process (the I/O edge); the boot time is read once."""

    def __init__(self, proc: Path = Path("/proc"), pid: str = "self") -> None:
        self.dir = proc / pid
        self.btime = parse_btime((proc / "stat").read_bytes())
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self.page_size = resource.getpagesize()

    def read(self) -> ProcessMetrics:
        """Raises OSError or FormatError."""
        stat = parse_stat((self.dir / "stat").read_bytes())
        max_fds = parse_max_fds((self.dir / "limits").read_bytes())
        open_fds = len(os.listdir(self.dir / "fd"))
        return compute(stat, self.btime, max_fds, open_fds, self.clk_tck, self.page_size)
