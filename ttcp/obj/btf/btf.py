"""Btf: one parsed BTF blob (vmlinux, module/split or object BTF) and its queries.

Pure: the caller passes the bytes (or an mmap). Built for vmlinux (~5 MB,
~126k types) on a tight start-up budget, so nothing is decoded up front:
parsing checks the header and the string section's ends; the type index
walks records only as far as asked; a type is decoded (and cached) when
asked for; a name lookup searches the string section for the name
(bytes.find), then the type section for its 4-byte string offset, and keeps
only hits that start a record of a wanted kind.

On the development VM (bytes.find scans ~1 GB/s) each name lookup takes
~5 ms (one find pass over the strings, one over the types). Pass an mmap of
/sys/kernel/btf/vmlinux (MAP_PRIVATE, PROT_READ; kernels >= 6.15) rather
than read() bytes to skip an 8 ms copy.

Hostile input raises FormatError("BTF", ...), never IndexError, struct.error,
RecursionError, or loops forever.
"""

from __future__ import annotations

import builtins
import mmap
import struct
from collections.abc import Iterable
from typing import TypeVar

from ttcp.obj.btf.decode import Decoder
from ttcp.obj.btf.header import Blob, bad, read_header
from ttcp.obj.btf.index import TypeIndex
from ttcp.obj.btf.kinds import KIND_FUNC, KIND_UNKN
from ttcp.obj.btf.strings import StringTable
from ttcp.obj.btf.types import (
    VOID,
    Array,
    BtfType,
    DeclTag,
    Ptr,
    Qualifier,
    Sized,
    Typedef,
    Var,
)

_T = TypeVar("_T", bound=BtfType)
_PTR_SIZE = 8  # BPF and x86-64 kernels: libbpf's btf_ptr_sz() finds 8 for both
_MAX_CHAIN = 64  # modifier/typedef chains longer than this are treated as loops
_MAX_RESOLVE_DEPTH = 32  # libbpf's MAX_RESOLVE_DEPTH
_U32 = 0xFFFFFFFF


def essential_name(name: str) -> str:
    """Drop a CO-RE flavor suffix: "sock___v2" → "sock" (libbpf's rule: cut at
    the last "X___Y" where X and Y are not underscores)."""
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name.startswith("___", i + 1) and name[i + 4] != "_":
            return name[: i + 1]
    return name


