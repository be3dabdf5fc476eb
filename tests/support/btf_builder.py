"""Build BTF and .BTF.ext blobs for tests, one type per call.

Every add_* returns the new type id. The builder writes exactly what it is
told (no validation), so tests can build malformed blobs too.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ttcp.obj.btf import BTF_MAGIC, KINDS

KIND = {k.name: k.number for k in KINDS}  # the builder spells kinds as libbpf names them


class BtfBuilder:
    """Types and strings of one BTF blob (split on a base when start_id > 1)."""

    def __init__(self, start_id: int = 1, str_base: int = 0) -> None:
        self.start_id = start_id
        self.str_base = str_base
        self.strings = bytearray() if str_base else bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}
        self.records: list[bytes] = []

    # ------------------------------------------------------------ strings

    def str(self, text: str) -> int:
        """Offset of `text`, appended once."""
        if text not in self._offsets:
            self._offsets[text] = self.str_base + len(self.strings)
            self.strings += text.encode() + b"\0"
        return self._offsets[text]

    # -------------------------------------------------------------- types

    @property
    def next_id(self) -> int:
        return self.start_id + len(self.records)

    def add_raw(self, record: bytes) -> int:
        self.records.append(record)
        return self.next_id - 1

    def _add(self, name: str, kind: str, vlen: int, size_or_type: int, tail: bytes = b"",
             kflag: bool = False) -> int:
        info = (int(kflag) << 31) | (KIND[kind] << 24) | vlen
        return self.add_raw(struct.pack("<III", self.str(name), info, size_or_type) + tail)

    def add_int(self, name: str, size: int, signed: bool = False, bits: int | None = None,
                offset: int = 0, encoding: int | None = None) -> int:
        enc = encoding if encoding is not None else int(signed)
        bits = size * 8 if bits is None else bits
        return self._add(name, "int", 0, size, struct.pack("<I", enc << 24 | offset << 16 | bits))

    def add_float(self, name: str, size: int) -> int:
        return self._add(name, "float", 0, size)

    def add_ptr(self, target: int) -> int:
        return self._add("", "ptr", 0, target)

    def add_array(self, elem: int, nelems: int, index_type: int = 0) -> int:
        return self._add("", "array", 0, 0, struct.pack("<III", elem, index_type, nelems))

    def add_struct(self, name: str, members: Sequence[tuple], size: int,
                   union: bool = False, kflag: bool | None = None) -> int:
        """members: (name, type, bit_offset[, bitfield_size]); kflag is set
        automatically when a member has a bitfield size."""
        if kflag is None:
            kflag = any(len(m) > 3 and m[3] for m in members)
        tail = b""
        for member in members:
            mname, mtype, bit_off = member[:3]
            bits = member[3] if len(member) > 3 else 0
            offset = (bits << 24 | bit_off) if kflag else bit_off
            tail += struct.pack("<III", self.str(mname), mtype, offset)
        return self._add(name, "union" if union else "struct", len(members), size, tail, kflag)

    def add_union(self, name: str, members: Sequence[tuple], size: int) -> int:
        return self.add_struct(name, members, size, union=True)

    def add_enum(self, name: str, values: Sequence[tuple[str, int]], size: int = 4,
                 signed: bool = False) -> int:
        tail = b"".join(struct.pack("<Ii" if v < 0 else "<II", self.str(n), v) for n, v in values)
        return self._add(name, "enum", len(values), size, tail, signed)

    def add_enum64(self, name: str, values: Sequence[tuple[str, int]], size: int = 8,
                   signed: bool = False) -> int:
        tail = b""
        for n, v in values:
            v &= (1 << 64) - 1
            tail += struct.pack("<III", self.str(n), v & 0xFFFFFFFF, v >> 32)
        return self._add(name, "enum64", len(values), size, tail, signed)

    def add_fwd(self, name: str, union: bool = False) -> int:
        return self._add(name, "fwd", 0, 0, kflag=union)

    def add_typedef(self, name: str, target: int) -> int:
        return self._add(name, "typedef", 0, target)

    def add_volatile(self, target: int) -> int:
        return self._add("", "volatile", 0, target)

    def add_const(self, target: int) -> int:
        return self._add("", "const", 0, target)

    def add_restrict(self, target: int) -> int:
        return self._add("", "restrict", 0, target)

    def add_type_tag(self, name: str, target: int) -> int:
        return self._add(name, "type_tag", 0, target)

    def add_func_proto(self, ret: int, params: Sequence[tuple[str, int]]) -> int:
        tail = b"".join(struct.pack("<II", self.str(n), t) for n, t in params)
        return self._add("", "func_proto", len(params), ret, tail)

    def add_func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self._add(name, "func", linkage, proto)

    def add_var(self, name: str, target: int, linkage: int = 1) -> int:
        return self._add(name, "var", 0, target, struct.pack("<I", linkage))

    def add_datasec(self, name: str, entries: Sequence[tuple[int, int, int]], size: int = 0) -> int:
        tail = b"".join(struct.pack("<III", *e) for e in entries)
        return self._add(name, "datasec", len(entries), size, tail)

    def add_decl_tag(self, name: str, target: int, component_idx: int = -1) -> int:
        return self._add(name, "decl_tag", 0, target, struct.pack("<i", component_idx))

    # -------------------------------------------------------------- build

    def build(self, magic: int = BTF_MAGIC, version: int = 1, flags: int = 0, hdr_len: int = 24,
              type_len: int | None = None, str_off: int | None = None,
              str_len: int | None = None, strings: bytes | None = None) -> bytes:
        types = b"".join(self.records)
        strs = bytes(self.strings) if strings is None else strings
        header = struct.pack(
            "<HBBIIIII", magic, version, flags, hdr_len, 0,
            len(types) if type_len is None else type_len,
            len(types) if str_off is None else str_off,
            len(strs) if str_len is None else str_len,
        )
        return header + bytes(hdr_len - 24) + types + strs


class BtfExtBuilder:
    """.BTF.ext records; section names and access strings go into `btf`'s
    string table, so build the BTF after adding records here."""

    def __init__(self, btf: BtfBuilder) -> None:
        self.btf = btf
        self.func_info: dict[str, list[bytes]] = {}
        self.line_info: dict[str, list[bytes]] = {}
        self.core_relos: dict[str, list[bytes]] = {}

    def add_func_info(self, sec: str, insn_off: int, type_id: int, extra: bytes = b"") -> None:
        self.func_info.setdefault(sec, []).append(struct.pack("<II", insn_off, type_id) + extra)

    def add_line_info(self, sec: str, insn_off: int, file: str, line: int, col: int,
                      extra: bytes = b"") -> None:
        rec = struct.pack("<IIII", insn_off, self.btf.str(file), self.btf.str(f"line {line}"),
                          line << 10 | col)
        self.line_info.setdefault(sec, []).append(rec + extra)

    def add_core_relo(self, sec: str, insn_off: int, type_id: int, access: str, kind: int) -> None:
        rec = struct.pack("<IIII", insn_off, type_id, self.btf.str(access), kind)
        self.core_relos.setdefault(sec, []).append(rec)

    def _part(self, blocks: dict[str, list[bytes]], min_size: int) -> bytes:
        if not blocks:
            return b""
        size = len(next(iter(blocks.values()))[0]) if blocks else min_size
        out = struct.pack("<I", size)
        for sec, records in blocks.items():
            out += struct.pack("<II", self.btf.str(sec), len(records)) + b"".join(records)
        return out

    def build(self, hdr_len: int = 32) -> bytes:
        parts = [self._part(self.func_info, 8), self._part(self.line_info, 16),
                 self._part(self.core_relos, 16)]
        offsets, pos = [], 0
        for part in parts:
            offsets += [pos, len(part)]
            pos += len(part)
        header = struct.pack("<HBBIIIIIII", BTF_MAGIC, 1, 0, hdr_len, *offsets)
        return header[:hdr_len] + bytes(max(0, hdr_len - 32)) + b"".join(parts)

