"""`python -m ttcp.kernel explain OBJ` makes libbpf's decisions.

Ground truth is libbpf itself: `bpftool -d prog loadall` logs every CO-RE
patch ("patched insn #N (LDX/ST/STX) off A -> B") and every poisoning
("substituting insn #N w/ invalid insn"), per program.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import kernel
from tests.support.kernel import scaled
from tests.support.objects import SOURCE, compile_bpf
from ttcp.obj.asm import LD_IMM64
from ttcp.obj.elf import read_object
from ttcp.obj.linker import link_program
from ttcp.obj.spec import CollectionSpec

pytestmark = pytest.mark.kernel

PATCHED = re.compile(r"libbpf: prog '([^']+)': relo #\d+: patched insn #(\d+) \(([^)]+)\) (\w+) (\d+) -> (\d+)")
POISONED = re.compile(r"libbpf: prog '([^']+)': relo #\d+: substituting insn #(\d+) w/ invalid insn")


LOAD_FAILED = re.compile(r"libbpf: prog '([^']+)': BPF program load failed")


def libbpf(obj: Path) -> set[tuple]:
    """libbpf's CO-RE decisions for every program of `obj`.

    libbpf relocates every program before it loads any, so its decisions are
    all logged even where the kernel then refuses a program (fentry on a
    kernel whose ftrace is locked): such a refusal is allowed, nothing else.
    """
    assert shutil.which("bpftool"), "run `make deps` (bpftool)"
    pin = Path("/sys/fs/bpf") / f"ttcp_explain_{os.getpid()}"
    try:
        r = subprocess.run(["bpftool", "-d", "prog", "loadall", str(obj), str(pin)],
                           capture_output=True, text=True, timeout=scaled(60), check=False)
    finally:
        shutil.rmtree(pin, ignore_errors=True)
    if r.returncode != 0:
        refused = LOAD_FAILED.findall(r.stderr)
        assert refused, r.stderr[-2000:]
        for prog in refused:  # only programs the probes say this kernel cannot load
            assert prog == "tcprtt_fentry" and not kernel.fentry_probe().supported, r.stderr[-2000:]
    out = set()
    for line in r.stderr.splitlines():
        if m := PATCHED.match(line):
            if m[4] != "mem_sz":  # a size change of the same insn, not a separate decision
                out.add((m[1], int(m[2]), int(m[5]), int(m[6])))
        elif m := POISONED.match(line):
            out.add((m[1], int(m[2]), "poisoned"))
    return out


def explain(obj: Path) -> set[tuple]:
    """Our decisions, made in this process (the explain command prints the same
    ones: test_explain_reports_poisoned_fields runs it); a poisoned ldimm64 covers
    its second slot too, as libbpf logs it. A decision in a subprogram is named as
    libbpf names it: by the subprogram, at its own instruction (libbpf relocates
    each subprogram once; ttcp does in each program that calls it, alike)."""
    elf = read_object(str(obj))
    out = set()
    for d in CollectionSpec(str(obj)).explain(kernel.kernel_btf()):
        program, insn = _in_function(elf, d.program, d.insn)
        if d.poisoned:
            out.add((program, insn, "poisoned"))
            if _opcode(elf, d.program, d.insn) == LD_IMM64:
                out.add((program, insn + 1, "poisoned"))
        else:
            out.add((program, insn, d.old, d.new))
    return out


def _in_function(elf, program: str, insn: int) -> tuple[str, int]:
    """(function, instruction in it) of a linked program's instruction."""
    func = next(f for f in elf.programs if f.name == program)
    piece = next(p for p in link_program(elf, func).pieces if p.base <= insn < p.base + p.count)
    return elf.function(piece.section, piece.start).name, insn - piece.base


def _opcode(elf, program: str, insn: int) -> int:
    """The opcode clang emitted at a program's instruction (before any patching), its
    subprograms appended as the loader links them."""
    func = next(f for f in elf.programs if f.name == program)
    return link_program(elf, func).insns[insn * 8]


@pytest.mark.parametrize("name", ["core_kinds.bpf.c", "tcprtt.bpf.c"])
def test_explain_equals_libbpf(name):
    obj = compile_bpf(name) if name == "core_kinds.bpf.c" else compile_bpf(SOURCE)
    theirs, ours = libbpf(obj), explain(obj)
    assert len(theirs) >= 20
    assert {d[0] for d in theirs} == {d[0] for d in ours}  # every program, fentry's included
    assert ours == theirs


def test_explain_reports_poisoned_fields():
    """A field this kernel lacks is poisoned, not guessed: the line says so."""
    obj = compile_bpf("core_kinds.bpf.c")
    lines = [json.loads(x) for x in subprocess.run(
        [sys.executable, "-m", "ttcp.kernel", "explain", str(obj)],
        capture_output=True, text=True, timeout=scaled(60), check=True).stdout.splitlines()]
    poisoned = [d for d in lines if d.get("poisoned")]
    assert poisoned and all("new" not in d for d in poisoned)
    assert all(re.match(r"^(struct|union|enum|typedef|int|\w+) ", d["spec"]) for d in lines)
