"""Why bpf(2) was refused: missing capabilities, a seccomp filter, a user namespace.

The text comes from facts (`ProcessFacts`); the facts come from /proc. The
pure cases check every branch; the kernel cases put a real ttcp behind a real
seccomp filter and in a real user namespace and read the one line it prints.
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_process import REPO, free_port
from ttcp import syscalls
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


# ---- the real thing: ttcp behind a seccomp filter, in a user namespace ------------------------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def _seccomp_no_bpf_program() -> bytes:
    """A classic-BPF seccomp filter: bpf(2) fails with EPERM, every other call is allowed."""
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    insns = [(ld, 0, 0, 4), (jeq, 0, 3, _AUDIT_ARCH[platform.machine()]),  # seccomp_data.arch
             (ld, 0, 0, 0), (jeq, 0, 1, syscalls._NR_BPF),  # seccomp_data.nr
             (ret, 0, 0, 0x00050000 | errno.EPERM), (ret, 0, 0, 0x7FFF0000)]
    return b"".join(struct.pack("=HBBI", *i) for i in insns)


def _run_ttcp_with_seccomp() -> subprocess.CompletedProcess:
    """Install the filter in a child (it survives exec), then exec the real ttcp."""
    code = f"""
import ctypes, os, sys
prog = {_seccomp_no_bpf_program()!r}
buf = ctypes.create_string_buffer(prog, len(prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # NO_NEW_PRIVS, SECCOMP
    sys.exit(f"prctl: {{os.strerror(ctypes.get_errno())}}")
os.execv(sys.executable, [sys.executable, "-m", "ttcp", "--port", "{free_port()}"])
"""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=60, check=False)


def _one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("ttcp: ") and "EPERM" in lines[0]
    return lines[0]


@pytest.mark.kernel
@pytest.mark.skipif(platform.machine() not in _AUDIT_ARCH, reason="seccomp filter written for x86_64/aarch64")
def test_seccomp_blocking_bpf_is_named_not_capabilities() -> None:
    line = _one_line(_run_ttcp_with_seccomp())
    assert "although this process has CAP_SYS_ADMIN: a seccomp filter (Seccomp: 2" in line, line
    assert "grant" not in line


@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_user_namespace_is_named() -> None:
    cmd = ["unshare", "--user", "--map-root-user", sys.executable, "-m", "ttcp", "--port", str(free_port())]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                       text=True, timeout=60, check=False)
    if r.returncode != 1 and "unshare failed" in r.stderr:
        pytest.skip(f"no user namespaces here: {r.stderr.strip()}")
    line = _one_line(r)
    assert "runs in a user namespace" in line, line
