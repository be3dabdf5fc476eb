"""Shared test setup: the `kernel` marker, the CI skip rule and BPF leak guards.

Tests marked `kernel` need root and a working bpf(2). Where that is missing
they are skipped, unless TTCP_REQUIRE_KERNEL=1 (CI), where a skip would hide
a broken environment, so it is an error instead. Under that flag every other
skip fails too, except one whose reason is a probed kernel feature
(tests/kernel.py): "this kernel has no fentry" is a fact about the kernel,
"curl is not installed" is a broken CI.

Leak checks are based on this process's own file descriptors (what a test
forgot to close) plus, at session end, BPF objects created during the session
that are still alive and held by no other process (e.g. pinned or leaked via
a kernel reference). Objects of other processes running at the same time are
ignored by looking them up in /proc/*/fdinfo.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import kernel_objects
from tests.kernel import SKIP_PREFIX
from ttcp import elf_loader, syscalls
from ttcp.errors import BpfError
from ttcp.kernel import features
from ttcp.kernel.uapi import MapType
from ttcp.obj.btf import Btf

pytest_plugins = ("tests.tracing",)  # the `tracer` fixture, one per attach mode

_BPF_LINK_TARGETS = ("anon_inode:bpf-map", "anon_inode:bpf-prog", "anon_inode:bpf_link",
                     "anon_inode:bpf-link", "anon_inode:[perf_event]", "anon_inode:btf")
_GRACE_S = 3.0  # the kernel frees closed objects asynchronously (RCU, workqueues)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: needs root and a usable bpf(2) (skipped otherwise, "
                            "an error when TTCP_REQUIRE_KERNEL=1)")


@functools.cache
def kernel_unusable_reason() -> str | None:
    """None if this process can create BPF maps, else why not."""
    if os.geteuid() != 0:
        return "not root"
    features.ensure_memlock()  # kernels before 5.11 charge maps to RLIMIT_MEMLOCK
    try:
        fd = syscalls.map_create(MapType.ARRAY, 4, 4, 1, name="ttcp_probe")
    except BpfError as e:
        return f"bpf(2) unusable: {e}"
    syscalls.close(fd)
    return None


def _strict() -> bool:
    return os.environ.get("TTCP_REQUIRE_KERNEL") == "1"


def _require_kernel() -> None:
    reason = kernel_unusable_reason()
    if reason is None:
        return
    if _strict():
        pytest.fail(f"kernel test cannot run ({reason}) but TTCP_REQUIRE_KERNEL=1", pytrace=False)
    pytest.skip(f"kernel test needs root and bpf(2): {reason}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is not None:
        _require_kernel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under TTCP_REQUIRE_KERNEL=1 a skip is a failure unless a kernel probe caused it."""
    outcome = yield
    report = outcome.get_result()
    if not (_strict() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(SKIP_PREFIX):
        report.outcome = "failed"
        report.longrepr = f"skipped under TTCP_REQUIRE_KERNEL=1 (only kernel-feature skips may pass): {reason}"


# ---- leak detection ---------------------------------------------------------------


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


def _fd_leaks(before: dict[int, str]) -> list[str]:
    return [f"fd {fd} -> {kind}" for fd, kind in sorted(bpf_fds().items()) if before.get(fd) != kind]


@pytest.fixture
def no_bpf_leaks() -> Iterator[None]:
    """Fail the test if it leaves BPF/perf fds open or BPF objects alive."""
    if kernel_unusable_reason() is not None:
        _require_kernel()
    fds_before = bpf_fds()
    ids_before = kernel_objects.all_ids()
    yield
    problems = _fd_leaks(fds_before) + leaked_objects(ids_before)
    assert not problems, "BPF leaks: " + ", ".join(problems)


@pytest.fixture(scope="session", autouse=True)
def _kernel_btf_parsed_once() -> Iterator[None]:
    """Every loader in this process shares one parse of the running kernel's BTF.

    The real file, read for real, once: a Tracer per test would otherwise
    re-read and re-index 5 MB of types, which under an emulated kernel
    (make vmtest) costs seconds each. Tests of the reading itself run ttcp
    in a subprocess or pass their own path, which this leaves alone.
    """
    real = elf_loader.read_vmlinux_btf

    @functools.cache
    def once(path: Path = elf_loader.VMLINUX_BTF) -> Btf:
        return real(path)

    def shared(path: Path = elf_loader.VMLINUX_BTF) -> Btf:
        return once(path) if path == elf_loader.VMLINUX_BTF else real(path)

    elf_loader.read_vmlinux_btf = shared
    try:
        yield
    finally:
        elf_loader.read_vmlinux_btf = real


@pytest.fixture(scope="session", autouse=True)
def _session_leak_guard() -> Iterator[None]:
    """At session end, no BPF fd opened or object created during the session may remain."""
    usable = os.geteuid() == 0 and kernel_unusable_reason() is None
    fds_before = bpf_fds() if usable else {}
    ids_before = kernel_objects.all_ids() if usable else {}
    yield
    if not usable:
        return
    problems = _fd_leaks(fds_before) + leaked_objects(ids_before)
    if problems:
        pytest.fail("BPF leaks at end of session: " + ", ".join(problems), pytrace=False)
