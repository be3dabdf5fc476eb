"""Struct layouts as BTF describes them, for tests that compare ttcp's view of a
C struct (ctypes layouts, `struct` formats) with the compiler's or the kernel's.

Pure: reads BTF with ttcp's own reader, never the kernel.
"""

from __future__ import annotations

import functools
import re
import struct
from typing import NamedTuple

from tests.support.objects import SHIPPED
from ttcp.obj.btf import INT_SIGNED, KIND_STRUCT, KIND_UNION, Btf, Int
from ttcp.obj.elf import read_object


class Field(NamedTuple):
    """Where a member lives, in bits (bit-fields need them); `signed` for integers
    (None for anything else)."""

    bit_offset: int
    bit_size: int
    signed: bool | None = None

    @property
    def byte_range(self) -> tuple[int, int] | None:
        """(offset, size) in bytes, or None for a bit-field."""
        if self.bit_offset % 8 or self.bit_size % 8:
            return None
        return self.bit_offset // 8, self.bit_size // 8


def fields(btf: Btf, type_id: int, base: int = 0) -> dict[str, Field]:
    """The members of a struct/union by name, offsets from its start. Members of
    anonymous structs and unions are the enclosing struct's (as in C); a named
    member of struct or union type is one field."""
    out: dict[str, Field] = {}
    for m in btf.type(btf.skip_mods_and_typedefs(type_id)).members:
        real = btf.type(btf.skip_mods_and_typedefs(m.type))
        offset = base + m.bit_offset
        if not m.name and real.kind in (KIND_STRUCT, KIND_UNION):
            out.update(fields(btf, real.id, offset))
            continue
        size = m.bitfield_size or btf.resolve_size(m.type) * 8
        signed = bool(real.encoding & INT_SIGNED) if isinstance(real, Int) else None
        out[m.name] = Field(offset, size, signed)
    return out


def struct_id(btf: Btf, name: str) -> int | None:
    """The id of `struct name`, None if this BTF has none; two is an error."""
    found = btf.ids_by_name(name, KIND_STRUCT)
    assert len(found) <= 1, f"{len(found)} structs named {name}"
    return found[0] if found else None


@functools.cache
def shipped_btf() -> Btf:
    """The BTF of the object ttcp ships (what the kernel will run)."""
    raw = read_object(str(SHIPPED)).btf
    assert raw is not None, f"{SHIPPED} has no .BTF"
    return Btf.parse(raw)


def shipped_struct(name: str) -> tuple[int, dict[str, Field]]:
    """(sizeof, fields) of a struct of the shipped BPF program."""
    btf = shipped_btf()
    tid = struct_id(btf, name)
    assert tid is not None, f"the shipped object has no struct {name}"
    return btf.resolve_size(tid), fields(btf, tid)


_ITEM = re.compile(r"(\d*)([xcbB?hHiIlLqQnNefdsp])")


def format_items(fmt: str) -> list[tuple[int, int, str]]:
    """(offset, size, code) of each item of a `struct` format with standard sizes
    (no native alignment), "16s" being one item, "26Q" one array item (a C
    array member) and "x" a pad byte."""
    order, body = fmt[:1], fmt[1:]
    assert order in ("<", "=", ">", "!"), f"{fmt!r}: only standard-size formats are supported"
    items: list[tuple[int, int, str]] = []
    prefix, pos = order, 0
    for m in _ITEM.finditer(body):
        assert m.start() == pos, f"unsupported format {fmt!r}"
        pos = m.end()
        code = m.group(2)
        offset = struct.calcsize(prefix)
        prefix += m.group()
        items.append((offset, struct.calcsize(prefix) - offset, code))
    assert pos == len(body), f"unsupported format {fmt!r}"
    return items
