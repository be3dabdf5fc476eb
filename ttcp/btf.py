"""Read BTF (BPF Type Format) blobs: vmlinux, module (split) and object BTF.

Pure: the caller passes the bytes (or an mmap). Built for vmlinux (~5 MB,
~126k types) on a tight start-up budget, so nothing is decoded up front:

* parsing checks the header only; the record chain is walked lazily, only
  as far as the highest type id or offset asked about so far, keeping every
  32nd record offset (a checkpoint); a regular expression walks runs of 32
  records in C and Python steps only over records it does not cover (vlen
  above 47);
* a type is decoded (and cached) only when asked for;
* a name lookup searches the string section for the name (bytes.find), then
  the type section for its 4-byte string offset, and keeps only hits that
  start a record of a wanted kind.

On the development VM (bytes.find scans ~1 GB/s) a full walk of vmlinux
takes ~20 ms, compiling the walk regex ~5 ms, and each name lookup ~5 ms
(one find pass over the strings, one over the types). Pass an mmap of
/sys/kernel/btf/vmlinux (MAP_PRIVATE, PROT_READ; kernels >= 6.15) rather
than read() bytes to skip an 8 ms copy.

Hostile input raises FormatError("BTF", ...), never IndexError, struct.error,
RecursionError, or loops forever.
"""

from __future__ import annotations

import mmap
import re
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from ttcp.errors import FormatError

BTF_MAGIC = 0xEB9F
HEADER_SIZE = 24

KIND_UNKN = 0
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19
KIND_MAX = KIND_ENUM64

# Spelled as libbpf's btf_kind_str() so messages match bpftool's.
KIND_NAMES = (
    "void", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef",
    "volatile", "const", "restrict", "func", "func_proto", "var", "datasec",
    "float", "decl_tag", "type_tag", "enum64",
)

INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4

LINKAGE_STATIC = 0
LINKAGE_GLOBAL = 1
LINKAGE_EXTERN = 2

MODIFIER_KINDS = frozenset({KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG})
COMPOSITE_KINDS = frozenset({KIND_STRUCT, KIND_UNION})
ENUM_KINDS = frozenset({KIND_ENUM, KIND_ENUM64})

_WHAT = "BTF"
_PTR_SIZE = 8  # BPF and x86-64 kernels: libbpf's btf_ptr_sz() finds 8 for both
_MAX_CHAIN = 64  # modifier/typedef chains longer than this are treated as loops
_MAX_RESOLVE_DEPTH = 32  # libbpf's MAX_RESOLVE_DEPTH
_U32 = 0xFFFFFFFF
_INFO_RESERVED = 0x60FF0000  # info bits 16-23 and 29-30 must be zero

# Bytes after the 12-byte common header: fixed part, and per-vlen entry size.
_FIXED_EXTRA = {
    KIND_INT: 4, KIND_PTR: 0, KIND_ARRAY: 12, KIND_FWD: 0, KIND_TYPEDEF: 0,
    KIND_VOLATILE: 0, KIND_CONST: 0, KIND_RESTRICT: 0, KIND_FUNC: 0, KIND_VAR: 4,
    KIND_FLOAT: 0, KIND_DECL_TAG: 4, KIND_TYPE_TAG: 0,
}
_ENTRY_SIZE = {
    KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
    KIND_DATASEC: 12, KIND_ENUM64: 12,
}

_STRIDE = 32  # records between checkpoints when the regex walker is used
_REGEX_MIN_BYTES = 1 << 16  # smaller type sections are walked in Python, stride 1
_REGEX_MAX_VLEN = 48  # vlen values the walk regex spells out; bigger → Python


class Member(NamedTuple):
    """A struct/union member; bit_offset and bitfield_size already decoded
    according to the owner's kind_flag."""

    name: str
    type: int
    bit_offset: int
    bitfield_size: int


class EnumValue(NamedTuple):
    """An enumerator; value is signed when the enum's kind_flag is set."""

    name: str
    value: int


class Param(NamedTuple):
    """A FUNC_PROTO parameter; (name "", type 0) as last param means varargs."""

    name: str
    type: int