class Btf:
    """A parsed BTF blob (optionally split on top of a base, like module BTF).

    Type ids of a split BTF continue after the base's; string offsets below
    the base's string section size refer to the base's strings.
    """

    def __init__(self, data: Blob, base: Btf | None) -> None:  # use Btf.parse
        layout = read_header(data)
        self._data = data
        self.base = base
        self.strings: StringTable = StringTable(
            data, layout.strings_start, layout.strings_end,
            base.strings if base is not None else None)
        self.index = TypeIndex(data, layout.types_start, layout.types_end,
                               len(base) if base is not None else 1)
        self._decoder = Decoder(data, self.strings, self.index)
        self._types: dict[int, BtfType] = {}
        self._name_cache: dict[tuple[str, bool, frozenset[int] | None], list[int]] = {}

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview | mmap.mmap,
              base: Btf | None = None) -> Btf:
        """Check the header of a BTF blob; records are walked and decoded lazily.

        `data` may be bytes, bytearray or an mmap (kept, not copied).
        """
        if isinstance(data, memoryview):
            data = data.tobytes()
        elif not isinstance(data, (bytes, bytearray, mmap.mmap)):
            data = bytes(data)
        return cls(data, base)

    # ------------------------------------------------------------ basics

    def __len__(self) -> int:
        """Number of types including void (and the base's, for split BTF).

        Walks the whole type section on first use.
        """
        return self.index.first_id + self.index.count()

    def own_ids(self) -> range:
        """Ids of this blob's own types (a split BTF's start after its base's)."""
        return range(self.index.first_id, len(self))

    @property
    def data(self) -> Blob:
        """The blob as passed to parse()."""
        return self._data

    def string(self, offset: int) -> str:
        """The NUL-terminated string at `offset` of the string section."""
        return self.strings.get(offset)

    def record_offset(self, type_id: int) -> int:
        """Byte offset in data of the record of one of this blob's own types."""
        self._check_id(type_id)
        if type_id < self.index.first_id:
            raise bad(f"type [{type_id}] belongs to the base BTF")
        return self.index.offset(type_id)

    def _check_id(self, type_id: int) -> None:
        if not isinstance(type_id, int) or type_id < 0:
            raise bad(f"type id {type_id!r} invalid")
        if type_id < self.index.first_id:
            if self.base is not None:
                self.base._check_id(type_id)
            return
        if not self.index.has(type_id):
            raise bad(f"type id {type_id} out of range (0..{len(self) - 1})")

    def kind_of(self, type_id: int) -> int:
        """Kind of a type without decoding it (cheap for scans)."""
        cached = self._types.get(type_id)
        if cached is not None:
            return cached.kind
        self._check_id(type_id)
        if type_id < self.index.first_id:
            return self.base.kind_of(type_id) if self.base is not None else KIND_UNKN
        info: int = struct.unpack_from("<I", self._data, self.index.offset(type_id) + 4)[0]
        return (info >> 24) & 0x1F

    def type(self, type_id: int) -> BtfType:
        """Decode type `type_id` (0 is void); FormatError if malformed."""
        cached = self._types.get(type_id)
        if cached is not None:
            return cached
        self._check_id(type_id)
        if type_id < self.index.first_id:
            return self.base.type(type_id) if self.base is not None else VOID
        decoded = self._decoder.decode(type_id, self.index.offset(type_id))
        self._types[type_id] = decoded
        return decoded

    def name_of(self, type_id: int) -> str:
        return self.type(type_id).name

    def typed(self, type_id: int, cls: builtins.type[_T]) -> _T:
        """type(type_id), which the caller expects to be a `cls` (a Composite
        for a member's owner, say); FormatError if the BTF says otherwise."""
        t = self.type(type_id)
        if not isinstance(t, cls):
            raise bad(f"type {t.describe()} is not a {cls.__name__.lower()}")
        return t

    # ----------------------------------------------------------- chains

    def skip_mods_and_typedefs(self, type_id: int) -> int:
        """Follow const/volatile/restrict/type_tag/typedef to the real type."""
        seen = []
        t = self.type(type_id)
        while isinstance(t, (Qualifier, Typedef)):
            seen.append(t.id)
            if len(seen) > _MAX_CHAIN or t.type in seen:
                raise bad(
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
            if isinstance(t, Sized):
                size = t.size
                break
            if isinstance(t, Ptr):
                size = _PTR_SIZE
                break
            if isinstance(t, Array):
                nelems *= t.nelems
                if nelems > _U32:
                    raise bad(f"type [{type_id}]: array size overflows 32 bits")
                t = self.type(t.elem_type)
            elif isinstance(t, (Qualifier, Typedef, Var, DeclTag)):
                t = self.type(t.type)
            else:
                raise bad(f"type {self.type(type_id).describe()}: "
                          f"{t.kind_name} has no size")
        else:
            raise bad(f"type [{type_id}]: size not resolved within "
                      f"{_MAX_RESOLVE_DEPTH} steps (loop?)")
        if nelems * size > _U32:
            raise bad(f"type [{type_id}]: size overflows 32 bits")
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
        for off, tail in self.strings.starting_with(raw):
            if essential:
                # "a___b" itself is no candidate for "a___b___c" (its essential is "a")
                if tail in (b"\0", b"___") and essential_name(self.string(off)) == want:
                    offsets.add(off)
            elif tail == b"\0":
                offsets.add(off)
        ids = set()
        for off in offsets:
            ids.update(self.index.named(off, kinds))
        return found + sorted(ids)
