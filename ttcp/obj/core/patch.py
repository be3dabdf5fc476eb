"""Apply a CO-RE decision to its instruction (libbpf's bpf_core_patch_insn).

The decision says which value the instruction must hold now; where that
value lives depends on the instruction: the imm of an ALU op, the off of a
load/store (whose size may also change), the 64-bit constant of an ldimm64.
A poisoned decision turns the instruction into a call the verifier rejects
with a recognisable helper id, unless the program never reaches it.
"""

from __future__ import annotations

from ttcp.errors import CoreRelocationError
from ttcp.obj import asm
from ttcp.obj.asm import INSN_SIZE
from ttcp.obj.core.relo import CoreResult

POISON_IMM = 0xBAD2310  # libbpf's "bad relo" helper id: verifier says unknown#195896080
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

_BYTES_SIZE = {v: k for k, v in asm.SIZE_BYTES.items()}


def insn_class_label(insns: bytes | bytearray, insn_idx: int) -> str:
    """How libbpf names the instruction in its log: "ALU/ALU64", "LDX/ST/STX",
    "LDIMM64" or "other"."""
    code = insns[insn_idx * INSN_SIZE] if 0 <= insn_idx * INSN_SIZE < len(insns) else -1
    cls = code & 0x07
    if cls in (asm.CLASS_ALU, asm.CLASS_ALU64):
        return "ALU/ALU64"
    if cls in (asm.CLASS_LDX, asm.CLASS_ST, asm.CLASS_STX):
        return "LDX/ST/STX"
    if code == asm.LD_IMM64:
        return "LDIMM64"
    return "other"


def _poison(insns: bytearray, idx: int) -> None:
    asm.store(insns, idx, asm.Insn(asm.CALL, 0, 0, 0, POISON_IMM))


def patch_insn(insns: bytearray, insn_idx: int, result: CoreResult) -> tuple[int, int | None]:
    """Apply `result` to instruction `insn_idx` in place, like libbpf's
    bpf_core_patch_insn. Returns (old value read from the insn, new value),
    new None when the instruction was poisoned (turned into
    `call 0xbad2310`, both halves of an ldimm64). Values are u64 as libbpf
    prints them (a negative imm/off reads as 2**64 - n)."""
    where = f"insn #{insn_idx}"
    if insn_idx < 0 or insn_idx >= asm.count(insns):
        raise CoreRelocationError(f"{where} out of range ({asm.count(insns)} instructions)")
    ins = asm.decode(insns, insn_idx)
    code, off, imm, cls = ins.code, ins.off, ins.imm, ins.cls
    new = result.new_value
    if result.poisoned or new is None:  # one implies the other
        old = _current_value(insns, insn_idx)
        if code == asm.LD_IMM64:
            _check_ldimm64_room(insns, insn_idx)
            _poison(insns, insn_idx + 1)
        _poison(insns, insn_idx)
        return old, None
    if cls in (asm.CLASS_ALU, asm.CLASS_ALU64):
        return _patch_alu(insns, insn_idx, result, code, imm, new)
    if cls in (asm.CLASS_LDX, asm.CLASS_ST, asm.CLASS_STX):
        return _patch_mem(insns, insn_idx, result, code, off, new)
    if code == asm.LD_IMM64:
        return _patch_ldimm64(insns, insn_idx, result, ins, new)
    raise CoreRelocationError(f"{where}: cannot relocate instruction code 0x{code:02x} "
                              f"(regs 0x{ins.src << 4 | ins.dst:02x} off {off} imm {imm})")


def _current_value(insns: bytearray, idx: int) -> int:
    ins = asm.decode(insns, idx)
    if ins.cls in (asm.CLASS_LDX, asm.CLASS_ST, asm.CLASS_STX):
        return ins.off & _U64
    if ins.code == asm.LD_IMM64 and idx + 2 <= asm.count(insns):
        return asm.ldimm64_value(insns, idx)
    return ins.imm & _U64


def _check_value(insn_idx: int, result: CoreResult, got: int) -> None:
    if result.validate and got != result.local_value:
        raise CoreRelocationError(
            f"insn #{insn_idx}: expected {result.local_value} got {got} "
            f"({result.kind_name} {result.spec}; the object does not match its BTF)")


def _patch_alu(insns: bytearray, idx: int, result: CoreResult, code: int, imm: int,
               new: int) -> tuple[int, int]:
    if code & asm.SOURCE_X:  # register source, nothing to patch
        raise CoreRelocationError(f"insn #{idx}: ALU instruction with a register source")
    old = imm & _U64
    _check_value(idx, result, old)
    ins = asm.decode(insns, idx)
    asm.store(insns, idx, ins._replace(imm=asm.s32(new & _U32)))
    return old, new


def _patch_mem(insns: bytearray, idx: int, result: CoreResult, code: int, off: int,
               new: int) -> tuple[int, int | None]:
    old = off & _U64
    _check_value(idx, result, old)
    if new > 0x7FFF:
        raise CoreRelocationError(f"insn #{idx}: offset {new} does not fit the 16-bit "
                                  "offset field")
    if result.fail_memsz_adjust:
        _poison(insns, idx)
        return old, None
    asm.store(insns, idx, asm.decode(insns, idx)._replace(off=new))
    if result.new_size != result.orig_size:
        size = asm.SIZE_BYTES[code & 0x18]
        if size != result.orig_size:
            raise CoreRelocationError(f"insn #{idx}: accesses {size} bytes, the field "
                                      f"has {result.orig_size}")
        if result.new_size not in _BYTES_SIZE:
            raise CoreRelocationError(f"insn #{idx}: no load/store of "
                                      f"{result.new_size} bytes")
        ins = asm.decode(insns, idx)
        asm.store(insns, idx, ins._replace(code=(code & 0xE0) | _BYTES_SIZE[result.new_size] | (code & 0x07)))
    return old, new


def _check_ldimm64_room(insns: bytearray, idx: int) -> None:
    if idx + 2 > asm.count(insns):
        raise CoreRelocationError(f"insn #{idx}: ldimm64 lacks its second half")


def _patch_ldimm64(insns: bytearray, idx: int, result: CoreResult, ins: asm.Insn,
                   new: int) -> tuple[int, int]:
    _check_ldimm64_room(insns, idx)
    second = asm.decode(insns, idx + 1)
    if ins.src or ins.off or second.code or second.dst or second.src or second.off:
        raise CoreRelocationError(f"insn #{idx}: ldimm64 has an unexpected form")
    old = _current_value(insns, idx)
    _check_value(idx, result, old)
    asm.set_ldimm64_value(insns, idx, new & _U64)
    return old, new