class ArrayInfo(NamedTuple):
    elem_type: int
    index_type: int
    nelems: int


class VarSecInfo(NamedTuple):
    """A DATASEC entry: a VAR (or FUNC for .ksyms) at offset, size bytes."""

    type: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class BtfType:
    """One decoded BTF type. Fields not meaningful for `kind` keep defaults.

    `type` is the referenced id for PTR/TYPEDEF/modifiers/TYPE_TAG/VAR/
    DECL_TAG, the FUNC_PROTO of a FUNC, and the return type of a FUNC_PROTO.
    """

    id: int
    kind: int
    name: str = ""
    name_off: int = 0
    size: int = 0
    type: int = 0
    kflag: bool = False
    vlen: int = 0
    members: tuple[Member, ...] = ()
    enum_values: tuple[EnumValue, ...] = ()
    params: tuple[Param, ...] = ()
    array: ArrayInfo | None = None
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    linkage: int = 0
    datasec_vars: tuple[VarSecInfo, ...] = ()
    component_idx: int = -1

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]

    def describe(self) -> str:
        """libbpf style "[5] struct sock" (or "<anon>" for no name)."""
        return f"[{self.id}] {self.kind_name} {self.name or '<anon>'}"


VOID = BtfType(id=0, kind=KIND_UNKN)


def check_header(data: bytes, min_hdr_len: int, what: str, unit: str) -> int:
    """Validate the magic/version/flags/hdr_len prefix that .BTF and .BTF.ext
    share; returns hdr_len. The caller has checked that 8 bytes exist."""
    magic, version, flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic == 0x9FEB:
        raise FormatError(what, f"big-endian {what} is not supported")
    if magic != BTF_MAGIC:
        raise FormatError(what, f"bad magic 0x{magic:04x}, expected 0x{BTF_MAGIC:04x}")
    if version != 1:
        raise FormatError(what, f"unsupported version {version}")
    if flags:
        raise FormatError(what, f"unsupported flags 0x{flags:02x}")
    if hdr_len < min_hdr_len or hdr_len > len(data):
        raise FormatError(what, f"header length {hdr_len} invalid for a {len(data)}-byte {unit}")
    return hdr_len


def essential_name(name: str) -> str:
    """Drop a CO-RE flavor suffix: "sock___v2" → "sock" (libbpf's rule: cut at
    the last "X___Y" where X and Y are not underscores)."""
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name.startswith("___", i + 1) and name[i + 4] != "_":
            return name[: i + 1]
    return name


def _bad(message: str) -> FormatError:
    return FormatError(_WHAT, message)


_SIZE_CACHE: dict[int, int] = {}


def _record_size(info: int, type_id: int) -> int:
    """Size in bytes of the record whose info word is `info`."""
    size = _SIZE_CACHE.get(info)
    if size is not None:
        return size
    if info & _INFO_RESERVED:
        raise _bad(f"type [{type_id}]: reserved bits set in info 0x{info:08x}")
    kind = (info >> 24) & 0x1F
    if kind in _FIXED_EXTRA:
        size = 12 + _FIXED_EXTRA[kind]
    elif kind in _ENTRY_SIZE:
        size = 12 + _ENTRY_SIZE[kind] * (info & 0xFFFF)
    else:
        raise _bad(f"type [{type_id}]: unknown kind {kind}")
    if len(_SIZE_CACHE) < 1 << 16:
        _SIZE_CACHE[info] = size
    return size


def _kind_class(kinds: Iterable[int]) -> bytes:
    """Regex class matching the info word's top byte for `kinds`, kflag 0 or 1."""
    return b"[" + b"".join(re.escape(bytes([k, k | 0x80])) for k in kinds) + b"]"


