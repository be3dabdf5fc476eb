"""A tiny eBPF assembler for tests: hand-built programs with exactly known
behaviour, so kernel-facing code is exercised without clang."""

from __future__ import annotations

from ttcp.kernel.uapi import Helper, PseudoSrc
from ttcp.obj.asm import (  # noqa: F401 - the tests' one vocabulary for instructions
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R10,
    RETURN_0,
    SIZE_B,
    add_imm,
    call,
    exit_,
    insn,
    jeq_imm,
    ld_imm64,
    ldx,
    mov_imm,
    mov_reg,
)

TRIVIAL = RETURN_0


def ld_map_fd(dst: int, fd: int) -> bytes:
    """ldimm64 with src=BPF_PSEUDO_MAP_FD: the kernel swaps the fd for the map."""
    return ld_imm64(dst, fd, PseudoSrc.MAP_FD)


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
        call(Helper.RINGBUF_RESERVE),
        jeq_imm(R0, 0, 18),  # -> full
        mov_reg(R7, R0),
        mov_reg(R1, R6),
        mov_imm(R2, 0),
        mov_reg(R3, R7),
        mov_imm(R4, size),
        call(Helper.SKB_LOAD_BYTES),
        ldx(SIZE_B, R1, R7, 0),
        jeq_imm(R1, ord("D"), 5),  # -> discard
        mov_reg(R1, R7),
        mov_imm(R2, 0),
        call(Helper.RINGBUF_SUBMIT),
        mov_imm(R0, 0),
        exit_(),
        mov_reg(R1, R7),  # discard
        mov_imm(R2, 0),
        call(Helper.RINGBUF_DISCARD),
        mov_imm(R0, 3),
        exit_(),
        mov_imm(R0, 1),  # full
        exit_(),
    ]
    return b"".join(body)


def packet(payload: bytes) -> bytes:
    """test_run input for a SOCKET_FILTER: Ethernet header, then `payload`."""
    return bytes(14) + payload


