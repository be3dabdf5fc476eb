"""The tcprtt program, loaded and attached, with its maps opened.

This is where ttcp's own object meets the generic loader: it picks the
attach mode (fentry, then tp_btf, then the classic tracepoint), says why it
skipped the earlier ones, and exposes the three things the rest of ttcp
uses: the filter table, the ring buffer and the drop count.
"""

from __future__ import annotations

import errno
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from . import features, syscalls
from .addresses import KEY_SIZE
from .attach import Link, attach
from .elf_loader import VMLINUX_BTF, ObjectLoader
from .errors import BpfError, TtcpError
from .maps import HashMap, PerCpuArray, RawCodec, RingBuffer, StructCodec

MODES = ("fentry", "tp_btf", "tracepoint")
PROGRAM_OF_MODE = {"fentry": "tcprtt_fentry", "tp_btf": "tcprtt_tp_btf", "tracepoint": "tcprtt_tracepoint"}
DEFAULT_MAX_FILTERS = 1024
DEFAULT_RINGBUF_SIZE = 2 << 20  # ~26,000 events: over a second of the busiest loopback traffic
FILTER_STATS = StructCodec("=QQ")  # struct filter_stats: matches, last_match_ns


def default_object() -> Path:
    """The precompiled object shipped inside the package."""
    return Path(__file__).with_name("data") / "tcprtt.bpf.o"


def check_ringbuf_size(size: int) -> int:
    """A ring size the kernel accepts: a power of two, at least one page."""
    page = 4096
    if size < page or size & (size - 1):
        raise TtcpError(f"ring buffer size {size} must be a power of two and at least {page} bytes")
    return size


@dataclass
class AttachReport:
    """Which mode is in use and why earlier ones were skipped."""

    mode: str = ""
    method: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Tracer:
    """Owns the loader, the link and the map views; close() releases all."""

    def __init__(
        self,
        obj_path: str | Path | None = None,
        *,
        max_filters: int = DEFAULT_MAX_FILTERS,
        ringbuf_size: int = DEFAULT_RINGBUF_SIZE,
        btf_path: Path = VMLINUX_BTF,
    ) -> None:
        if max_filters < 1:
            raise TtcpError(f"--max-filters must be at least 1 (got {max_filters})")
        self.loader = ObjectLoader(str(obj_path or default_object()), btf_path=btf_path)
        self.loader.set_max_entries("filter", max_filters)
        self.loader.set_max_entries("events", check_ringbuf_size(ringbuf_size))
        self.link: Link | None = None
        self.report = AttachReport()
        self.filters: HashMap[bytes, tuple[int, int]] | None = None
        self.ring: RingBuffer | None = None
        self._drops: PerCpuArray | None = None
        self._prog_fd = -1

    # ---- set-up ----

    def open_maps(self) -> None:
        """Create the maps so filters can be loaded before anything attaches."""
        fds = self.loader.create_maps()
        spec = self.loader.maps
        self.filters = HashMap(fds["filter"], RawCodec(KEY_SIZE), FILTER_STATS,
                               spec["filter"].max_entries, "filter", owns_fd=False)
        self._drops = PerCpuArray(fds["drops"], 8, 1, "drops", owns_fd=False)
        self.ring = RingBuffer(fds["events"], spec["events"].max_entries)

    def add_filters(self, keys: Iterable[bytes]) -> None:
        assert self.filters is not None, "open_maps() first"
        for key in keys:
            if self.filters.get(key) is None:
                self.filters.put(key, (0, 0), only_new=True)

    def attach(self, mode: str = "auto", log: Callable[[str], None] | None = None) -> AttachReport:
        """Load and attach one entry point; `auto` falls back fentry → tp_btf → tracepoint."""
        say = log or (lambda msg: print(msg, file=sys.stderr))
        if self.filters is None:
            self.open_maps()
        candidates = MODES if mode == "auto" else (mode,)
        if mode != "auto" and mode not in MODES:
            raise TtcpError(f"unknown attach mode {mode!r} (choose auto, {', '.join(MODES)})")
        last: BpfError | None = None
        for m in candidates:
            try:
                self._attach_mode(m)
                self.report.mode = m
                break
            except BpfError as e:
                last = e
                reason = _why(e)
                self.report.skipped.append((m, reason))
                if mode == "auto" and m != candidates[-1]:
                    say(f"ttcp: {m} unavailable ({reason}); trying the next mode")
        else:
            assert last is not None
            raise last
        self.loader.release_target_btf()
        skipped = ", ".join(m for m, _ in self.report.skipped)
        say(f"ttcp: attached via {self.report.mode} ({self.report.method})"
            + (f" after skipping {skipped}" if skipped else ""))
        return self.report

    def _attach_mode(self, mode: str) -> None:
        name = PROGRAM_OF_MODE[mode]
        prog = self.loader.load_program(name)
        try:
            self.link = attach(prog.kind, prog.fd, prog.attach_btf_id)
        except BaseException:
            self.loader.unload_program(name)
            raise
        self._prog_fd = prog.fd
        self.report.method = self.link.method

    # ---- running ----

    def drops(self) -> int:
        """Events lost: ring-buffer reservation failures plus runs the kernel skipped."""
        lost = self._drops.sum_u64(0) if self._drops is not None else 0
        return lost + self.recursion_misses()

    def recursion_misses(self) -> int:
        if self._prog_fd < 0 or not features.recursion_misses().supported:
            return 0
        return syscalls.prog_info(self._prog_fd).recursion_misses

    def prog_fd(self) -> int:
        return self._prog_fd

    def monotonic_to_wall(self, mono_ns: int) -> float:
        """Unix time of a bpf_ktime_get_ns() stamp (0 stays 0: never matched)."""
        if not mono_ns:
            return 0.0
        return (time.time_ns() - time.monotonic_ns() + mono_ns) / 1e9

    def close(self) -> None:
        """Detach first (no new events), then unmap and close every fd."""
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self._prog_fd = -1
        self.filters = None
        self._drops = None
        self.loader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _why(e: BpfError) -> str:
    if e.errno == errno.EPERM and not e.log_tail():
        return f"{e.step}: EPERM (this kernel refuses it, e.g. ftrace locked down or no CAP_BPF/CAP_PERFMON)"
    first = e.log_tail(1)
    return f"{e.step}: {errno.errorcode.get(e.errno, e.errno)}" + (f" ({first})" if first else "")
