"""What the running kernel can do, each decided once by a dedicated probe.

Kernels differ in ways an errno from the real operation cannot tell apart
(an EINVAL from LINK_CREATE may mean "too old" or "you passed something
wrong"). So, like libbpf's `kernel_supports()` and cilium/ebpf's `features`
package, each capability is probed with the smallest program or map that
shows it, and the product and the tests both branch on the probe's answer.
`python -m ttcp.kernel features` prints every probe.

A probe answers supported (True), unsupported (False, with the kernel's own
words in `detail`) or unknown (None: the probe itself could not run, e.g.
no privilege), and never raises. As cilium/ebpf's FeatureCache, an answer is
kept per probe and arguments (fentry on tcp_close says nothing of fentry on
tcp_rcv_established), once per process, and an unknown one is not kept: the
next call asks again.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel.abi import BpfProgInfo, end_of
from ttcp.kernel.uapi import AttachType, Helper, MapType, ProgType
from ttcp.obj import asm

PROG_INFO_RECURSION_MISSES_END = end_of(BpfProgInfo, "recursion_misses")  # a 5.12 field


@dataclass(frozen=True)
class Probe:
    feature: str
    supported: bool | None
    detail: str = ""

    @property
    def reason(self) -> str:
        """One line for a skip message or a log: the feature and what was seen."""
        state = {True: "supported", False: "unsupported", None: "unknown"}[self.supported]
        return f"kernel feature {self.feature} {state}" + (f": {self.detail}" if self.detail else "")


_results: dict[tuple[Hashable, ...], Probe] = {}  # (feature, *arguments) -> a conclusive answer


def _once(feature: str, args: tuple[Hashable, ...], probe: Callable[[], Probe]) -> Probe:
    """The answer for `feature` with these arguments: kept when conclusive, asked again when not."""
    key = (feature, *args)
    found = _results.get(key)
    if found is None:
        try:
            found = probe()
        except BpfError as e:  # the probe could not even be set up
            found = Probe(feature, None, str(e).splitlines()[0])
        if found.supported is not None:
            _results[key] = found
    return found


def _refused(feature: str, e: BpfError) -> Probe:
    """A probe step the kernel refused: EPERM/EACCES says nothing about the feature."""
    first = str(e).splitlines()[0]
    if e.errno in (errno.EPERM, errno.EACCES) and not e.log_tail():
        return Probe(feature, None, first)
    return Probe(feature, False, first)


def _load(prog_type: ProgType, insns: bytes, name: str, *, expected_attach_type: int = 0,
          attach_btf_id: int = 0) -> int:
    return syscalls.prog_load(prog_type, insns, "GPL", name=name, expected_attach_type=expected_attach_type,
                              attach_btf_id=attach_btf_id)


# ---- probes ---------------------------------------------------------------------


def memcg_accounting() -> Probe:
    """BPF memory charged to the memory cgroup (5.11) rather than RLIMIT_MEMLOCK.

    Like libbpf: the helper bpf_ktime_get_coarse_ns arrived in the same
    release, so a program calling it loads exactly where memcg accounting exists.
    """
    def probe() -> Probe:
        try:
            fd = _load(ProgType.SOCKET_FILTER, asm.call(Helper.KTIME_GET_COARSE_NS) + asm.RETURN_0,
                       "ttcp_memcg")
        except BpfError as e:
            return _refused("memcg_accounting", e)
        syscalls.close(fd)
        return Probe("memcg_accounting", True)
    return _once("memcg_accounting", (), probe)


def tracing_link_create(attach_type: AttachType, attach_btf_id: int) -> Probe:
    """BPF_LINK_CREATE for fentry/tp_btf programs (else BPF_RAW_TRACEPOINT_OPEN).

    Needs one kernel BTF id to load a tracing program against: the caller's
    own target (a FUNC for fentry, a btf_trace_* TYPEDEF for tp_btf).
    """
    def probe() -> Probe:
        try:
            prog = _load(ProgType.TRACING, asm.RETURN_0, "ttcp_tlink",
                         expected_attach_type=attach_type, attach_btf_id=attach_btf_id)
        except BpfError as e:
            return Probe("tracing_link_create", None, "probe program refused: " + str(e).splitlines()[0])
        try:
            link = syscalls.link_create(prog, 0, attach_type)
        except BpfError as e:
            return _refused("tracing_link_create", e)
        finally:
            syscalls.close(prog)
        syscalls.close(link)
        return Probe("tracing_link_create", True)
    return _once("tracing_link_create", (attach_type, attach_btf_id), probe)


def perf_event_link() -> Probe:
    """BPF_LINK_CREATE on a perf event (5.15), else PERF_EVENT_IOC_SET_BPF.

    As libbpf probes it: a kernel that knows perf-event links looks the
    target fd up and answers EBADF for an invalid one; an older one refuses
    the attach type first, with EINVAL.
    """
    def probe() -> Probe:
        try:
            prog = _load(ProgType.TRACEPOINT, asm.RETURN_0, "ttcp_plink")
        except BpfError as e:
            return _refused("perf_event_link", e)
        try:
            link = syscalls.link_create(prog, -1, AttachType.PERF_EVENT)
            syscalls.close(link)  # cannot happen with fd -1; never keep it
            return Probe("perf_event_link", True)
        except BpfError as e:
            if e.errno == errno.EBADF:
                return Probe("perf_event_link", True)
            return _refused("perf_event_link", e)
        finally:
            syscalls.close(prog)
    return _once("perf_event_link", (), probe)


def batch_map_ops(map_type: MapType = MapType.HASH) -> Probe:
    """BPF_MAP_LOOKUP_BATCH on a map of `map_type`: a whole map in a few syscalls.

    Per map type, since the kernel gave the types their batch operations in
    different releases (hash maps 5.6; per-CPU arrays later: 5.10 answers
    ENOTSUPP for them)."""
    feature = "batch_map_ops" if map_type == MapType.HASH else f"batch_map_ops_{map_type.name.lower()}"

    def probe() -> Probe:
        try:
            fd = syscalls.map_create(map_type, 4, 4, 1, name="ttcp_batch")
        except BpfError as e:
            return _refused(feature, e)
        per_cpu = map_type in (MapType.PERCPU_ARRAY, MapType.PERCPU_HASH)
        try:
            syscalls.map_lookup_batch(fd, 4, syscalls.percpu_value_size(4) if per_cpu else 4, 1)
        except BpfError as e:
            return _refused(feature, e)
        finally:
            syscalls.close(fd)
        return Probe(feature, True)
    return _once(feature, (map_type,), probe)


def recursion_misses() -> Probe:
    """bpf_prog_info.recursion_misses (5.12): runs the kernel skipped."""
    def probe() -> Probe:
        try:
            fd = _load(ProgType.SOCKET_FILTER, asm.RETURN_0, "ttcp_recmiss")
        except BpfError as e:
            return _refused("recursion_misses", e)
        try:
            size = syscalls.prog_info_size(fd)
        finally:
            syscalls.close(fd)
        if size >= PROG_INFO_RECURSION_MISSES_END:
            return Probe("recursion_misses", True)
        return Probe("recursion_misses", False, f"bpf_prog_info is {size} bytes here")
    return _once("recursion_misses", (), probe)


def fentry(func_btf_id: int, func: str) -> Probe:
    """An fentry program loads (ftrace usable, not locked down)."""
    def probe() -> Probe:
        try:
            fd = _load(ProgType.TRACING, asm.RETURN_0, "ttcp_fentry",
                       expected_attach_type=AttachType.TRACE_FENTRY, attach_btf_id=func_btf_id)
        except BpfError as e:
            return Probe("fentry", False, f"fentry/{func}: " + str(e).splitlines()[0])
        syscalls.close(fd)
        return Probe("fentry", True)
    return _once("fentry", (func_btf_id, func), probe)


def sysfs_btf_mmap(path: Path) -> Probe:
    """mmap of the kernel's BTF in sysfs, /sys/kernel/btf/vmlinux (ttcp.kernel.btf;
    recent kernels; older ones say ENODEV)."""
    def probe() -> Probe:
        try:
            syscalls.mmap_file(path).close()
        except OSError as e:
            return Probe("sysfs_btf_mmap", False,
                         f"mmap {path}: {errno.errorcode.get(e.errno or 0, e.errno)}")
        return Probe("sysfs_btf_mmap", True)
    return _once("sysfs_btf_mmap", (path,), probe)
