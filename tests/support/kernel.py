"""What the kernel under test can do, and how slow it is, for the tests.

Tests branch on feature probes (ttcp.kernel.features, plus the test-only probes
below), never on a hostname or a kernel version, and skip with the probe's
own reason. conftest.py lets exactly those skips through under
TTCP_REQUIRE_KERNEL=1 (CI): any other skip of a test there is a failure.
Whether bpf(2) can be used at all (root, no seccomp filter) is decided once,
here too, for the `kernel` marker.

TTCP_TIMEOUT_SCALE stretches every wait in the tests: a kernel booted under
software emulation (make vmtest without KVM) runs 10-30x slower than the
host, and a host-sized 5 s wait would fail for no fault of ttcp's.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import time
from collections.abc import Callable

import pytest

import ttcp.kernel.btf
from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel import features, rlimit
from ttcp.kernel.features import Probe
from ttcp.kernel.uapi import Helper, MapType, ProgType
from ttcp.obj import asm
from ttcp.obj.btf import KIND_FUNC, KIND_TYPEDEF, Btf
from ttcp.rtt.tracer import MODES

SKIP_PREFIX = "kernel feature "  # every probe's reason starts so; conftest keys on it
TIMEOUT_SCALE = max(1.0, float(os.environ.get("TTCP_TIMEOUT_SCALE", "1") or 1))


@functools.cache
def kernel_unusable_reason() -> str | None:
    """None if this process can create BPF maps, else why not."""
    if os.geteuid() != 0:
        return "not root"
    rlimit.ensure_memlock()  # kernels before 5.11 charge maps to RLIMIT_MEMLOCK
    try:
        fd = syscalls.map_create(MapType.ARRAY, 4, 4, 1, name="ttcp_probe")
    except BpfError as e:
        return f"bpf(2) unusable: {e}"
    syscalls.close(fd)
    return None


def strict() -> bool:
    """TTCP_REQUIRE_KERNEL=1 (CI): a kernel test that cannot run is a failure, not a skip."""
    return os.environ.get("TTCP_REQUIRE_KERNEL") == "1"


def require_kernel() -> None:
    """Skip the calling test (fail it under TTCP_REQUIRE_KERNEL=1) unless bpf(2) is usable."""
    reason = kernel_unusable_reason()
    if reason is None:
        return
    if strict():
        pytest.fail(f"kernel test cannot run ({reason}) but TTCP_REQUIRE_KERNEL=1", pytrace=False)
    pytest.skip(f"kernel test needs root and bpf(2): {reason}")


def scaled(seconds: float) -> float:
    """A wait sized for this host, stretched for a slow (emulated) kernel."""
    return seconds * TIMEOUT_SCALE


def settle(seconds: float) -> float:
    """How long to see nothing more before concluding nothing more comes, when this
    process reads the ring itself: the kernel queues an event within microseconds
    of the close even when emulated, so a quiet period needs far less stretching
    than a deadline (which waits for a slow Python to do something)."""
    return seconds * min(TIMEOUT_SCALE, 3.0)


def wait_matches(count: Callable[[], int], want: int, timeout: float = 15.0) -> None:
    """Poll `count` (connections a program counted) until it reaches `want`, exactly."""
    deadline = time.monotonic() + scaled(timeout)
    while (got := count()) < want:
        assert time.monotonic() < deadline, f"only {got} of {want} connections seen by the program"
        time.sleep(0.02)
    assert got == want


def require(probe: Probe) -> None:
    """Skip the calling test unless the probed feature is there."""
    if not probe.supported:
        pytest.skip(probe.reason)


@functools.cache
def kernel_btf() -> Btf:
    return ttcp.kernel.btf.read_vmlinux_btf()  # the session's one parse (conftest.py)


def _first_id(name: str, kind: int) -> int:
    ids = kernel_btf().ids_by_name(name, kind)
    return ids[0] if ids else 0


def fentry_probe() -> Probe:
    func = _first_id("tcp_close", KIND_FUNC)
    if not func:
        return Probe("fentry", False, "kernel BTF has no tcp_close")
    return features.fentry(func, "tcp_close")


def mode_probe(mode: str) -> Probe:
    """Whether ttcp's attach mode can work here. tp_btf and the classic tracepoint
    exist on every kernel ttcp supports (a failure there is a real failure);
    fentry depends on ftrace, which a locked-down kernel refuses."""
    assert mode in MODES
    if mode == "fentry":
        return fentry_probe()
    return Probe(mode, True)


def tracing_link_probe() -> Probe:
    from ttcp.kernel.uapi import AttachType
    return features.tracing_link_create(AttachType.TRACE_RAW_TP,
                                        _first_id("btf_trace_tcp_destroy_sock", KIND_TYPEDEF))


# ---- test-only probes ----------------------------------------------------------------


@functools.cache
def bpf_loop() -> Probe:
    """The bpf_loop helper and callbacks passed by address (5.17)."""
    # A call with no arguments set up: a kernel that knows the helper complains
    # about its arguments (R1/R2 !read_ok), one that does not says "invalid func".
    try:
        fd = syscalls.prog_load(ProgType.SOCKET_FILTER, asm.call(Helper.LOOP) + asm.RETURN_0, "GPL",
                                name="ttcp_loop")
    except BpfError as e:
        if re.search(r"invalid func|unknown func", e.log):
            line = next((ln for ln in e.log.splitlines() if re.search(r"invalid func|unknown func", ln)), "")
            return Probe("bpf_loop", False, f"the verifier does not know the helper ({line.strip()})")
        if not e.log:
            return Probe("bpf_loop", None, str(e).splitlines()[0])
        return Probe("bpf_loop", True)
    syscalls.close(fd)
    return Probe("bpf_loop", True)


@functools.cache
def enable_stats() -> Probe:
    """BPF_ENABLE_STATS (5.8); a refusal for want of privilege is an error, not a skip."""
    try:
        fd = syscalls.enable_stats()
    except BpfError as e:
        if e.errno == errno.EINVAL:
            return Probe("enable_stats", False, "BPF_ENABLE_STATS: EINVAL (no such command before 5.8)")
        raise
    syscalls.close(fd)
    return Probe("enable_stats", True)


@functools.cache
def verifier_source_lines() -> Probe:
    """The verifier prints `; source @ file.c:N` for programs with line_info (6.2+)."""
    from tests.support.objects import compile_bpf  # needs clang; only asked by tests that have it
    from ttcp.elf_loader import Collection

    src = compile_bpf("rejected.bpf.c")
    with Collection(str(src)) as loader:
        try:
            loader.load_program("rejected")
        except BpfError as e:
            if re.search(r"@ rejected\.bpf\.c:\d+", e.log):
                return Probe("verifier_source_lines", True)
            return Probe("verifier_source_lines", False, "the verifier log has no '@ file:line' lines")
    return Probe("verifier_source_lines", None, "the probe program was not rejected")
