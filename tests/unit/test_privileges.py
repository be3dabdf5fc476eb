"""Why bpf(2) was refused: missing capabilities, a seccomp filter, a user namespace.

The text comes from facts (`ProcessFacts`); the facts come from /proc. These
pure cases check every branch; tests/system/test_privileges_command.py puts a
real ttcp behind a real seccomp filter and in a real user namespace and reads
the one line it prints.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ttcp.errors import ProcessFacts, privilege_hint, process_facts
from ttcp.kernel.uapi import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN

DEFAULT_DOCKER_CAPS = 0xA80425FB  # CapEff of a default Docker 20.10 container
ROOT = (1 << 41) - 1


# ---- pure: facts -> text ---------------------------------------------------------------------


def test_other_errors_get_no_hint() -> None:
    assert privilege_hint(errno.EINVAL, ProcessFacts(0, 0, False)) == ""


def test_missing_capabilities_are_named() -> None:
    text = privilege_hint(errno.EPERM, ProcessFacts(DEFAULT_DOCKER_CAPS, 2, False))
    assert "lacks CAP_BPF and CAP_PERFMON" in text and "--cap-add SYS_ADMIN" in text
    assert "seccomp filter" not in text  # the capabilities are what to fix first
    only_bpf = privilege_hint(errno.EPERM, ProcessFacts(1 << CAP_BPF, 0, False))
    assert "lacks CAP_PERFMON:" in only_bpf


@pytest.mark.parametrize(("caps", "held"), [
    (DEFAULT_DOCKER_CAPS | 1 << CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (1 << CAP_BPF | 1 << CAP_PERFMON, "CAP_BPF and CAP_PERFMON"),
])
def test_seccomp_named_when_the_capabilities_are_there(caps: int, held: str) -> None:
    text = privilege_hint(errno.EPERM, ProcessFacts(caps, 2, False))
    assert f"although this process has {held}: a seccomp filter (Seccomp: 2" in text
    assert "grant" not in text


def test_neither_capabilities_nor_seccomp_points_elsewhere() -> None:
    text = privilege_hint(errno.EACCES, ProcessFacts(ROOT, 0, False))
    assert "no seccomp filter" in text and "LSM" in text


def test_user_namespace_comes_first() -> None:
    text = privilege_hint(errno.EPERM, ProcessFacts(ROOT, 0, True))
    assert "user namespace" in text and "real root" in text


def test_unknown_facts_give_the_generic_hint() -> None:
    assert "grant CAP_BPF and CAP_PERFMON" in privilege_hint(errno.EPERM, ProcessFacts())


def test_process_facts_parses_proc_files(tmp_path: Path) -> None:
    (tmp_path / "status").write_text("Name:\tx\nCapEff:\t00000000a82425fb\nSeccomp:\t2\n")
    (tmp_path / "uid_map").write_text("         0       1000          1\n")
    facts = process_facts(tmp_path)
    assert facts == ProcessFacts(0xA82425FB, 2, True)
    assert facts.has(CAP_SYS_ADMIN) and not facts.has(CAP_BPF)
    assert process_facts(tmp_path / "absent") == ProcessFacts()


def test_process_facts_of_this_process() -> None:
    facts = process_facts()
    status = Path("/proc/self/status").read_text()
    assert f"{facts.cap_eff:016x}" in status and facts.seccomp is not None and facts.user_ns is not None
