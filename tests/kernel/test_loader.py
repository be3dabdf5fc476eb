"""The generic loader on objects other than ttcp's own: subprograms, callbacks,
global data, BTF-defined maps — loaded for real and run with PROG_TEST_RUN."""

from __future__ import annotations

import errno
import re
import struct
import subprocess
import sys

import pytest

from tests.support import kernel
from tests.support.kernel import require, scaled
from tests.support.objects import SHIPPED, compile_bpf
from ttcp import syscalls
from ttcp.elf_loader import Collection
from ttcp.errors import BpfError


@pytest.mark.matrix
@pytest.mark.kernel
def test_linked_programs_run_with_global_data(no_bpf_leaks):
    with Collection(str(compile_bpf("subprogs.bpf.c"))) as loader:
        assert {".rodata", ".data", ".bss", "counters"} <= set(loader.spec.maps)
        linked = loader.load_program("linked")
        second = loader.load_program("second")
        packet = bytes(64)
        assert syscalls.prog_test_run(linked.fd, packet) == 26  # 3*7 + 5
        assert syscalls.prog_test_run(second.fd, packet) == 14
        bss = syscalls.map_lookup(loader.map_fds[".bss"], bytes(4), 8)
        assert struct.unpack("<Q", bss)[0] == 1
        counters = syscalls.map_lookup(loader.map_fds["counters"], struct.pack("<I", 1), 8)
        assert struct.unpack("<Q", counters)[0] == 1



@pytest.mark.matrix
@pytest.mark.kernel
def test_callback_program_runs(no_bpf_leaks):
    require(kernel.bpf_loop())
    with Collection(str(compile_bpf("callbacks.bpf.c"))) as loader:
        prog = loader.load_program("looped")
        assert syscalls.prog_test_run(prog.fd, bytes(64)) == 13  # 2 * (0+1+2+3) + 1


PROCESSED_BOUND = 250_000  # a quarter of the verifier's limit: room for kernels to come


@pytest.mark.kernel
@pytest.mark.matrix
def test_every_program_of_the_shipped_object_loads(no_bpf_leaks, record_property):
    """The verifier of this kernel takes all six programs (the fentry ones where
    fentry loads at all): what decides whether ttcp runs here. What it processed
    for each goes to the report (junit properties `verifier_NAME`), and must stay
    far from its limit of a million instructions: the newest verifiers explore
    branchy code far more than the oldest."""
    fentry = kernel.fentry_probe()
    with Collection(str(SHIPPED)) as loader:
        for name in loader.spec.program_names():
            if "fentry" in name and not fentry.supported:
                with pytest.raises(BpfError) as info:
                    loader.load_program(name)
                assert errno.errorcode[info.value.errno] in fentry.detail  # refused as the probe was
                continue
            prog = loader.load_program(name, stats=True)
            assert syscalls.prog_info(prog.fd).id > 0, name
            processed = re.search(r"processed (\d+) insns", prog.verifier_stats)
            assert processed, prog.verifier_stats
            record_property(f"verifier_{name}", int(processed[1]))
            assert int(processed[1]) < PROCESSED_BOUND, (name, prog.verifier_stats)
        assert len(loader.programs) == (6 if fentry.supported else 4)


@pytest.mark.kernel
def test_cli_load_reports_each_program(no_bpf_leaks):
    obj = compile_bpf("subprogs.bpf.c")
    r = subprocess.run([sys.executable, "-m", "ttcp.kernel", "load", str(obj)],
                       capture_output=True, text=True, timeout=scaled(60), check=False)
    assert r.returncode == 0, r.stderr
    assert "linked: loaded as socket" in r.stdout and "second: loaded as socket" in r.stdout


@pytest.mark.kernel
def test_cli_load_fails_on_verifier_rejection_with_log(no_bpf_leaks):
    obj = compile_bpf("rejected.bpf.c")
    r = subprocess.run([sys.executable, "-m", "ttcp.kernel", "load", str(obj)],
                       capture_output=True, text=True, timeout=scaled(60), check=False)
    assert r.returncode == 1
    assert "rejected: FAILED" in r.stderr and "PROG_LOAD" in r.stderr
    assert "invalid mem access" in r.stderr  # the verifier's own words, from the log tail
    assert "; return *p;" in r.stderr  # line_info loaded: the verifier quotes the source


@pytest.mark.matrix
@pytest.mark.kernel
def test_verifier_log_names_source_file_and_line(no_bpf_leaks):
    require(kernel.verifier_source_lines())
    obj = compile_bpf("rejected.bpf.c")
    with Collection(str(obj)) as loader, pytest.raises(BpfError) as exc:
        loader.load_program("rejected")
    assert re.search(r"; return \*p; @ rejected.bpf.c:\d+", exc.value.log_tail())
