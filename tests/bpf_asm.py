"""A tiny eBPF assembler for tests: hand-built programs with exactly known
behaviour, so kernel-facing code is exercised without clang."""

from __future__ import annotations

import struct

from ttcp import syscalls

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

HELPER_SKB_LOAD_BYTES = 26
HELPER_RINGBUF_OUTPUT = 130
HELPER_RINGBUF_RESERVE = 131
HELPER_RINGBUF_SUBMIT = 132
HELPER_RINGBUF_DISCARD = 133


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def mov_imm(dst: int, imm: int) -> bytes:
    return insn(0xB7, dst, imm=imm)


def mov_reg(dst: int, src: int) -> bytes:
    return insn(0xBF, dst, src)


def add_imm(dst: int, imm: int) -> bytes:
    return insn(0x07, dst, imm=imm)


def ldx_b(dst: int, src: int, off: int) -> bytes:
    return insn(0x71, dst, src, off)


def jeq_imm(dst: int, imm: int, off: int) -> bytes:
    return insn(0x15, dst, off=off, imm=imm)


def call(helper: int) -> bytes:
    return insn(0x85, imm=helper)


def exit_() -> bytes:
    return insn(0x95)


def ld_map_fd(dst: int, fd: int) -> bytes:
    """ldimm64 with src=BPF_PSEUDO_MAP_FD: the kernel swaps the fd for the map."""
    return insn(0x18, dst, syscalls.BPF_PSEUDO_MAP_FD, imm=fd) + insn(0)


def ringbuf_writer(map_fd: int, size: int) -> bytes:
    """SOCKET_FILTER program: reserve `size` bytes, fill them from the packet
    (bytes after the 14-byte Ethernet header), then submit — or discard when
    the first payload byte is b"D". Returns 0 submitted, 3 discarded,
    1 reservation failed (ring full)."""
    body = [
        mov_reg(R6, R1),
        ld_map_fd(R1, map_fd),
        mov_imm(R2, size),
        mov_imm(R3, 0),
        call(HELPER_RINGBUF_RESERVE),
        jeq_imm(R0, 0, 18),  # -> full
        mov_reg(R7, R0),
        mov_reg(R1, R6),
        mov_imm(R2, 0),
        mov_reg(R3, R7),
        mov_imm(R4, size),
        call(HELPER_SKB_LOAD_BYTES),
        ldx_b(R1, R7, 0),
        jeq_imm(R1, ord("D"), 5),  # -> discard
        mov_reg(R1, R7),
        mov_imm(R2, 0),
        call(HELPER_RINGBUF_SUBMIT),
        mov_imm(R0, 0),
        exit_(),
        mov_reg(R1, R7),  # discard
        mov_imm(R2, 0),
        call(HELPER_RINGBUF_DISCARD),
        mov_imm(R0, 3),
        exit_(),
        mov_imm(R0, 1),  # full
        exit_(),
    ]
    return b"".join(body)


def packet(payload: bytes) -> bytes:
    """test_run input for a SOCKET_FILTER: Ethernet header, then `payload`."""
    return bytes(14) + payload


TRIVIAL = mov_imm(R0, 0) + exit_()