@lru_cache(maxsize=1)
def _walk_regex() -> re.Pattern[bytes]:
    """A pattern matching exactly _STRIDE consecutive well-formed records.

    A record is name_off, info (vlen_lo, vlen_hi, 0, kind|kflag), size/type,
    then kind-specific bytes; which bytes come where does not matter for
    length, so the extra bytes are consumed right after the kind byte.
    Records with vlen >= _REGEX_MAX_VLEN (or odd vlen on fixed kinds) do not
    match and the caller steps over them in Python.
    """
    fixed = {12: [], 16: [], 24: []}
    for kind, extra in _FIXED_EXTRA.items():
        fixed[12 + extra].append(kind)
    by_entry = {8: [], 12: []}
    for kind, entry in _ENTRY_SIZE.items():
        by_entry[entry].append(kind)
    zero = [
        _kind_class(fixed[12] + by_entry[8] + by_entry[12]),
        _kind_class(fixed[16]) + b".{4}",
        _kind_class(fixed[24]) + b".{12}",
    ]
    branches = [b"\\x00\\x00\\x00(?:" + b"|".join(zero) + b")"]
    for vlen in range(1, _REGEX_MAX_VLEN):
        alts = [_kind_class([KIND_FUNC])] if vlen <= LINKAGE_EXTERN else []
        alts += [
            _kind_class(by_entry[8]) + b".{%d}" % (8 * vlen),
            _kind_class(by_entry[12]) + b".{%d}" % (12 * vlen),
        ]
        branches.append(re.escape(bytes([vlen])) + b"\\x00\\x00(?:" + b"|".join(alts) + b")")
    record = b".{4}(?:" + b"|".join(branches) + b").{4}"
    return re.compile(b"(?s)(?>" + record + b"){%d}" % _STRIDE)


def _next_record(data: bytes, pos: int, end: int, type_id: int) -> int:
    """Offset just past the record at `pos`, checking that it fits."""
    if pos + 12 > end:
        raise _bad(f"type [{type_id}]: header truncated at the end of the type section")
    (info,) = struct.unpack_from("<I", data, pos + 4)
    nxt = pos + _record_size(info, type_id)
    if nxt > end:
        raise _bad(
            f"type [{type_id}] ({KIND_NAMES[(info >> 24) & 0x1F]}, vlen {info & 0xFFFF}) "
            "runs past the end of the type section"
        )
    return nxt


