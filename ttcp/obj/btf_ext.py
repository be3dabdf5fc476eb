""".BTF.ext: per-instruction func_info, line_info and CO-RE relocation records.

Pure parser. Layout (little-endian): header {magic u16 0xEB9F, version u8,
flags u8, hdr_len u32, func_info_off/len, line_info_off/len, and when
hdr_len >= 32 core_relo_off/len}, offsets counted from the end of the header.
Each part is `u32 rec_size` followed by blocks `{sec_name_off u32 (into the
.BTF strings), num_info u32, num_info * rec_size bytes}`. Records may be
bigger than the fields known here (rec_size > minimum): the raw bytes are
kept so encoding them for PROG_LOAD preserves the unknown tail.

insn_off in records is a byte offset from the start of the ELF section; the
kernel wants instruction indices relative to the program, see encode_*.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ttcp.errors import FormatError
from ttcp.obj.asm import INSN_SIZE
from ttcp.obj.btf import Btf, check_header

HEADER_MIN = 24  # up to line_info_len
HEADER_CORE = 32  # up to core_relo_len
FUNC_INFO_MIN = 8
LINE_INFO_MIN = 16
CORE_RELO_MIN = 16

_WHAT = ".BTF.ext"
R = TypeVar("R")


def _bad(message: str) -> FormatError:
    return FormatError(_WHAT, message)


@dataclass(frozen=True, slots=True)
class FuncInfo:
    """A subprogram start: insn_off (bytes) and its FUNC type id."""

    insn_off: int
    type_id: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class LineInfo:
    """Source position of the instruction at insn_off (bytes)."""

    insn_off: int
    file_name_off: int
    line_off: int
    line_col: int
    raw: bytes

    @property
    def line(self) -> int:
        return self.line_col >> 10

    @property
    def column(self) -> int:
        return self.line_col & 0x3FF


@dataclass(frozen=True, slots=True)
class CoreRelo:
    """A CO-RE relocation of the instruction at insn_off (bytes).

    access_str is the decoded access string ("0:1:2"); `index` is the
    record's position in its section block, as libbpf numbers "relo #N".
    """

    insn_off: int
    type_id: int
    access_str_off: int
    kind: int
    access_str: str
    index: int = 0

    @property
    def insn_idx(self) -> int:
        """Instruction index within the ELF section."""
        return self.insn_off // INSN_SIZE


class BtfExt:
    """Parsed .BTF.ext: records grouped by ELF section name, file order."""

    def __init__(self) -> None:  # use BtfExt.parse
        self.func_info: dict[str, list[FuncInfo]] = {}
        self.line_info: dict[str, list[LineInfo]] = {}
        self.core_relos: dict[str, list[CoreRelo]] = {}
        self.func_info_rec_size = FUNC_INFO_MIN
        self.line_info_rec_size = LINE_INFO_MIN
        self.core_relo_rec_size = CORE_RELO_MIN

    @classmethod
    def parse(cls, data: bytes, btf: Btf) -> BtfExt:
        """Parse and bounds-check .BTF.ext; section names come from `btf`."""
        data = bytes(data)
        if len(data) < 8:
            raise _bad(f"truncated header: {len(data)} bytes")
        hdr_len = check_header(data, HEADER_MIN, _WHAT, "section")
        ext = cls()
        fi_off, fi_len, li_off, li_len = struct.unpack_from("<IIII", data, 8)
        size, parts = ext._part(data, hdr_len, fi_off, fi_len, FUNC_INFO_MIN, "func_info", btf)
        ext.func_info_rec_size = size
        ext.func_info = _group(parts, _func_info)
        size, parts = ext._part(data, hdr_len, li_off, li_len, LINE_INFO_MIN, "line_info", btf)
        ext.line_info_rec_size = size
        ext.line_info = _group(parts, _line_info)
        if hdr_len >= HEADER_CORE:
            cr_off, cr_len = struct.unpack_from("<II", data, 24)
            size, parts = ext._part(data, hdr_len, cr_off, cr_len, CORE_RELO_MIN,
                                    "core_relo", btf)
            ext.core_relo_rec_size = size
            ext.core_relos = _core_relos(parts, btf)
        return ext

    @staticmethod
    def _part(data: bytes, hdr_len: int, off: int, length: int, min_size: int,
              what: str, btf: Btf) -> tuple[int, list[tuple[str, list[bytes]]]]:
        """Split one part into (rec_size, [(section name, [raw records])])."""
        if length == 0:
            return min_size, []
        start = hdr_len + off
        end = start + length
        if off % 4:
            raise _bad(f"{what} at offset {off} is not 4-byte aligned")
        if end > len(data):
            raise _bad(f"{what} (off {off}, len {length}) runs past the end of the section")
        if length < 4:
            raise _bad(f"{what}: no record size")
        (rec_size,) = struct.unpack_from("<I", data, start)
        if rec_size < min_size or rec_size % 4:
            raise _bad(f"{what}: invalid record size {rec_size} (minimum {min_size}, "
                       "multiple of 4)")
        pos = start + 4
        if pos == end:
            raise _bad(f"{what}: record size but no records")
        blocks = []
        while pos < end:
            if end - pos < 8:
                raise _bad(f"{what}: truncated block header at offset {pos - hdr_len}")
            name_off, count = struct.unpack_from("<II", data, pos)
            if count == 0:
                raise _bad(f"{what}: block at offset {pos - hdr_len} has no records")
            if count * rec_size > end - pos - 8:
                raise _bad(f"{what}: block at offset {pos - hdr_len} claims {count} "
                           f"records of {rec_size} bytes, more than the part holds")
            try:
                name = btf.string(name_off)
            except FormatError as err:
                raise _bad(f"{what}: section name: {err.message}") from None
            pos += 8
            records = [data[p:p + rec_size] for p in range(pos, pos + count * rec_size, rec_size)]
            blocks.append((name, records))
            pos += count * rec_size
        return rec_size, blocks


def _group(blocks: list[tuple[str, list[bytes]]], make: Callable[[bytes], R]) -> dict[str, list[R]]:
    out: dict[str, list[R]] = {}
    for name, records in blocks:
        out.setdefault(name, []).extend(make(raw) for raw in records)
    return out


def _func_info(raw: bytes) -> FuncInfo:
    insn_off, type_id = struct.unpack_from("<II", raw)
    return FuncInfo(insn_off, type_id, raw)


def _line_info(raw: bytes) -> LineInfo:
    insn_off, file_name_off, line_off, line_col = struct.unpack_from("<IIII", raw)
    return LineInfo(insn_off, file_name_off, line_off, line_col, raw)


def _core_relos(blocks: list[tuple[str, list[bytes]]], btf: Btf) -> dict[str, list[CoreRelo]]:
    out: dict[str, list[CoreRelo]] = {}
    for name, records in blocks:
        dest = out.setdefault(name, [])
        for index, raw in enumerate(records):
            insn_off, type_id, str_off, kind = struct.unpack_from("<IIII", raw)
            if insn_off % INSN_SIZE:
                raise _bad(f"core_relo #{index} in '{name}': insn_off {insn_off} is not "
                           "a multiple of 8")
            try:
                access = btf.string(str_off)
            except FormatError as err:
                raise _bad(f"core_relo #{index} in '{name}': access string: "
                           f"{err.message}") from None
            dest.append(CoreRelo(insn_off, type_id, str_off, kind, access, index))
    return out


def _encode(records: Iterable[FuncInfo | LineInfo], insn_base: int,
            rec_size: int | None, what: str) -> bytes:
    out = []
    for rec in records:
        raw = rec.raw
        if rec_size is None:
            rec_size = len(raw)
        if len(raw) != rec_size or rec_size < 4:
            raise _bad(f"{what} record of {len(raw)} bytes, expected {rec_size}")
        if rec.insn_off % INSN_SIZE:
            raise _bad(f"{what}: insn_off {rec.insn_off} is not a multiple of 8")
        index = rec.insn_off // INSN_SIZE - insn_base
        if not 0 <= index <= 0xFFFFFFFF:
            raise _bad(f"{what}: instruction {rec.insn_off // INSN_SIZE} lies before the "
                       f"program start {insn_base}")
        out.append(struct.pack("<I", index) + raw[4:])
    return b"".join(out)


def encode_func_info(records: Iterable[FuncInfo], insn_base: int,
                     rec_size: int | None = None) -> bytes:
    """func_info for PROG_LOAD: insn_off becomes the instruction index minus
    `insn_base` (the section index of what becomes instruction 0; negative
    when a subprogram is appended after the main program). The rest of each
    record, including bytes beyond the known fields, is kept; all records
    must be `rec_size` (default: the first record's) bytes long."""
    return _encode(records, insn_base, rec_size, "func_info")


def encode_line_info(records: Iterable[LineInfo], insn_base: int,
                     rec_size: int | None = None) -> bytes:
    """line_info for PROG_LOAD, rebased like encode_func_info."""
    return _encode(records, insn_base, rec_size, "line_info")
