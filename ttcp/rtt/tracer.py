"""The tcprtt program, loaded and attached, with its maps opened.

This is where ttcp's own object meets the generic loader: it sizes the
object's maps (ttcp.obj.spec), loads it (ttcp.elf_loader.Collection), picks the
attach mode (fentry, then tp_btf, then the classic tracepoint), says why it
skipped the earlier ones, switches live RTT sampling on and off (its own
three hooks, tried in the same order), and exposes what the rest of ttcp
uses: the filter table, the ring buffer and the drop count.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from ttcp import syscalls
from ttcp.elf_loader import Collection
from ttcp.errors import BpfError, TtcpError
from ttcp.kernel import features, lru
from ttcp.kernel.attach import Link, attach
from ttcp.kernel.btf import VMLINUX_BTF
from ttcp.maps import Array, HashMap, LpmTrie, PerCpuArray, RawCodec, RingBuffer
from ttcp.obj.btf import KIND_STRUCT, Composite
from ttcp.obj.spec import CollectionSpec
from ttcp.rtt.filter_table import GroupMaps, KernelFilterTable, WorkloadResolver
from ttcp.rtt.filters import Filter
from ttcp.rtt.groups import DEFAULT_MAX_GROUPS
from ttcp.rtt.pinning import PinnedTable

log = logging.getLogger("ttcp")

MODES = ("fentry", "tp_btf", "tracepoint")
PROGRAM_OF_MODE = {"fentry": "tcprtt_fentry", "tp_btf": "tcprtt_tp_btf", "tracepoint": "tcprtt_tracepoint"}
SAMPLER_OF_MODE = {"fentry": "tcprtt_sample_fentry", "tp_btf": "tcprtt_sample_tp_btf",
                   "tracepoint": "tcprtt_sample_tracepoint"}
HOOK_OF_SAMPLER = {"fentry": "fentry/tcp_rcv_established", "tp_btf": "tp_btf/tcp_probe",
                   "tracepoint": "tracepoint tcp/tcp_probe"}
TABLE_MAPS = ("hosts", "nets", "stats", "texts", "cgroups", "netns", "group_stats")  # sized by max_filters
# The table --pin keeps (ttcp.rtt.pinning): the filters, their counters and their groups.
PINNED_MAPS = ("hosts", "nets", "stats", "texts", "groups", "group_stats")
DEFAULT_MAX_FILTERS = 1024
DEFAULT_RINGBUF_SIZE = 2 << 20  # ~26,000 events: over a second of the busiest loopback traffic

Say = Callable[[str], None]


def default_object() -> Path:
    """The precompiled object shipped inside the package."""
    return Path(__file__).parent.parent / "data" / "tcprtt.bpf.o"


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


@dataclass
class _Attached:
    program: str
    link: Link


class Tracer:
    """Owns the collection, the links and the map views; close() releases all."""

    def __init__(
        self,
        obj_path: str | Path | None = None,
        *,
        max_filters: int = DEFAULT_MAX_FILTERS,
        max_groups: int = DEFAULT_MAX_GROUPS,
        ringbuf_size: int = DEFAULT_RINGBUF_SIZE,
        btf_path: Path = VMLINUX_BTF,
        pin_dir: Path | None = None,
        pin_reset: bool = False,
        resolver: WorkloadResolver | None = None,
    ) -> None:
        """`pin_dir`: keep the filter table's maps pinned there (ttcp.rtt.pinning), reusing
        what an earlier run left; `pin_reset` drops that first. `resolver` resolves the
        workload parts of filters (ttcp.workloads); without one, the table takes none.
        `max_groups`: the groups of every filter with a breakdown together that the kernel's
        LRU holds before it evicts one (its map has room for each CPU's batch of free
        entries too: ttcp.kernel.lru)."""
        if max_filters < 1:
            raise TtcpError(f"max_filters must be at least 1 (got {max_filters})")
        if max_groups < 1:
            raise TtcpError(f"max_groups must be at least 1 (got {max_groups})")
        spec = CollectionSpec(str(obj_path or default_object()))
        for name in TABLE_MAPS:
            spec.set_max_entries(name, max_filters)
        spec.set_max_entries("groups", lru.entries_to_hold(max_groups))
        self.max_groups = max_groups
        spec.set_max_entries("events", check_ringbuf_size(ringbuf_size))
        self.collection = Collection(spec, btf_path=btf_path)
        self.report = AttachReport()
        self.sampling = AttachReport()
        self.sampling_workloads = False  # whether the sampler matches filters with a workload
        self.table: KernelFilterTable | None = None
        self.ring: RingBuffer | None = None
        self._drops: PerCpuArray | None = None
        self._main: _Attached | None = None
        self._sampler: _Attached | None = None
        self._pin_dir, self._pin_reset = pin_dir, pin_reset
        self.pins: PinnedTable | None = None
        self.resolver = resolver

    # ---- set-up ----

    def open_maps(self) -> KernelFilterTable:
        """Create the maps so filters can be loaded before anything attaches; with a pin
        directory, the filter table's maps are those pinned there (reused, or migrated to
        this size), and new ones get pinned."""
        if self.table is not None:
            return self.table
        if self._pin_dir is not None and self.pins is None:
            self.pins = PinnedTable.open(self._pin_dir, {n: self.collection.spec.maps[n] for n in PINNED_MAPS},
                                         reset=self._pin_reset)
            self.pins.hand_over(self.collection)
        fds = self.collection.create_maps()
        if self.pins is not None:
            self.pins.commit(fds)
        spec = self.collection.spec.maps
        hosts: HashMap[bytes, bytes] = HashMap(fds["hosts"], RawCodec(spec["hosts"].key_size),
                                               RawCodec(spec["hosts"].value_size),
                                               spec["hosts"].max_entries, "hosts", owns_fd=False)
        nets: LpmTrie[bytes, bytes] = LpmTrie(fds["nets"], RawCodec(spec["nets"].key_size),
                                              RawCodec(spec["nets"].value_size),
                                              spec["nets"].max_entries, "nets", owns_fd=False)
        stats = PerCpuArray(fds["stats"], spec["stats"].value_size, spec["stats"].max_entries, "stats",
                            owns_fd=False)
        config = Array(fds[".bss"], spec[".bss"].value_size, 1, ".bss", owns_fd=False)
        texts = Array(fds["texts"], spec["texts"].value_size, spec["texts"].max_entries, "texts", owns_fd=False)
        workloads: dict[str, HashMap[bytes, bytes]] = {
            name: HashMap(fds[name], RawCodec(spec[name].key_size), RawCodec(spec[name].value_size),
                          spec[name].max_entries, name, owns_fd=False) for name in ("cgroups", "netns")}
        groups = GroupMaps(
            HashMap(fds["groups"], RawCodec(spec["groups"].key_size), RawCodec(spec["groups"].value_size),
                    spec["groups"].max_entries, "groups", owns_fd=False),
            PerCpuArray(fds["group_stats"], spec["group_stats"].value_size, spec["group_stats"].max_entries,
                        "group_stats", owns_fd=False), self.max_groups)
        self.table = KernelFilterTable(hosts, nets, stats, config, texts, workloads, self.resolver, groups)
        self._drops = PerCpuArray(fds["drops"], 8, 1, "drops", owns_fd=False)
        self.ring = RingBuffer(fds["events"], spec["events"].max_entries)
        return self.table

    def add_filters(self, filters: Iterable[Filter]) -> None:
        self.open_maps().add(list(filters))

    def attach(self, mode: str = "auto", log: Say | None = None) -> AttachReport:
        """Load and attach the connection-end program; `auto` falls back fentry → tp_btf → tracepoint."""
        self.open_maps()
        self._main = self._attach_first(PROGRAM_OF_MODE, mode, self.report, log or _info, "")
        return self.report

    def enable_sampling(self, mode: str = "auto", log: Say | None = None) -> AttachReport:
        """Attach the live-sampling program (idempotent): every RTT measurement of an
        established connection a filter selects feeds that filter's second histogram."""
        if self._sampler is None:
            self.open_maps()
            self.sampling = AttachReport()
            self._sampler = self._attach_first(SAMPLER_OF_MODE, mode, self.sampling, log or _info,
                                               "live sampling ")
            self.sampling_workloads = self.sampling.mode != "tracepoint" or self._tcp_probe_has_socket()
        return self.sampling

    def _tcp_probe_has_socket(self) -> bool:
        """Whether the classic tcp/tcp_probe record carries the socket (skaddr, 6.9+): the
        tracepoint sampler then matches workloads; before, filters without one only."""
        btf = self.collection.target_btf
        records = [btf.type(tid) for tid in btf.ids_by_name("trace_event_raw_tcp_probe", KIND_STRUCT)]
        return any(m.name == "skaddr" for t in records if isinstance(t, Composite) for m in t.members)

    def disable_sampling(self) -> None:
        """Detach and unload the sampling program; histograms keep what they have."""
        attached, self._sampler = self._sampler, None
        if attached is not None:
            attached.link.close()
            self.collection.unload_program(attached.program)
            self.sampling = AttachReport()
            self.sampling_workloads = False

    @property
    def sampling_enabled(self) -> bool:
        return self._sampler is not None

    def _attach_first(self, programs: dict[str, str], mode: str, report: AttachReport, say: Say,
                      what: str) -> _Attached:
        if mode != "auto" and mode not in MODES:
            raise TtcpError(f"unknown attach mode {mode!r} (choose auto, {', '.join(MODES)})")
        candidates = MODES if mode == "auto" else (mode,)
        last: BpfError | None = None
        for m in candidates:
            refused = self._fentry_refused(programs[m]) if mode == "auto" and m == "fentry" else ""
            if refused:
                report.skipped.append((m, refused))
                say(f"{what}{m} unavailable ({refused}); trying the next mode")
                continue
            try:
                attached = self._attach_mode(programs[m])
            except BpfError as e:
                last = e
                reason = _why(e)
                report.skipped.append((m, reason))
                if mode == "auto" and m != candidates[-1]:
                    say(f"{what}{m} unavailable ({reason}); trying the next mode")
                continue
            report.mode, report.method = m, attached.link.method
            break
        else:
            assert last is not None
            raise last
        skipped = ", ".join(m for m, _ in report.skipped)
        say(f"{what}attached via {report.mode} ({report.method})"
            + (f" after skipping {skipped}" if skipped else ""))
        return attached

    def _fentry_refused(self, name: str) -> str:
        """Where the kernel refuses fentry (ftrace locked down, no trampolines), a
        two-instruction fentry program on the same function says so (why, or "")
        before the real one is linked and relocated (tens of ms of CO-RE)."""
        kind, btf_id = self.collection.attach_target(name)
        probe = features.fentry(btf_id, kind.target)
        return probe.detail if probe.supported is False else ""

    def _attach_mode(self, name: str) -> _Attached:
        prog = self.collection.load_program(name)
        try:
            return _Attached(name, attach(prog.kind, prog.fd, prog.attach_btf_id))
        except BaseException:
            self.collection.unload_program(name)
            raise

    def release_kernel_btf(self) -> None:
        """Once nothing more will be loaded: several MB of decoded kernel types go.
        (Loading the sampler later reads them again.)"""
        self.collection.release_target_btf()

    # ---- running ----

    def drops(self) -> int:
        """Events lost: ring-buffer reservation failures plus runs the kernel skipped."""
        return self.ring_full() + self.recursion_misses()

    def ring_full(self) -> int:
        """Events the program could not reserve room for (the reader fell behind)."""
        return self._drops.sum_u64(0) if self._drops is not None else 0

    def recursion_misses(self) -> int:
        """Runs the kernel skipped because a BPF program was already running on
        that CPU (a socket freed in an interrupt that came during a run)."""
        if self._main is None or not features.recursion_misses().supported:
            return 0
        return syscalls.prog_info(self.prog_fd()).recursion_misses

    def program_stats(self) -> list[tuple[str, int, int]]:
        """(program, run time in ns, runs) of each attached program, as the kernel's BPF
        statistics counted them (ttcp.kernel.bpf_stats: only while those are on)."""
        out = []
        for attached in (self._main, self._sampler):
            if attached is not None:
                info = syscalls.prog_info(self.collection.programs[attached.program].fd)
                out.append((attached.program, info.run_time_ns, info.run_cnt))
        return out

    def prog_fd(self) -> int:
        if self._main is None:
            return -1
        return self.collection.programs[self._main.program].fd

    def close(self) -> None:
        """Detach first (no new events), then unmap and close every fd."""
        self.disable_sampling()
        if self._main is not None:
            self._main.link.close()
            self._main = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.table = None
        self._drops = None
        self.collection.close()
        if self.pins is not None:  # the pins stay; the lock goes
            self.pins.close()
            self.pins = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _info(message: str) -> None:
    log.info("%s", message)


def _why(e: BpfError) -> str:
    if e.errno == errno.EPERM and not e.log_tail():
        return f"{e.step}: EPERM (this kernel refuses it, e.g. ftrace locked down or no CAP_BPF/CAP_PERFMON)"
    first = e.log_tail(1)
    return f"{e.step}: {errno.errorcode.get(e.errno, e.errno)}" + (f" ({first})" if first else "")
