"""ttcp.obj.core against the running kernel's BTF: two relocations of the fields
ttcp reads, then every relocation of core_kinds.bpf.c resolved and patched
exactly as libbpf does it (the pure cases are tests/unit/test_core.py's)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import paths
from tests.support.btf_builder import BtfBuilder
from ttcp.obj import core as C
from ttcp.obj.btf import KIND_STRUCT, Btf
from ttcp.obj.btf_ext import BtfExt, CoreRelo
from ttcp.obj.core import CoreResolver, patch_insn

VMLINUX = "/sys/kernel/btf/vmlinux"


def relo(type_id: int, access: str, kind: int, insn_off: int = 0, index: int = 0) -> CoreRelo:
    return CoreRelo(insn_off, type_id, 0, kind, access, index)


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF")
def test_against_vmlinux() -> None:
    lb = BtfBuilder()
    u16 = lb.add_int("unsigned short", 2)
    u32 = lb.add_int("unsigned int", 4)
    common = lb.add_struct("sock_common", [("skc_family", u16, 0)], 2)
    tcp = lb.add_struct("tcp_sock___ttcp", [("srtt_us", u32, 0)], 4)
    local = Btf.parse(lb.build())
    start = time.perf_counter()
    with open(VMLINUX, "rb") as f:
        target = Btf.parse(f.read())
    r = CoreResolver(local, target)
    family = r.resolve(relo(common, "0:0", C.FIELD_BYTE_OFFSET))
    srtt = r.resolve(relo(tcp, "0:0", C.FIELD_BYTE_OFFSET))
    elapsed = time.perf_counter() - start
    assert family.new_value == 16
    (tcp_id,) = target.ids_by_name("tcp_sock", KIND_STRUCT)
    assert srtt.target_type_id == tcp_id
    member = next(m for m in target.type(tcp_id).members if m.name == "srtt_us")
    assert srtt.new_value == member.bit_offset // 8 and not srtt.poisoned
    print(f"\nvmlinux: read+parse+2 CO-RE relocations: {elapsed * 1000:.1f} ms")


# ----------------------------------------------- ground truth: libbpf itself

SOURCE = paths.TEST_BPF / "core_kinds.bpf.c"


def libbpf_decisions(obj: Path) -> list[str]:
    pin = Path("/sys/fs/bpf") / f"ttcp_core_kinds_{os.getpid()}"
    try:
        run = subprocess.run(["bpftool", "-d", "prog", "loadall", str(obj), str(pin)],
                             check=False, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(pin, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (run.stdout + run.stderr).splitlines()
    return [ln.split(": ", 1)[1] for ln in lines
            if re.match(r"libbpf: prog '[^']+': relo #\d+: ", ln)]


def ttcp_decisions(obj: Path) -> list[str]:
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        elf = ELFFile(f)
        local = Btf.parse(elf.get_section_by_name(".BTF").data())
        ext = BtfExt.parse(elf.get_section_by_name(".BTF.ext").data(), local)
        starts: dict[str, list[int]] = {}
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and isinstance(sym["st_shndx"], int):
                sec_name = elf.get_section(sym["st_shndx"]).name
                starts.setdefault(sec_name, []).append(sym["st_value"] // 8)
        code = {sec: bytearray(elf.get_section_by_name(sec).data()) for sec in ext.core_relos}
    with open(VMLINUX, "rb") as f:
        resolver = CoreResolver(local, Btf.parse(f.read()))
    out = []
    for sec, relos in ext.core_relos.items():
        for rel in relos:
            idx = rel.insn_idx - max(s for s in starts[sec] if s <= rel.insn_idx)
            pre = f"relo #{rel.index}: "
            res = resolver.resolve(rel)
            out.append(pre + res.local_spec)
            out += [pre + f"{'' if c.matched else 'non-'}matching candidate #{n} {c.spec}"
                    for n, c in enumerate(res.candidates)]
            if rel.kind != C.TYPE_ID_LOCAL and not any(c.matched for c in res.candidates):
                out.append(pre + "no matching targets found")
            label = C.insn_class_label(code[sec], rel.insn_idx)
            ldimm64 = label == "LDIMM64"
            old, new = patch_insn(code[sec], rel.insn_idx, res)
            if new is None:
                out += [pre + f"substituting insn #{idx + k} w/ invalid insn"
                        for k in range(2 if ldimm64 else 1)]
                continue
            field = {"ALU/ALU64": "imm", "LDX/ST/STX": "off", "LDIMM64": "imm64"}[label]
            out.append(pre + f"patched insn #{idx} ({label}) {field} {old} -> {new}")
            if label == "LDX/ST/STX" and res.new_size != res.orig_size:
                out.append(pre + f"patched insn #{idx} ({label}) mem_sz {res.orig_size} -> "
                           f"{res.new_size}")
    return out


@pytest.mark.kernel
def test_same_decisions_as_libbpf(tmp_path: Path) -> None:
    """Every relocation of core_kinds.bpf.c resolved and patched exactly as
    libbpf (bpftool -d) does it on this kernel."""
    assert shutil.which("clang") and shutil.which("bpftool"), "run `make deps` (clang, bpftool)"
    obj = tmp_path / "core_kinds.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-c", str(SOURCE), "-o", str(obj)],
                   check=True)
    theirs = [ln.split(": ", 1)[1] for ln in libbpf_decisions(obj)]
    mine = ttcp_decisions(obj)
    assert sorted(mine) == sorted(theirs)
    kinds = {m.group(1) for ln in mine if (m := re.search(r"^relo #\d+: <(\w+)>", ln))}
    assert len(kinds) >= 12  # all but type_matches (clang >= 15)