class Btf:
    """A parsed BTF blob (optionally split on top of a base, like module BTF).

    Type ids of a split BTF continue after the base's; string offsets below
    the base's string section size refer to the base's strings.
    """

    def __init__(self) -> None:  # use Btf.parse
        self._data: bytes = b""
        self.base: Btf | None = None
        self._start_id = 1
        self._str_base = 0
        self._t0 = self._t1 = self._s0 = self._s1 = 0
        # Lazy walk state: checkpoints[j] = offset of local record j * stride;
        # records [0, walked) are known, the next one starts at walk_pos.
        self._checkpoints = array("q")
        self._stride = 1
        self._walk_match = None
        self._walked = 0
        self._walk_pos = 0
        self._walk_done = False
        self._walk_error: FormatError | None = None
        self._types: dict[int, BtfType] = {}
        self._strings: dict[int, str] = {}
        self._name_cache: dict[tuple[str, bool, frozenset[int] | None], list[int]] = {}

    # ----------------------------------------------------------------- parse

    @classmethod
    def parse(cls, data: bytes, base: Btf | None = None) -> Btf:
        """Check the header of a BTF blob; records are walked and decoded lazily.

        `data` may be bytes, bytearray or an mmap (kept, not copied).
        """
        if isinstance(data, memoryview):
            data = data.tobytes()
        elif not isinstance(data, (bytes, bytearray, mmap.mmap)):
            data = bytes(data)
        btf = cls()
        btf._data = data
        btf.base = base
        btf._start_id = len(base) if base is not None else 1
        btf._str_base = base._str_size() if base is not None else 0
        btf._parse_header()
        btf._walk_pos = btf._t0
        if btf._t1 - btf._t0 >= _REGEX_MIN_BYTES:
            btf._stride = _STRIDE
            btf._walk_match = _walk_regex().match
        return btf

    def _parse_header(self) -> None:
        data = self._data
        if len(data) < HEADER_SIZE:
            raise _bad(f"truncated header: {len(data)} bytes, need {HEADER_SIZE}")
        _, _, _, hdr_len, type_off, type_len, str_off, str_len = (
            struct.unpack_from("<HBBIIIII", data, 0)
        )
        check_header(data, HEADER_SIZE, _WHAT, "blob")
        if type_off % 4 or type_len % 4:
            raise _bad(f"type section (off {type_off}, len {type_len}) not 4-byte aligned")
        if type_off + type_len > str_off:
            raise _bad(
                f"type section (off {type_off}, len {type_len}) overlaps the string "
                f"section at {str_off}"
            )
        if hdr_len + str_off + str_len > len(data):
            raise _bad(
                f"string section (off {str_off}, len {str_len}) ends past the end of "
                f"the {len(data)}-byte blob"
            )
        self._t0 = hdr_len + type_off
        self._t1 = self._t0 + type_len
        self._s0 = hdr_len + str_off
        self._s1 = self._s0 + str_len
        if str_len == 0:
            if self.base is None:
                raise _bad("empty string section")
            return
        if data[self._s1 - 1] != 0:
            raise _bad("string section does not end with a NUL byte")
        if self.base is None and data[self._s0] != 0:
            raise _bad("string section does not start with the empty string")

    # -------------------------------------------------------------- walk

    def _walk(self, index: int | None = None, pos: int | None = None) -> None:
        """Walk records until local record `index` is known, the walk passes
        byte `pos`, or (both None) the end; checks the framing on the way.

        A malformed record stops the walk for good: records before its chunk
        stay usable, anything after raises the same FormatError again.
        """
        if self._walk_error is not None:
            raise self._walk_error
        data, end, stride, match = self._data, self._t1, self._stride, self._walk_match
        checkpoints = self._checkpoints
        at, walked = self._walk_pos, self._walked
        try:
            while at < end:
                if index is not None and walked > index:
                    return
                if pos is not None and at > pos:
                    return
                found = match(data, at, end) if match is not None else None
                if found is not None:
                    nxt, count = found.end(), walked + stride
                else:
                    nxt, count = at, walked
                    while count < walked + stride and nxt < end:
                        nxt = _next_record(data, nxt, end, self._start_id + count)
                        count += 1
                checkpoints.append(at)
                at, walked = nxt, count
            self._walk_done = True
        except FormatError as err:
            self._walk_error = err
            raise
        finally:
            self._walk_pos, self._walked = at, walked

    def _known(self, local_index: int) -> bool:
        """Whether local record `local_index` exists (walking as needed)."""
        if local_index >= self._walked and not self._walk_done:
            self._walk(index=local_index)
        return local_index < self._walked

    # ------------------------------------------------------------ basics

    def __len__(self) -> int:
        """Number of types including void (and the base's, for split BTF).

        Walks the whole type section on first use.
        """
        if not self._walk_done:
            self._walk()
        return self._start_id + self._walked

    def _str_size(self) -> int:
        return self._str_base + (self._s1 - self._s0)

    @property
    def data(self) -> bytes:
        """The blob as passed to parse()."""
        return self._data

    def string(self, offset: int) -> str:
        """The NUL-terminated string at `offset` of the string section."""
        cached = self._strings.get(offset)
        if cached is not None:
            return cached
        if offset < self._str_base and self.base is not None:
            return self.base.string(offset)
        local = offset - self._str_base
        if not 0 <= local < self._s1 - self._s0:
            raise _bad(
                f"string offset {offset} past the end of the string section "
                f"({self._str_size()} bytes)"
            )
        start = self._s0 + local
        end = self._data.find(b"\0", start, self._s1)
        if end < 0:  # unreachable after the header check; kept for mmap edits
            raise _bad(f"string at offset {offset} is not NUL-terminated")
        text = bytes(self._data[start:end]).decode("utf-8", "backslashreplace")
        self._strings[offset] = text
        return text

    def _check_id(self, type_id: int) -> None:
        if not isinstance(type_id, int) or type_id < 0:
            raise _bad(f"type id {type_id!r} invalid")
        if type_id < self._start_id:
            if self.base is not None:
                self.base._check_id(type_id)
            return
        if not self._known(type_id - self._start_id):
            raise _bad(f"type id {type_id} out of range (0..{len(self) - 1})")

    def _local_offset(self, type_id: int) -> int:
        """Byte offset in the blob of local type `type_id` (already checked)."""
        j, steps = divmod(type_id - self._start_id, self._stride)
        pos = self._checkpoints[j]
        data = self._data
        for _ in range(steps):
            (info,) = struct.unpack_from("<I", data, pos + 4)
            pos += _record_size(info, type_id)
        return pos

    def _id_at(self, pos: int) -> int | None:
        """The local type id whose record starts at byte `pos`, if one does."""
        if pos >= self._walk_pos and not self._walk_done:
            self._walk(pos=pos)
        j = bisect_right(self._checkpoints, pos) - 1
        if j < 0:
            return None
        index = j * self._stride
        cur = self._checkpoints[j]
        data = self._data
        while cur < pos and index < self._walked:
            (info,) = struct.unpack_from("<I", data, cur + 4)
            cur += _record_size(info, self._start_id + index)
            index += 1
        if cur == pos and index < self._walked:
            return self._start_id + index
        return None

    def kind_of(self, type_id: int) -> int:
        """Kind of a type without decoding it (cheap for scans)."""
        cached = self._types.get(type_id)
        if cached is not None:
            return cached.kind
        self._check_id(type_id)
        if type_id < self._start_id:
            return self.base.kind_of(type_id) if self.base is not None else KIND_UNKN
        (info,) = struct.unpack_from("<I", self._data, self._local_offset(type_id) + 4)
        return (info >> 24) & 0x1F

    # ------------------------------------------------------------ decode

    def type(self, type_id: int) -> BtfType:
        """Decode type `type_id` (0 is void); FormatError if malformed."""
        cached = self._types.get(type_id)
        if cached is not None:
            return cached
        self._check_id(type_id)
        if type_id < self._start_id:
            return self.base.type(type_id) if self.base is not None else VOID
        decoded = self._decode(type_id, self._local_offset(type_id))
        self._types[type_id] = decoded
        return decoded

    def _ref(self, type_id: int, ref: int, what: str) -> int:
        """Check a referenced id against the part walked so far; ids beyond
        it are checked when decoded (walking just for this would defeat the
        lazy walk), so type() of any id in a BtfType can still raise."""
        walked_end = self._start_id + self._walked
        if ref >= walked_end and self._walk_done:
            raise _bad(
                f"type [{type_id}]: {what} refers to type id {ref}, "
                f"out of range (0..{walked_end - 1})"
            )
        return ref

    def _name(self, type_id: int, offset: int, what: str) -> str:
        try:
            return self.string(offset)
        except FormatError as err:
            raise _bad(f"type [{type_id}]: invalid {what}: {err.message}") from None

    def _decode(self, tid: int, off: int) -> BtfType:
        data = self._data
        name_off, info, size_type = struct.unpack_from("<III", data, off)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        name = self._name(tid, name_off, "type name")
        common = {"id": tid, "kind": kind, "name": name, "name_off": name_off,
                  "kflag": kflag, "vlen": vlen}
        body = off + 12
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64,
                    KIND_DATASEC, KIND_FLOAT):
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

    # ----------------------------------------------------------- helpers

    def name_of(self, type_id: int) -> str:
        return self.type(type_id).name

    def skip_mods_and_typedefs(self, type_id: int) -> int:
        """Follow const/volatile/restrict/type_tag/typedef to the real type."""
        seen = []
        t = self.type(type_id)
        while t.kind in MODIFIER_KINDS or t.kind == KIND_TYPEDEF:
            seen.append(t.id)
            if len(seen) > _MAX_CHAIN or t.type in seen:
                raise _bad(
                    f"type [{type_id}]: modifier/typedef chain loops or is deeper "
                    f"than {_MAX_CHAIN}"
                )
            t = self.type(t.type)
        return t.id

    def resolve_size(self, type_id: int) -> int:
        """Byte size of a type as libbpf's btf__resolve_size computes it.

        FormatError for types without a size (void, fwd, func, func_proto),
        chains deeper than 32 (libbpf's limit, which also stops loops) and
        sizes that overflow 32 bits.
        """
        nelems = 1
        t = self.type(type_id)
        for _ in range(_MAX_RESOLVE_DEPTH):
            if t.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64,
                          KIND_DATASEC, KIND_FLOAT):
                size = t.size
                break
            if t.kind == KIND_PTR:
                size = _PTR_SIZE
                break
            if t.kind == KIND_ARRAY:
                assert t.array is not None
                nelems *= t.array.nelems
                if nelems > _U32:
                    raise _bad(f"type [{type_id}]: array size overflows 32 bits")
                t = self.type(t.array.elem_type)
            elif t.kind in MODIFIER_KINDS or t.kind in (KIND_TYPEDEF, KIND_VAR,
                                                        KIND_DECL_TAG):
                t = self.type(t.type)
            else:
                raise _bad(f"type {self.type(type_id).describe()}: "
                           f"{t.kind_name} has no size")
        else:
            raise _bad(f"type [{type_id}]: size not resolved within "
                       f"{_MAX_RESOLVE_DEPTH} steps (loop?)")
        if nelems * size > _U32:
            raise _bad(f"type [{type_id}]: size overflows 32 bits")
        return nelems * size

    # ------------------------------------------------------- name lookups

    def ids_by_name(self, name: str, kind: int | None = None) -> list[int]:
        """Ids (ascending) of the types named exactly `name`, optionally of one kind.

        Only names stored as whole strings are found (pahole and clang never
        point a name into the middle of another string). "" finds nothing.
        """
        kinds = None if kind is None else frozenset({kind})
        return self._lookup(name, False, kinds)

    def ids_by_essential_name(self, name: str,
                              kinds: Iterable[int] | None = None) -> list[int]:
        """Ids whose essential name (flavor dropped) equals essential_name(name),
        optionally restricted to `kinds`: CO-RE candidates. "sock" finds
        "sock" and "sock___v2" but not "sock___v2___x"."""
        return self._lookup(name, True, None if kinds is None else frozenset(kinds))

    def first_id(self, name: str, kind: int) -> int | None:
        """Lowest id of a `kind` type named `name`, or None."""
        found = self.ids_by_name(name, kind)
        return found[0] if found else None

    def func_by_name(self, name: str) -> int | None:
        """Id of the FUNC `name` (e.g. "tcp_close"), or None."""
        return self.first_id(name, KIND_FUNC)

    def _lookup(self, name: str, essential: bool, kinds: frozenset[int] | None) -> list[int]:
        key = (name, essential, kinds)
        found = self._name_cache.get(key)
        if found is None:
            found = self._search(name, essential, kinds)
            self._name_cache[key] = found
        return list(found)

    def _search(self, name: str, essential: bool, kinds: frozenset[int] | None) -> list[int]:
        found = self.base._search(name, essential, kinds) if self.base is not None else []
        want = essential_name(name) if essential else name
        raw = want.encode("utf-8", "surrogateescape")
        if not raw or b"\0" in raw:
            return found
        offsets = set()
        for off, tail in self._strings_starting(raw):
            if essential:
                # "a___b" itself is no candidate for "a___b___c" (its essential is "a")
                if tail in (b"\0", b"___") and essential_name(self.string(off)) == want:
                    offsets.add(off)
            elif tail == b"\0":
                offsets.add(off)
        ids = set()
        for off in offsets:
            ids.update(self._records_named(off, kinds))
        return found + sorted(ids)

    def _strings_starting(self, prefix: bytes) -> list[tuple[int, bytes]]:
        """(offset, next 3 bytes) of every string, own or base, starting with
        `prefix`; one bytes.find pass per section."""
        out = self.base._strings_starting(prefix) if self.base is not None else []
        data, s0, s1 = self._data, self._s0, self._s1
        n = len(prefix)
        if data[s0:s0 + n] == prefix:
            out.append((self._str_base, self._tail(s0 + n)))
        needle = b"\0" + prefix
        pos = data.find(needle, s0, s1)
        while pos >= 0:
            out.append((pos + 1 - s0 + self._str_base, self._tail(pos + 1 + n)))
            pos = data.find(needle, pos + 1, s1)
        return out

    def _tail(self, pos: int) -> bytes:
        tail = bytes(self._data[pos:min(pos + 3, self._s1)])
        return b"\0" if tail[:1] == b"\0" else tail

    def _records_named(self, offset: int, kinds: frozenset[int] | None) -> list[int]:
        """Local type ids whose record has name_off `offset` (and a kind in
        `kinds`): one bytes.find pass over the type section."""
        out: list[int] = []
        data, t0, t1 = self._data, self._t0, self._t1
        needle = struct.pack("<I", offset)
        pos = data.find(needle, t0, t1)
        while pos >= 0:
            if (pos - t0) % 4 == 0 and pos + 12 <= t1:
                (info,) = struct.unpack_from("<I", data, pos + 4)
                kind = (info >> 24) & 0x1F
                plausible = not info & _INFO_RESERVED and 1 <= kind <= KIND_MAX
                if plausible and (kinds is None or kind in kinds):
                    tid = self._id_at(pos)
                    if tid is not None:
                        out.append(tid)
            pos = data.find(needle, pos + 1, t1)
        return out

    # ------------------------------------------------- kernel preparation

    def fixed_for_kernel(
        self,
        section_sizes: dict[str, int],
        symbol_offsets: dict[str, int],
        hidden_symbols: Iterable[str] = (),
    ) -> bytes:
        """The blob with what clang leaves unset filled in, as libbpf does.

        For each DATASEC whose size is 0 and whose name is in
        `section_sizes`: size := the ELF section size, and each global VAR's
        offset := its ELF symbol value (`symbol_offsets`, by VAR name; static
        and extern VARs are skipped, like libbpf). VARs named in
        `hidden_symbols` (STV_HIDDEN/STV_INTERNAL) become static. Every
        DATASEC's entries are then sorted by offset (the kernel requires
        ascending offsets). A DATASEC naming a section absent from
        `section_sizes` (".ksyms", ".kconfig", or one the ELF lacks) keeps
        its size and offsets: libbpf fills extern sections elsewhere, and
        the kernel will report what is wrong with it.
        """
        out = bytearray(self._data)
        hidden = set(hidden_symbols)
        for tid in range(self._start_id, len(self)):
            if self.kind_of(tid) != KIND_DATASEC:
                continue
            self._fix_datasec(out, self.type(tid), section_sizes, symbol_offsets, hidden)
        return bytes(out)

    def _fix_datasec(self, out: bytearray, sec: BtfType, section_sizes: dict[str, int],
                     symbol_offsets: dict[str, int], hidden: set[str]) -> None:
        off = self._local_offset(sec.id)
        entries = [list(v) for v in sec.datasec_vars]
        if sec.name in section_sizes:
            fill = sec.size == 0  # a linked object already has sizes and offsets
            if fill:
                size = section_sizes[sec.name]
                if not 0 < size <= _U32:
                    raise _bad(f"DATASEC '{sec.name}': ELF section size {size} invalid")
                struct.pack_into("<I", out, off + 8, size)
            for i, entry in enumerate(entries):
                self._fix_var(out, sec.name, i, entry, fill, symbol_offsets, hidden)
        entries.sort(key=lambda e: e[1])
        for i, (vtype, voff, vsize) in enumerate(entries):
            struct.pack_into("<III", out, off + 12 + 12 * i, vtype, voff, vsize)

    def _fix_var(self, out: bytearray, sec_name: str, i: int, entry: list[int], fill: bool,
                 symbol_offsets: dict[str, int], hidden: set[str]) -> None:
        var = self.type(entry[0])
        if var.kind != KIND_VAR:
            raise _bad(f"DATASEC '{sec_name}': entry #{i} is {var.describe()}, not a VAR")
        if var.linkage in (LINKAGE_STATIC, LINKAGE_EXTERN):
            return
        if fill:
            if var.name not in symbol_offsets:
                raise _bad(f"DATASEC '{sec_name}': no ELF symbol for VAR '{var.name}'")
            entry[1] = symbol_offsets[var.name] & _U32
        if var.name in hidden and var.id >= self._start_id:
            struct.pack_into("<I", out, self._local_offset(var.id) + 12, LINKAGE_STATIC)
