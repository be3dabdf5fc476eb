"""Decoded BTF types: plain immutable records, cached by the Btf that made them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ttcp.btf.kinds import KIND_NAMES, KIND_UNKN


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
