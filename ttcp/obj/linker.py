"""Turn an ELF function into one loadable instruction stream (pure).

The kernel loads a program as one array of instructions; functions it calls
(static subprograms, usually in .text) are appended after it and the call
offsets rewritten. Map and global-data references are recorded as MapRefs so
the loader can fill in file descriptors once the maps exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ttcp.errors import FormatError
from ttcp.kernel.uapi import PSEUDO_CALL, PseudoSrc
from ttcp.obj import asm
from ttcp.obj.asm import INSN_SIZE
from ttcp.obj.elf import R_BPF_64_64, BpfObject, Function, Reloc
from ttcp.obj.sections import SectionKind, classify

MAX_PIECES = 4096  # bound on appended subprograms (hostile objects)


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
            src = PseudoSrc.MAP_FD if ref.value_offset is None else PseudoSrc.MAP_VALUE
            first = asm.decode(self.insns, ref.insn)
            asm.store(self.insns, ref.insn, first._replace(src=src, imm=fds[ref.map_name]))
            if ref.value_offset is not None:
                second = asm.decode(self.insns, ref.insn + 1)
                asm.store(self.insns, ref.insn + 1, second._replace(imm=ref.value_offset))


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
    ins = asm.decode(image.insns, at)
    reloc = sec.relocs.get(i)
    is_call = ins.code == asm.CALL and ins.src == PSEUDO_CALL
    is_func_ptr = ins.code == asm.LD_IMM64 and ins.src == PseudoSrc.FUNC
    if is_call or is_func_ptr or (reloc is not None and reloc.section in obj.exec_sections):
        _link_call(obj, image, piece, i, at, ins.imm, reloc)
    elif reloc is not None:
        _record_map_ref(obj, image, at, ins.imm, reloc, ins.code)


def _link_call(obj: BpfObject, image: ProgramImage, piece: Piece, i: int, at: int,
               imm: int, reloc: Reloc | None) -> None:
    ins = asm.decode(image.insns, at)
    if reloc is not None and ins.code == asm.LD_IMM64:
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
    src = PseudoSrc.FUNC if ins.code == asm.LD_IMM64 else PSEUDO_CALL
    asm.store(image.insns, at, ins._replace(src=src, imm=placed - at - 1))


def _function_at(obj: BpfObject, section: str, insn: int, prog: str) -> Function:
    sec = obj.exec_sections.get(section)
    if sec is not None:
        for f in sec.functions:
            if f.start == insn:
                return f
    raise FormatError("ELF", f"{prog}: call to {section}+{insn} is not the start of a function")


def _record_map_ref(obj: BpfObject, image: ProgramImage, at: int, imm: int, reloc: Reloc,
                    code: int) -> None:
    if reloc.rtype != R_BPF_64_64 or code != asm.LD_IMM64:
        raise FormatError(
            "ELF", f"{image.name}: unsupported relocation type {reloc.rtype} at insn {at}"
        )
    if reloc.section == ".maps":
        if reloc.symbol not in obj.map_symbols:
            raise FormatError("ELF", f"{image.name}: reference to unknown map {reloc.symbol!r}")
        image.map_refs.append(MapRef(at, reloc.symbol, None))
    elif reloc.section in obj.data_sections:
        offset = imm + (0 if reloc.is_section_symbol else reloc.value)
        size = obj.data_sections[reloc.section].size
        if not 0 <= offset < max(size, 1):
            raise FormatError("ELF", f"{image.name}: insn {at} points {offset} bytes into "
                              f"{reloc.section}, which holds {size}")
        image.map_refs.append(MapRef(at, reloc.section, offset))
    else:
        where = reloc.section or "no section (extern)"
        raise FormatError(
            "ELF", f"{image.name}: symbol {reloc.symbol!r} in {where} is not supported"
        )
