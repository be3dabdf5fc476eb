"""The eBPF instruction: its one encoder and decoder (pure).

An instruction is 8 bytes, `{u8 code; u8 dst:4, src:4; s16 off; s32 imm}`
little-endian on every architecture ttcp runs on; an ldimm64 takes two, the
second holding the upper 32 bits of the constant in its imm. The linker, the
CO-RE patcher, the feature probes and the tests all go through here.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ttcp.kernel.uapi import Helper

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")

# Opcode classes (code & 0x07), sizes (code & 0x18), and the few whole opcodes
# ttcp recognises (uapi/linux/bpf_common.h, bpf.h).
CLASS_LD, CLASS_LDX, CLASS_ST, CLASS_STX = 0x00, 0x01, 0x02, 0x03
CLASS_ALU, CLASS_JMP, CLASS_JMP32, CLASS_ALU64 = 0x04, 0x05, 0x06, 0x07
SIZE_W, SIZE_H, SIZE_B, SIZE_DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {SIZE_W: 4, SIZE_H: 2, SIZE_B: 1, SIZE_DW: 8}
SOURCE_X = 0x08  # register source (else immediate)
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
CALL = 0x85  # BPF_JMP | BPF_CALL
EXIT = 0x95  # BPF_JMP | BPF_EXIT

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)


class Insn(NamedTuple):
    code: int
    dst: int
    src: int
    off: int
    imm: int

    @property
    def cls(self) -> int:
        return self.code & 0x07

    def encode(self) -> bytes:
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, self.imm)


def decode(buf: bytes | bytearray | memoryview, index: int) -> Insn:
    """The instruction at `index` (not bytes: instruction slots)."""
    code, regs, off, imm = _INSN.unpack_from(buf, index * INSN_SIZE)
    return Insn(code, regs & 0x0F, regs >> 4, off, imm)


def store(buf: bytearray, index: int, insn: Insn) -> None:
    """Overwrite the instruction at `index`."""
    _INSN.pack_into(buf, index * INSN_SIZE, insn.code, (insn.src << 4) | insn.dst, insn.off, insn.imm)


def count(buf: bytes | bytearray) -> int:
    return len(buf) // INSN_SIZE


def ldimm64_value(buf: bytes | bytearray, index: int) -> int:
    """The 64-bit constant of the ldimm64 pair starting at `index`."""
    lo, hi = decode(buf, index).imm, decode(buf, index + 1).imm
    return (lo & 0xFFFFFFFF) | (hi & 0xFFFFFFFF) << 32


def set_ldimm64_value(buf: bytearray, index: int, value: int) -> None:
    first, second = decode(buf, index), decode(buf, index + 1)
    store(buf, index, first._replace(imm=s32(value & 0xFFFFFFFF)))
    store(buf, index + 1, second._replace(imm=s32((value >> 32) & 0xFFFFFFFF)))


def s32(u: int) -> int:
    return u - (1 << 32) if u & 0x80000000 else u


# ---- builders for hand-written programs (feature probes, tests) ----


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return Insn(code, dst, src, off, imm).encode()


def mov_imm(dst: int, imm: int) -> bytes:
    return insn(CLASS_ALU64 | 0xB0, dst, imm=imm)


def mov_reg(dst: int, src: int) -> bytes:
    return insn(CLASS_ALU64 | 0xB0 | SOURCE_X, dst, src)


def add_imm(dst: int, imm: int) -> bytes:
    return insn(CLASS_ALU64 | 0x00, dst, imm=imm)


def ldx(size: int, dst: int, src: int, off: int) -> bytes:
    return insn(CLASS_LDX | 0x60 | size, dst, src, off)


def st_imm(size: int, dst: int, off: int, imm: int) -> bytes:
    return insn(CLASS_ST | 0x60 | size, dst, off=off, imm=imm)


def jeq_imm(dst: int, imm: int, off: int) -> bytes:
    return insn(CLASS_JMP | 0x10, dst, off=off, imm=imm)


def call(helper: int | Helper) -> bytes:
    return insn(CALL, imm=int(helper))


def exit_() -> bytes:
    return insn(EXIT)


def ld_imm64(dst: int, value: int, src: int = 0) -> bytes:
    """Two slots; with src = a PseudoSrc the kernel reads `value` as an fd."""
    return (insn(LD_IMM64, dst, src, imm=s32(value & 0xFFFFFFFF))
            + insn(0, imm=s32((value >> 32) & 0xFFFFFFFF)))


RETURN_0 = mov_imm(R0, 0) + exit_()
