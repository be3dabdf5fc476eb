"""Turn an ELF function into one loadable instruction stream (pure).

The kernel loads a program as one array of instructions; functions it calls
(static subprograms, usually in .text) are appended after it and the call
offsets rewritten. Map and global-data references are recorded as MapRefs so
the loader can fill in file descriptors once the maps exist.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .elf_object import (
    INSN_SIZE,
    R_BPF_64_64,
    BpfObject,
    Function,
)
from .errors import FormatError
from .sections import SectionKind, classify

BPF_LD_IMM64 = 0x18
BPF_CALL = 0x85
BPF_PSEUDO_MAP_FD = 1
BPF_PSEUDO_MAP_VALUE = 2
BPF_PSEUDO_CALL = 1
BPF_PSEUDO_FUNC = 4
MAX_PIECES = 4096  # bound on appended subprograms (hostile objects)

_INSN = struct.Struct("<BBhi")


@dataclass(frozen=True)
class Piece:
    """A run of a section's instructions placed at `base` in the program."""

    section: str
    start: int
    count: int
    base: int

    def contains(self, section: str, insn: int) -> bool:
        return section == self.section and self.start <= insn < self.start + self.count

    def to_program(self, insn: int) -> int:
        return self.base + insn - self.start


@dataclass(frozen=True)
class MapRef:
    """An ldimm64 at `insn` that must point at map `map_name`.

    `value_offset` is None for a map reference, or the byte offset into a
    global-data map's value (BPF_PSEUDO_MAP_VALUE).
    """

    insn: int
    map_name: str
    value_offset: int | None


@dataclass
class ProgramImage:
    """A program ready for relocation: its bytes and where they came from."""

    name: str
    section: str
    kind: SectionKind
    insns: bytearray
    pieces: list[Piece] = field(default_factory=list)
    map_refs: list[MapRef] = field(default_factory=list)

    @property
    def insn_count(self) -> int:
        return len(self.insns) // INSN_SIZE

    def locate(self, section: str, insn: int) -> int | None:
        """Program index of a section's instruction, if it was placed."""
        for p in self.pieces:
            if p.contains(section, insn):
                return p.to_program(insn)
        return None

    def set_map_fds(self, fds: dict[str, int]) -> None:
        """Point every map reference at its map's file descriptor."""
        for ref in self.map_refs:
            off = ref.insn * INSN_SIZE
            code, regs, o, _ = _INSN.unpack_from(self.insns, off)
            src = BPF_PSEUDO_MAP_FD if ref.value_offset is None else BPF_PSEUDO_MAP_VALUE
            _INSN.pack_into(self.insns, off, code, (regs & 0x0F) | (src << 4), o, fds[ref.map_name])
            if ref.value_offset is not None:
                c2, r2, o2, _ = _INSN.unpack_from(self.insns, off + INSN_SIZE)
                _INSN.pack_into(self.insns, off + INSN_SIZE, c2, r2, o2, ref.value_offset)


def link_program(obj: BpfObject, func: Function) -> ProgramImage:
    """Build the program for entry point `func`, appending called subprograms."""
    image = ProgramImage(func.name, func.section, classify(func.section), bytearray())
    _place(obj, image, func)
    done = 0
    while done < len(image.pieces):
        piece = image.pieces[done]
        done += 1
        for i in range(piece.start, piece.start + piece.count):
            _relocate_insn(obj, image, piece, i)
    return image


def _place(obj: BpfObject, image: ProgramImage, func: Function) -> Piece:
    if len(image.pieces) >= MAX_PIECES:
        raise FormatError("ELF", f"{func.name}: more than {MAX_PIECES} subprograms")
    sec = obj.exec_sections[func.section]
    piece = Piece(func.section, func.start, func.count, image.insn_count)
    image.insns += sec.data[func.start * INSN_SIZE:(func.start + func.count) * INSN_SIZE]
    image.pieces.append(piece)
    return piece


def _relocate_insn(obj: BpfObject, image: ProgramImage, piece: Piece, i: int) -> None:
    sec = obj.exec_sections[piece.section]
    at = piece.to_program(i)
    code, regs, _, imm = _INSN.unpack_from(image.insns, at * INSN_SIZE)
    src = regs >> 4
    reloc = sec.relocs.get(i)
    is_call = code == BPF_CALL and src == BPF_PSEUDO_CALL
    is_func_ptr = code == BPF_LD_IMM64 and src == BPF_PSEUDO_FUNC
    if is_call or is_func_ptr or (reloc is not None and reloc.section in obj.exec_sections):
        _link_call(obj, image, piece, i, at, imm, reloc)
    elif reloc is not None:
        _record_map_ref(obj, image, at, imm, reloc, code)


def _link_call(obj: BpfObject, image: ProgramImage, piece: Piece, i: int, at: int,
               imm: int, reloc) -> None:
    code = _INSN.unpack_from(image.insns, at * INSN_SIZE)[0]
    if reloc is not None and code == BPF_LD_IMM64:
        # A function's address (callbacks): imm is a byte offset.
        target_sec, target = reloc.section, (reloc.value + imm) // INSN_SIZE
    elif reloc is not None:
        target_sec = reloc.section
        target = reloc.value // INSN_SIZE + imm + 1
    else:
        target_sec, target = piece.section, i + imm + 1
    placed = image.locate(target_sec, target)
    if placed is None:
        func = _function_at(obj, target_sec, target, image.name)
        placed = _place(obj, image, func).to_program(target)
    code, regs, off, _ = _INSN.unpack_from(image.insns, at * INSN_SIZE)
    if code == BPF_LD_IMM64:
        regs = (regs & 0x0F) | (BPF_PSEUDO_FUNC << 4)
    else:
        regs = (regs & 0x0F) | (BPF_PSEUDO_CALL << 4)
    _INSN.pack_into(image.insns, at * INSN_SIZE, code, regs, off, placed - at - 1)


def _function_at(obj: BpfObject, section: str, insn: int, prog: str) -> Function:
    sec = obj.exec_sections.get(section)
    if sec is not None:
        for f in sec.functions:
            if f.start == insn:
                return f
    raise FormatError("ELF", f"{prog}: call to {section}+{insn} is not the start of a function")


def _record_map_ref(obj: BpfObject, image: ProgramImage, at: int, imm: int, reloc,
                    code: int) -> None:
    if reloc.rtype != R_BPF_64_64 or code != BPF_LD_IMM64:
        raise FormatError(
            "ELF", f"{image.name}: unsupported relocation type {reloc.rtype} at insn {at}"
        )
    if reloc.section == ".maps":
        if reloc.symbol not in obj.map_symbols:
            raise FormatError("ELF", f"{image.name}: reference to unknown map {reloc.symbol!r}")
        image.map_refs.append(MapRef(at, reloc.symbol, None))
    elif reloc.section in obj.data_sections:
        offset = imm + (0 if reloc.is_section_symbol else reloc.value)
        image.map_refs.append(MapRef(at, reloc.section, offset))
    else:
        where = reloc.section or "no section (extern)"
        raise FormatError(
            "ELF", f"{image.name}: symbol {reloc.symbol!r} in {where} is not supported"
        )
