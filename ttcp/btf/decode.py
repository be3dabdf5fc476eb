"""Turn one type record into a BtfType, checking its names and references."""

from __future__ import annotations

import struct

from ttcp.btf.header import Blob, bad
from ttcp.btf.index import TypeIndex
from ttcp.btf.kinds import (
    COMPOSITE_KINDS,
    KIND_ARRAY,
    KIND_DATASEC,
    KIND_DECL_TAG,
    KIND_ENUM,
    KIND_ENUM64,
    KIND_FLOAT,
    KIND_FUNC,
    KIND_FUNC_PROTO,
    KIND_FWD,
    KIND_INT,
    KIND_VAR,
    SIZED_KINDS,
)
from ttcp.btf.strings import StringTable
from ttcp.btf.types import ArrayInfo, BtfType, EnumValue, Member, Param, VarSecInfo
from ttcp.errors import FormatError


class Decoder:
    """Decodes the records of one blob; names come from `strings`, and
    referenced ids are checked against what `index` has walked."""

    def __init__(self, data: Blob, strings: StringTable, index: TypeIndex) -> None:
        self._data = data
        self._strings = strings
        self._index = index

    def decode(self, tid: int, off: int) -> BtfType:
        """The type `tid` whose record starts at byte `off`."""
        data = self._data
        name_off, info, size_type = struct.unpack_from("<III", data, off)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        name = self._name(tid, name_off, "type name")
        common = {"id": tid, "kind": kind, "name": name, "name_off": name_off,
                  "kflag": kflag, "vlen": vlen}
        body = off + 12
        if kind in SIZED_KINDS:
            common["size"] = size_type
        if kind == KIND_INT:
            (enc,) = struct.unpack_from("<I", data, body)
            return BtfType(**common, int_encoding=(enc >> 24) & 0x0F,
                           int_offset=(enc >> 16) & 0xFF, int_bits=enc & 0xFF)
        if kind in COMPOSITE_KINDS:
            return BtfType(**common, members=self._members(tid, body, vlen, kflag))
        if kind == KIND_ENUM:
            return BtfType(**common, enum_values=self._enum32(tid, body, vlen, kflag))
        if kind == KIND_ENUM64:
            return BtfType(**common, enum_values=self._enum64(tid, body, vlen, kflag))
        if kind == KIND_ARRAY:
            elem, index, nelems = struct.unpack_from("<III", data, body)
            arr = ArrayInfo(self._ref(tid, elem, "array element"),
                            self._ref(tid, index, "array index"), nelems)
            return BtfType(**common, array=arr)
        if kind == KIND_FUNC_PROTO:
            ret = self._ref(tid, size_type, "return type")
            return BtfType(**common, type=ret, params=self._params(tid, body, vlen))
        if kind == KIND_DATASEC:
            return BtfType(**common, datasec_vars=self._secinfos(tid, body, vlen))
        if kind in (KIND_FWD, KIND_FLOAT):
            return BtfType(**common)
        # PTR TYPEDEF VOLATILE CONST RESTRICT FUNC VAR DECL_TAG TYPE_TAG
        ref = self._ref(tid, size_type, "referenced type")
        if kind == KIND_FUNC:
            return BtfType(**common, type=ref, linkage=vlen)
        if kind == KIND_VAR:
            (linkage,) = struct.unpack_from("<I", data, body)
            return BtfType(**common, type=ref, linkage=linkage)
        if kind == KIND_DECL_TAG:
            (comp,) = struct.unpack_from("<i", data, body)
            return BtfType(**common, type=ref, component_idx=comp)
        return BtfType(**common, type=ref)

    def _ref(self, type_id: int, ref: int, what: str) -> int:
        """Check a referenced id against the part walked so far; ids beyond
        it are checked when decoded (walking just for this would defeat the
        lazy walk), so type() of any id in a BtfType can still raise."""
        end_id = self._index.end_id
        if ref >= end_id and self._index.done:
            raise bad(f"type [{type_id}]: {what} refers to type id {ref}, "
                      f"out of range (0..{end_id - 1})")
        return ref

    def _name(self, type_id: int, offset: int, what: str) -> str:
        try:
            return self._strings.get(offset)
        except FormatError as err:
            raise bad(f"type [{type_id}]: invalid {what}: {err.message}") from None

    def _members(self, tid: int, pos: int, vlen: int, kflag: bool) -> tuple[Member, ...]:
        words = struct.unpack_from(f"<{3 * vlen}I", self._data, pos)
        out = []
        for i in range(0, 3 * vlen, 3):
            name = self._name(tid, words[i], f"member #{i // 3} name")
            mtype = self._ref(tid, words[i + 1], f"member #{i // 3}")
            offset = words[i + 2]
            if kflag:
                out.append(Member(name, mtype, offset & 0xFFFFFF, offset >> 24))
            else:
                out.append(Member(name, mtype, offset, 0))
        return tuple(out)

    def _enum32(self, tid: int, pos: int, vlen: int, signed: bool) -> tuple[EnumValue, ...]:
        fmt = f"<{'Ii' if signed else 'II'}"
        out = []
        for i in range(vlen):
            name_off, value = struct.unpack_from(fmt, self._data, pos + 8 * i)
            out.append(EnumValue(self._name(tid, name_off, f"enumerator #{i} name"), value))
        return tuple(out)

    def _enum64(self, tid: int, pos: int, vlen: int, signed: bool) -> tuple[EnumValue, ...]:
        out = []
        for i in range(vlen):
            name_off, lo, hi = struct.unpack_from("<III", self._data, pos + 12 * i)
            value = lo | hi << 32
            if signed and value >= 1 << 63:
                value -= 1 << 64
            out.append(EnumValue(self._name(tid, name_off, f"enumerator #{i} name"), value))
        return tuple(out)

    def _params(self, tid: int, pos: int, vlen: int) -> tuple[Param, ...]:
        words = struct.unpack_from(f"<{2 * vlen}I", self._data, pos)
        return tuple(
            Param(self._name(tid, words[i], f"param #{i // 2} name"),
                  self._ref(tid, words[i + 1], f"param #{i // 2}"))
            for i in range(0, 2 * vlen, 2)
        )

    def _secinfos(self, tid: int, pos: int, vlen: int) -> tuple[VarSecInfo, ...]:
        words = struct.unpack_from(f"<{3 * vlen}I", self._data, pos)
        return tuple(
            VarSecInfo(self._ref(tid, words[i], f"datasec entry #{i // 3}"),
                       words[i + 1], words[i + 2])
            for i in range(0, 3 * vlen, 3)
        )
