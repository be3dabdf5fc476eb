"""Read a clang-compiled BPF ELF object into plain data (pure: no kernel).

What comes out is everything the loader needs and nothing it has to look up
in the ELF again: functions per executable section with their bytes, the
relocations inside them, global data sections, the license, and the raw
.BTF/.BTF.ext blobs with the section sizes and symbol offsets that the
kernel wants filled into BTF.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, Symbol, SymbolTableSection

from ttcp.errors import FormatError
from ttcp.obj.asm import INSN_SIZE

EM_BPF = 247
SHF_EXECINSTR = 0x4
SHT_NOBITS = 8
STT_SECTION = 3
STT_FUNC = 2
R_BPF_64_64 = 1  # ldimm64 against a map or data symbol
R_BPF_64_32 = 10  # call to a function in another section
DATA_PREFIXES = (".rodata", ".data", ".bss")
MAX_SECTION_SIZE = 16 << 20  # the kernel's BTF_MAX_SIZE; no program, map value or BTF is bigger

# Sections whose relocations we never apply (debug info, BTF itself).
_IGNORED_RELOC_TARGETS = (".debug", ".BTF", ".eh_frame")


@dataclass(frozen=True)
class Reloc:
    """One relocation inside an executable section.

    `insn` is the instruction index within the section; `symbol` the symbol
    name; `section` the name of the section the symbol lives in; `value` the
    symbol's value (offset in that section); `is_section_symbol` tells a
    section symbol (offset then carried by the instruction's imm) from a
    named one.
    """

    insn: int
    symbol: str
    section: str
    value: int
    is_section_symbol: bool
    rtype: int


@dataclass(frozen=True)
class Function:
    """A function symbol inside an executable section."""

    name: str
    section: str
    start: int  # instruction index within the section
    count: int  # number of instructions


@dataclass
class ExecSection:
    """An executable section: its bytes, functions and relocations."""

    name: str
    data: bytes
    functions: list[Function] = field(default_factory=list)
    relocs: dict[int, Reloc] = field(default_factory=dict)  # by insn index

    @property
    def insn_count(self) -> int:
        return len(self.data) // INSN_SIZE


@dataclass(frozen=True)
class DataSection:
    """A global data section (.rodata*, .data*, .bss*): becomes an array map."""

    name: str
    size: int
    data: bytes  # zeroes for .bss
    readonly: bool


@dataclass
class BpfObject:
    """Everything the loader needs from one BPF ELF object."""

    path: str
    license: str
    exec_sections: dict[str, ExecSection]
    data_sections: dict[str, DataSection]
    map_symbols: dict[str, int]  # .maps symbol name -> offset
    btf: bytes | None
    btf_ext: bytes | None
    section_sizes: dict[str, int]
    symbol_offsets: dict[str, int]

    @property
    def programs(self) -> list[Function]:
        """Entry points: functions of executable sections other than .text."""
        return [
            f
            for sec in self.exec_sections.values()
            if sec.name != ".text"
            for f in sec.functions
        ]

    def function(self, section: str, start: int) -> Function | None:
        sec = self.exec_sections.get(section)
        if sec is None:
            return None
        for f in sec.functions:
            if f.start == start:
                return f
        return None


def read_object(source: str | bytes, name: str = "") -> BpfObject:
    """Parse a BPF ELF object from a path or from bytes.

    Raises FormatError("ELF", ...) for anything that is not a well-formed
    little-endian 64-bit BPF relocatable object.
    """
    if isinstance(source, bytes):
        data, path = source, name or "<bytes>"
    else:
        path = source
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise FormatError("ELF", f"cannot read {source}: {e.strerror}") from e
    try:
        return _read(_Stream(data), path)
    except (ELFError, zlib.error) as e:
        # What pyelftools raises on malformed input: ELFError (its parse errors
        # included) and, for a corrupt compressed section, zlib's error. Any
        # other exception is a bug, in ttcp or in pyelftools, and propagates.
        raise FormatError("ELF", f"{path}: malformed object ({type(e).__name__}: {e})") from e


class _Stream(io.BytesIO):
    """The object's bytes as pyelftools reads them. It seeks to whatever
    offsets the headers hold, unchecked; one seek() cannot take (2**63 or
    more) is a malformed header, so it becomes pyelftools' own parse error
    instead of an OverflowError that could also come from a bug."""

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        try:
            return super().seek(pos, whence)
        except (OverflowError, ValueError) as e:
            raise ELFParseError(f"cannot seek to offset {pos}") from e


def _read(stream: BinaryIO, path: str) -> BpfObject:
    elf = ELFFile(stream)
    if elf["e_machine"] not in ("EM_BPF", EM_BPF):
        raise FormatError("ELF", f"{path}: not a BPF object (machine {elf['e_machine']})")
    if elf.elfclass != 64 or not elf.little_endian:
        raise FormatError("ELF", f"{path}: only 64-bit little-endian BPF objects are supported")

    sections = list(elf.iter_sections())
    symtab = next((s for s in sections if isinstance(s, SymbolTableSection)), None)
    if symtab is None:
        raise FormatError("ELF", f"{path}: no symbol table")
    symbols = list(symtab.iter_symbols())

    exec_secs: dict[str, ExecSection] = {}
    data_secs: dict[str, DataSection] = {}
    sizes: dict[str, int] = {}
    license_text = ""
    btf = btf_ext = None
    maps_index = -1
    for index, sec in enumerate(sections):
        sname = sec.name
        sizes[sname] = sec["sh_size"]
        if sec["sh_flags"] & SHF_EXECINSTR and sec["sh_size"]:
            body = _data(sec, path)
            if len(body) % INSN_SIZE:
                raise FormatError("ELF", f"{path}: section {sname} is not a whole number of instructions")
            exec_secs[sname] = ExecSection(sname, body)
        elif sname == "license":
            license_text = _data(sec, path).split(b"\0", 1)[0].decode("ascii", "replace")
        elif sname == ".BTF":
            btf = _data(sec, path)
        elif sname == ".BTF.ext":
            btf_ext = _data(sec, path)
        elif sname == ".maps":
            maps_index = index
        elif sname.startswith(DATA_PREFIXES) and sec["sh_type"] != "SHT_NULL":
            body = _data(sec, path)  # zeroes for SHT_NOBITS (.bss)
            readonly = sname.startswith(".rodata")
            data_secs[sname] = DataSection(sname, sec["sh_size"], body, readonly)

    names_by_index = {i: s.name for i, s in enumerate(sections)}
    map_symbols: dict[str, int] = {}
    symbol_offsets: dict[str, int] = {}
    for sym in symbols:
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int):
            continue
        sec_name = names_by_index.get(shndx, "")
        kind = sym["st_info"]["type"]
        if sym.name and kind != "STT_SECTION":
            symbol_offsets.setdefault(sym.name, sym["st_value"])
        if shndx == maps_index and sym.name and kind != "STT_SECTION":
            map_symbols[sym.name] = sym["st_value"]
        if sec_name in exec_secs and kind == "STT_FUNC":
            start, size = sym["st_value"], sym["st_size"]
            if start % INSN_SIZE or size % INSN_SIZE or start + size > len(exec_secs[sec_name].data):
                raise FormatError("ELF", f"{path}: function {sym.name} lies outside its section")
            exec_secs[sec_name].functions.append(
                Function(sym.name, sec_name, start // INSN_SIZE, size // INSN_SIZE)
            )
    for exec_sec in exec_secs.values():
        exec_sec.functions.sort(key=lambda f: f.start)

    for sec in sections:
        if not isinstance(sec, RelocationSection):
            continue
        target = names_by_index.get(sec["sh_info"], "")
        if target.startswith(_IGNORED_RELOC_TARGETS) or target not in exec_secs:
            continue
        _read_relocs(exec_secs[target], sec, symbols, names_by_index, path)

    return BpfObject(
        path=path,
        license=license_text,
        exec_sections=exec_secs,
        data_sections=data_secs,
        map_symbols=map_symbols,
        btf=btf,
        btf_ext=btf_ext,
        section_sizes=sizes,
        symbol_offsets=symbol_offsets,
    )


def _data(sec: Section, path: str) -> bytes:
    """The bytes of a section we use, refusing absurd claimed sizes first:
    pyelftools builds a NOBITS section's zeroes and inflates a compressed
    one at whatever size the header claims, so a few hostile header bytes
    could otherwise cost gigabytes."""
    if sec.data_size > MAX_SECTION_SIZE:
        raise FormatError("ELF", f"{path}: section {sec.name} claims {sec.data_size} bytes "
                                 f"(no BPF object section exceeds {MAX_SECTION_SIZE})")
    return sec.data()


def _read_relocs(target: ExecSection, relsec: RelocationSection, symbols: list[Symbol],
                 names_by_index: dict[int, str], path: str) -> None:
    for rel in relsec.iter_relocations():
        offset = rel["r_offset"]
        sym_index = rel["r_info_sym"]
        if offset % INSN_SIZE or offset >= len(target.data):
            raise FormatError("ELF", f"{path}: relocation at {offset} outside {target.name}")
        if sym_index >= len(symbols):
            raise FormatError("ELF", f"{path}: relocation names symbol {sym_index}, which does not exist")
        sym = symbols[sym_index]
        shndx = sym["st_shndx"]
        sec_name = names_by_index.get(shndx, "") if isinstance(shndx, int) else str(shndx)
        is_section = sym["st_info"]["type"] == "STT_SECTION"
        target.relocs[offset // INSN_SIZE] = Reloc(
            insn=offset // INSN_SIZE,
            symbol=sec_name if is_section else sym.name,
            section=sec_name,
            value=sym["st_value"],
            is_section_symbol=is_section,
            rtype=rel["r_info_type"],
        )
