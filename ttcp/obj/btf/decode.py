"""Turn one type record into its BtfType, checking its names and references."""

from __future__ import annotations

import struct
from collections.abc import Callable

from ttcp.errors import FormatError
from ttcp.obj.btf import kinds as K
from ttcp.obj.btf import types as T
from ttcp.obj.btf.header import Blob, bad
from ttcp.obj.btf.index import TypeIndex
from ttcp.obj.btf.strings import StringTable

# (id, name, name_off, kflag, vlen, size_type, body offset) -> the type
_Decode = Callable[["Decoder", int, str, int, bool, int, int, int], T.BtfType]
# The kinds whose record is the common header alone, size_type a type id.
_ONE_REF: dict[int, Callable[[int, str, int, bool, int], T.BtfType]] = {
    K.KIND_PTR: T.Ptr, K.KIND_TYPEDEF: T.Typedef, K.KIND_VOLATILE: T.Volatile,
    K.KIND_CONST: T.Const, K.KIND_RESTRICT: T.Restrict, K.KIND_TYPE_TAG: T.TypeTag,
}


class Decoder:
    """Decodes the records of one blob; names come from `strings`, and
    referenced ids are checked against what `index` has walked."""

    def __init__(self, data: Blob, strings: StringTable, index: TypeIndex) -> None:
        self._data = data
        self._strings = strings
        self._index = index

    def decode(self, tid: int, off: int) -> T.BtfType:
        """The type `tid` whose record starts at byte `off` (framing checked by
        the index, so the kind is known and the record fits)."""
        name_off, info, size_type = struct.unpack_from("<III", self._data, off)
        name = self._name(tid, name_off, "type name")
        kind = (info >> 24) & 0x1F
        one_ref = _ONE_REF.get(kind)
        if one_ref is not None:
            return one_ref(tid, name, name_off, bool(info >> 31), self._ref(tid, size_type, "referenced type"))
        return _BY_KIND[kind](
            self, tid, name, name_off, bool(info >> 31), info & 0xFFFF, size_type, off + K.COMMON_SIZE)

    # One method per kind, all with the _Decode signature.

    def _int(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, size: int,
             body: int) -> T.BtfType:
        (enc,) = struct.unpack_from("<I", self._data, body)
        return T.Int(tid, name, name_off, kflag, size, (enc >> 24) & 0x0F, (enc >> 16) & 0xFF,
                     enc & 0xFF)

    def _array(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int,
               size_type: int, body: int) -> T.BtfType:
        elem, index, nelems = struct.unpack_from("<III", self._data, body)
        return T.Array(tid, name, name_off, kflag, self._ref(tid, elem, "array element"),
                       self._ref(tid, index, "array index"), nelems)

    def _struct(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, size: int,
                body: int) -> T.BtfType:
        return T.Struct(tid, name, name_off, kflag, size, self._members(tid, body, vlen, kflag))

    def _union(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, size: int,
               body: int) -> T.BtfType:
        return T.Union(tid, name, name_off, kflag, size, self._members(tid, body, vlen, kflag))

    def _enum(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, size: int,
              body: int) -> T.BtfType:
        fmt = "<Ii" if kflag else "<II"
        values = []
        for i in range(vlen):
            value_name, value = struct.unpack_from(fmt, self._data, body + 8 * i)
            values.append(T.EnumValue(self._name(tid, value_name, f"enumerator #{i} name"), value))
        return T.Enum(tid, name, name_off, kflag, size, tuple(values))

    def _enum64(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, size: int,
                body: int) -> T.BtfType:
        values = []
        for i in range(vlen):
            value_name, lo, hi = struct.unpack_from("<III", self._data, body + 12 * i)
            value = lo | hi << 32
            if kflag and value >= 1 << 63:
                value -= 1 << 64
            values.append(T.EnumValue(self._name(tid, value_name, f"enumerator #{i} name"), value))
        return T.Enum64(tid, name, name_off, kflag, size, tuple(values))

    def _fwd(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int,
             size_type: int, body: int) -> T.BtfType:
        return T.Fwd(tid, name, name_off, kflag)

    def _func(self, tid: int, name: str, name_off: int, kflag: bool, linkage: int, ref: int,
              body: int) -> T.BtfType:
        return T.Func(tid, name, name_off, kflag, self._ref(tid, ref, "referenced type"), linkage)

    def _func_proto(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, ret: int,
                    body: int) -> T.BtfType:
        ret = self._ref(tid, ret, "return type")
        words = struct.unpack_from(f"<{2 * vlen}I", self._data, body)
        params = tuple(
            T.Param(self._name(tid, words[i], f"param #{i // 2} name"),
                    self._ref(tid, words[i + 1], f"param #{i // 2}"))
            for i in range(0, 2 * vlen, 2)
        )
        return T.FuncProto(tid, name, name_off, kflag, ret, params)

    def _var(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, ref: int,
             body: int) -> T.BtfType:
        ref = self._ref(tid, ref, "referenced type")
        (linkage,) = struct.unpack_from("<I", self._data, body)
        return T.Var(tid, name, name_off, kflag, ref, linkage)

    def _datasec(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, size: int,
                 body: int) -> T.BtfType:
        words = struct.unpack_from(f"<{3 * vlen}I", self._data, body)
        entries = tuple(
            T.VarSecInfo(self._ref(tid, words[i], f"datasec entry #{i // 3}"),
                         words[i + 1], words[i + 2])
            for i in range(0, 3 * vlen, 3)
        )
        return T.Datasec(tid, name, name_off, kflag, size, entries)

    def _float(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, size: int,
               body: int) -> T.BtfType:
        return T.Float(tid, name, name_off, kflag, size)

    def _decl_tag(self, tid: int, name: str, name_off: int, kflag: bool, vlen: int, ref: int,
                  body: int) -> T.BtfType:
        ref = self._ref(tid, ref, "referenced type")
        (component,) = struct.unpack_from("<i", self._data, body)
        return T.DeclTag(tid, name, name_off, kflag, ref, component)

    # Parts several kinds share.

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

    def _members(self, tid: int, pos: int, vlen: int, kflag: bool) -> tuple[T.Member, ...]:
        words = struct.unpack_from(f"<{3 * vlen}I", self._data, pos)
        out = []
        for i in range(0, 3 * vlen, 3):
            name = self._name(tid, words[i], f"member #{i // 3} name")
            mtype = self._ref(tid, words[i + 1], f"member #{i // 3}")
            offset = words[i + 2]
            if kflag:
                out.append(T.Member(name, mtype, offset & 0xFFFFFF, offset >> 24))
            else:
                out.append(T.Member(name, mtype, offset, 0))
        return tuple(out)


# One method per kind, taken from the class (not bound to a decoder: a table of bound
# methods on the instance would be a reference cycle, and a decoder of a mapped vmlinux
# would then keep the mapping open until the cyclic collector runs).
_BY_KIND: dict[int, _Decode] = {
    K.KIND_INT: Decoder._int, K.KIND_ARRAY: Decoder._array, K.KIND_STRUCT: Decoder._struct,
    K.KIND_UNION: Decoder._union, K.KIND_ENUM: Decoder._enum, K.KIND_FWD: Decoder._fwd,
    K.KIND_FUNC: Decoder._func, K.KIND_FUNC_PROTO: Decoder._func_proto, K.KIND_VAR: Decoder._var,
    K.KIND_DATASEC: Decoder._datasec, K.KIND_FLOAT: Decoder._float,
    K.KIND_DECL_TAG: Decoder._decl_tag, K.KIND_ENUM64: Decoder._enum64,
}
