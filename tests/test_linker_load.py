"""The generic loader on objects other than ttcp's own: subprograms, callbacks,
global data, BTF-defined maps — loaded for real and run with PROG_TEST_RUN."""

from __future__ import annotations

import errno
import re
import struct
import subprocess
import sys

import pytest

from tests import kernel
from tests.kernel import require, scaled
from tests.objects import SHIPPED, compile_bpf
from ttcp import syscalls
from ttcp.elf_loader import ObjectLoader
from ttcp.errors import BpfError
from ttcp.kernel.uapi import ProgType, PseudoSrc
from ttcp.obj import asm
from ttcp.obj.elf import read_object
from ttcp.obj.linker import link_program
from ttcp.obj.sections import classify


def test_shipped_object_reads():
    obj = read_object(str(SHIPPED))
    assert obj.license == "GPL"
    assert {f.name for f in obj.programs} == {
        "tcprtt_fentry", "tcprtt_tp_btf", "tcprtt_tracepoint",
        "tcprtt_sample_fentry", "tcprtt_sample_tp_btf", "tcprtt_sample_tracepoint"}
    assert set(obj.map_symbols) == {"hosts", "nets", "stats", "events", "drops"}


def test_section_kinds():
    assert classify("fentry/tcp_close").prog_type == ProgType.TRACING
    assert classify("tp_btf/tcp_destroy_sock").btf_target_name == "btf_trace_tcp_destroy_sock"
    assert classify("tracepoint/sock/inet_sock_set_state").prog_type == ProgType.TRACEPOINT
    assert classify("socket").prog_type == ProgType.SOCKET_FILTER


def test_linker_appends_called_subprograms_once():
    obj = read_object(str(compile_bpf("subprogs.bpf.c")))
    linked = link_program(obj, obj.function("socket", 0))
    names = [obj.function(p.section, p.start).name for p in linked.pieces]
    assert names[0] == "linked" and sorted(names[1:]) == ["add_offset", "times"]
    second = next(f for f in obj.programs if f.name == "second")
    assert [obj.function(p.section, p.start).name for p in link_program(obj, second).pieces] == [
        "second", "times"]
    assert {r.map_name for r in linked.map_refs} == {"counters", ".bss", ".data", ".rodata"}


@pytest.mark.matrix
@pytest.mark.kernel
def test_linked_programs_run_with_global_data(no_bpf_leaks):
    with ObjectLoader(str(compile_bpf("subprogs.bpf.c"))) as loader:
        assert {".rodata", ".data", ".bss", "counters"} <= set(loader.maps)
        linked = loader.load_program("linked")
        second = loader.load_program("second")
        packet = bytes(64)
        assert syscalls.prog_test_run(linked.fd, packet) == 26  # 3*7 + 5
        assert syscalls.prog_test_run(second.fd, packet) == 14
        bss = syscalls.map_lookup(loader.map_fds[".bss"], bytes(4), 8)
        assert struct.unpack("<Q", bss)[0] == 1
        counters = syscalls.map_lookup(loader.map_fds["counters"], struct.pack("<I", 1), 8)
        assert struct.unpack("<Q", counters)[0] == 1


def test_linker_places_a_callback_passed_by_address():
    obj = read_object(str(compile_bpf("callbacks.bpf.c")))
    linked = link_program(obj, obj.function("socket", 0))
    assert sorted(obj.function(p.section, p.start).name for p in linked.pieces[1:]) == ["step", "twice"]
    pseudo_funcs = [i for i in range(linked.insn_count)
                    if asm.decode(linked.insns, i).code == asm.LD_IMM64
                    and asm.decode(linked.insns, i).src == PseudoSrc.FUNC]
    assert len(pseudo_funcs) == 1
    at = pseudo_funcs[0]
    target = at + 1 + asm.decode(linked.insns, at).imm
    step = next(p for p in linked.pieces if obj.function(p.section, p.start).name == "step")
    assert target == step.base


@pytest.mark.matrix
@pytest.mark.kernel
def test_callback_program_runs(no_bpf_leaks):
    require(kernel.bpf_loop())
    with ObjectLoader(str(compile_bpf("callbacks.bpf.c"))) as loader:
        prog = loader.load_program("looped")
        assert syscalls.prog_test_run(prog.fd, bytes(64)) == 13  # 2 * (0+1+2+3) + 1


@pytest.mark.kernel
@pytest.mark.matrix
def test_every_program_of_the_shipped_object_loads(no_bpf_leaks):
    """The verifier of this kernel takes all six programs (the fentry ones where
    fentry loads at all): what decides whether ttcp runs here."""
    fentry = kernel.fentry_probe()
    with ObjectLoader(str(SHIPPED)) as loader:
        for name in loader.program_names():
            if "fentry" in name and not fentry.supported:
                with pytest.raises(BpfError) as info:
                    loader.load_program(name)
                assert errno.errorcode[info.value.errno] in fentry.detail  # refused as the probe was
                continue
            prog = loader.load_program(name)
            assert syscalls.prog_info(prog.fd).id > 0, name
        assert len(loader.programs) == (6 if fentry.supported else 4)


@pytest.mark.kernel
def test_cli_load_reports_each_program(no_bpf_leaks):
    obj = compile_bpf("subprogs.bpf.c")
    r = subprocess.run([sys.executable, "-m", "ttcp.elf_loader", str(obj), "--load"],
                       capture_output=True, text=True, timeout=scaled(60), check=False)
    assert r.returncode == 0, r.stderr
    assert "linked: loaded as socket" in r.stdout and "second: loaded as socket" in r.stdout


@pytest.mark.kernel
def test_cli_load_fails_on_verifier_rejection_with_log(no_bpf_leaks):
    obj = compile_bpf("rejected.bpf.c")
    r = subprocess.run([sys.executable, "-m", "ttcp.elf_loader", str(obj), "--load"],
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
    with ObjectLoader(str(obj)) as loader, pytest.raises(BpfError) as exc:
        loader.load_program("rejected")
    assert re.search(r"; return \*p; @ rejected.bpf.c:\d+", exc.value.log_tail())
