"""A real ttcp refused bpf(2) behind a real seccomp filter and in a real user
namespace: the one line it prints names the cause (the text for every set of
facts is tests/unit/test_privileges.py's)."""

from __future__ import annotations

import errno
import os
import platform
import shutil
import struct
import subprocess
import sys

import pytest

from tests.support.cli_process import REPO, free_port
from ttcp import syscalls

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
