"""Decoded BTF types: one class per kind, as cilium/ebpf's btf/types.go.

A kind's fields exist only on its class, so code that has checked
`isinstance(t, Array)` may read `t.nelems`, and a type checker follows it;
`kind` is a class attribute for messages and kind tables. Instances are
cached and shared by the Btf that decoded them, so they are read-only
(`Final`, checked statically). Plain slotted classes, not dataclasses:
creating ~20 dataclasses costs ~20 ms of start-up on Python 3.11.
"""

from __future__ import annotations

from typing import ClassVar, Final, NamedTuple

from ttcp.obj.btf import kinds as K


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


class VarSecInfo(NamedTuple):
    """A DATASEC entry: a VAR (or FUNC for .ksyms) at offset, size bytes."""

    type: int
    offset: int
    size: int


class BtfType:
    """What every kind has: its id, name (and the name's string offset) and
    the kind_flag bit (bitfield members, signed enums, a union FWD)."""

    __slots__ = ("id", "kflag", "name", "name_off")
    kind: ClassVar[int] = K.KIND_UNKN
    _fields: ClassVar[tuple[str, ...]] = __slots__  # all slots of the class, base first

    def __init__(self, id: int, name: str, name_off: int, kflag: bool) -> None:
        self.id: Final = id
        self.name: Final = name
        self.name_off: Final = name_off
        self.kflag: Final = kflag

    def __init_subclass__(cls) -> None:
        cls._fields = cls._fields + tuple(cls.__dict__.get("__slots__", ()))

    @property
    def kind_name(self) -> str:
        return K.KIND_NAMES[self.kind]

    def describe(self) -> str:
        """libbpf style "[5] struct sock" (or "<anon>" for no name)."""
        return f"[{self.id}] {self.kind_name} {self.name or '<anon>'}"

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BtfType) and type(other) is type(self)
                and other._values() == self._values())

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"


class Void(BtfType):
    """Type id 0: no record, no size."""

    __slots__ = ()


class Sized(BtfType):
    """A type whose record holds its byte size."""

    __slots__ = ("size",)

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, size: int) -> None:
        super().__init__(id, name, name_off, kflag)
        self.size: Final = size


class Int(Sized):
    __slots__ = ("bits", "encoding", "offset")
    kind = K.KIND_INT

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, size: int,
                 encoding: int, offset: int, bits: int) -> None:
        super().__init__(id, name, name_off, kflag, size)
        self.encoding: Final = encoding  # INT_SIGNED | INT_CHAR | INT_BOOL
        self.offset: Final = offset  # bit offset of the value (0 wherever CO-RE works)
        self.bits: Final = bits


class Reference(BtfType):
    """A type whose record names one other type (ptr, typedef, qualifiers)."""

    __slots__ = ("type",)

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, type: int) -> None:
        super().__init__(id, name, name_off, kflag)
        self.type: Final = type


class Ptr(Reference):
    __slots__ = ()
    kind = K.KIND_PTR


class Typedef(Reference):
    __slots__ = ()
    kind = K.KIND_TYPEDEF


class Qualifier(Reference):
    """volatile, const, restrict or a type tag: the same type, annotated."""

    __slots__ = ()


class Volatile(Qualifier):
    __slots__ = ()
    kind = K.KIND_VOLATILE


class Const(Qualifier):
    __slots__ = ()
    kind = K.KIND_CONST


class Restrict(Qualifier):
    __slots__ = ()
    kind = K.KIND_RESTRICT


class TypeTag(Qualifier):
    __slots__ = ()
    kind = K.KIND_TYPE_TAG


class Array(BtfType):
    __slots__ = ("elem_type", "index_type", "nelems")
    kind = K.KIND_ARRAY

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, elem_type: int,
                 index_type: int, nelems: int) -> None:
        super().__init__(id, name, name_off, kflag)
        self.elem_type: Final = elem_type
        self.index_type: Final = index_type
        self.nelems: Final = nelems


class Composite(Sized):
    """A struct or a union."""

    __slots__ = ("members",)

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, size: int,
                 members: tuple[Member, ...]) -> None:
        super().__init__(id, name, name_off, kflag, size)
        self.members: Final = members


class Struct(Composite):
    __slots__ = ()
    kind = K.KIND_STRUCT


class Union(Composite):
    __slots__ = ()
    kind = K.KIND_UNION


class Enum(Sized):
    """A 32-bit enum; isinstance(t, Enum) holds for ENUM64 too (libbpf's
    btf_is_any_enum). kflag: the values are signed."""

    __slots__ = ("values",)
    kind = K.KIND_ENUM

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, size: int,
                 values: tuple[EnumValue, ...]) -> None:
        super().__init__(id, name, name_off, kflag, size)
        self.values: Final = values


class Enum64(Enum):
    __slots__ = ()
    kind = K.KIND_ENUM64


class Fwd(BtfType):
    """A forward declaration; kflag: of a union (else of a struct)."""

    __slots__ = ()
    kind = K.KIND_FWD


class Symbol(Reference):
    """A FUNC or a VAR: named code or data with a linkage (LINKAGE_*)."""

    __slots__ = ("linkage",)

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, type: int,
                 linkage: int) -> None:
        super().__init__(id, name, name_off, kflag, type)
        self.linkage: Final = linkage


class Func(Symbol):
    """A function; `type` is its FUNC_PROTO."""

    __slots__ = ()
    kind = K.KIND_FUNC


class FuncProto(Reference):
    """A function's signature; `type` is the return type."""

    __slots__ = ("params",)
    kind = K.KIND_FUNC_PROTO

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, type: int,
                 params: tuple[Param, ...]) -> None:
        super().__init__(id, name, name_off, kflag, type)
        self.params: Final = params


class Var(Symbol):
    __slots__ = ()
    kind = K.KIND_VAR


class Datasec(Sized):
    __slots__ = ("vars",)
    kind = K.KIND_DATASEC

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, size: int,
                 vars: tuple[VarSecInfo, ...]) -> None:
        super().__init__(id, name, name_off, kflag, size)
        self.vars: Final = vars


class Float(Sized):
    __slots__ = ()
    kind = K.KIND_FLOAT


class DeclTag(Reference):
    __slots__ = ("component_idx",)
    kind = K.KIND_DECL_TAG

    def __init__(self, id: int, name: str, name_off: int, kflag: bool, type: int,
                 component_idx: int) -> None:
        super().__init__(id, name, name_off, kflag, type)
        self.component_idx: Final = component_idx  # -1: on the type, else that member/param


VOID = Void(0, "", 0, False)
