"""The object reader and the linker on objects other than ttcp's own: section
kinds, subprograms appended once, a callback passed by address (pure; the
kernel's verdict on the linked programs is tests/kernel/test_loader.py's)."""

from __future__ import annotations

from tests.support.objects import SHIPPED, compile_bpf
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
    assert set(obj.map_symbols) == {"hosts", "nets", "stats", "texts", "cgroups", "netns", "events", "drops",
                                    "groups", "group_stats", "group_new"}


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
