"""Shared test setup: the `kernel` marker, the CI skip rule, the layout rule and BPF leak guards.

Tests marked `kernel` need root and a working bpf(2). Where that is missing
they are skipped, unless TTCP_REQUIRE_KERNEL=1 (CI), where a skip would hide
a broken environment, so it is an error instead. Under that flag every other
skip fails too, except one whose reason is a probed kernel feature
(tests/support/kernel.py): "this kernel has no fentry" is a fact about the
kernel, "curl is not installed" is a broken CI.

The suite is laid out by what a test needs: tests/unit (pure code on bytes,
no root, no kernel: a `kernel` or `container` marker there is refused),
tests/kernel (the library against the running kernel, in-process),
tests/system (the command as a process, network namespaces, containers,
deployment); tests/support holds what they share.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import kernel_objects
from tests.support.kernel import SKIP_PREFIX, kernel_unusable_reason, require_kernel, strict
from tests.support.leaks import bpf_fds, fd_leaks, leaked_objects
from ttcp.kernel import btf as kernel_btf
from ttcp.obj.btf import Btf

pytest_plugins = ("tests.support.tracing", "tests.support.pins",  # the `tracer` and `pin_dir` fixtures
                  "tests.support.workloads")  # `cgroups` and `netns`

UNIT = Path(__file__).parent / "unit"
_NOT_IN_UNIT = ("kernel", "container")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kernel: needs root and a usable bpf(2) (skipped otherwise, "
                            "an error when TTCP_REQUIRE_KERNEL=1)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/unit is pure: a test there that needs the kernel or a container belongs elsewhere."""
    misplaced = [f"{item.nodeid} ({m})" for item in items if item.path.is_relative_to(UNIT)
                 for m in _NOT_IN_UNIT if item.get_closest_marker(m) is not None]
    if misplaced:
        raise pytest.UsageError("tests/unit holds pure tests; move these to tests/kernel or "
                                "tests/system: " + ", ".join(misplaced))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is not None:
        require_kernel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under TTCP_REQUIRE_KERNEL=1 a skip is a failure unless a kernel probe caused it."""
    outcome = yield
    report = outcome.get_result()
    if not (strict() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(SKIP_PREFIX):
        report.outcome = "failed"
        report.longrepr = f"skipped under TTCP_REQUIRE_KERNEL=1 (only kernel-feature skips may pass): {reason}"


# ---- leak detection (tests/support/leaks.py) ------------------------------------------


@pytest.fixture
def no_bpf_leaks() -> Iterator[None]:
    """Fail the test if it leaves BPF/perf fds open or BPF objects alive."""
    if kernel_unusable_reason() is not None:
        require_kernel()
    fds_before = bpf_fds()
    ids_before = kernel_objects.all_ids()
    yield
    problems = fd_leaks(fds_before) + leaked_objects(ids_before)
    assert not problems, "BPF leaks: " + ", ".join(problems)


@pytest.fixture(scope="session", autouse=True)
def _kernel_btf_parsed_once() -> Iterator[None]:
    """Every loader in this process shares one parse of the running kernel's BTF.

    The real file, read for real, once: a Tracer per test would otherwise
    re-read and re-index 5 MB of types, which under an emulated kernel
    (make vmtest) costs seconds each. Tests of the reading itself run ttcp
    in a subprocess or pass their own path, which this leaves alone.
    """
    real = kernel_btf.read_vmlinux_btf

    @functools.cache
    def once(path: Path = kernel_btf.VMLINUX_BTF) -> Btf:
        return real(path)

    def shared(path: Path = kernel_btf.VMLINUX_BTF) -> Btf:
        return once(path) if path == kernel_btf.VMLINUX_BTF else real(path)

    kernel_btf.read_vmlinux_btf = shared
    try:
        yield
    finally:
        kernel_btf.read_vmlinux_btf = real


@pytest.fixture(scope="session", autouse=True)
def _session_leak_guard() -> Iterator[None]:
    """At session end, no BPF fd opened or object created during the session may remain."""
    usable = os.geteuid() == 0 and kernel_unusable_reason() is None
    fds_before = bpf_fds() if usable else {}
    ids_before = kernel_objects.all_ids() if usable else {}
    yield
    if not usable:
        return
    problems = fd_leaks(fds_before) + leaked_objects(ids_before)
    if problems:
        pytest.fail("BPF leaks at end of session: " + ", ".join(problems), pytrace=False)
