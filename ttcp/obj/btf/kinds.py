"""BTF kinds: one table of what each kind number is and how long its record is.

Every record starts with the 12-byte `struct btf_type` (name_off, info,
size/type); a kind adds `extra` fixed bytes and `entry` bytes per vlen
(include/uapi/linux/btf.h). The walker, the decoder and the test builder all
read their numbers here.
"""

from __future__ import annotations

from typing import NamedTuple


class Kind(NamedTuple):
    number: int
    name: str  # as libbpf's btf_kind_str() spells it, so messages match bpftool's
    extra: int  # fixed bytes after the common header
    entry: int  # bytes per vlen entry; 0 when vlen is not a count
    max_vlen: int  # largest vlen of a well-formed record (FUNC keeps its linkage there)


COMMON_SIZE = 12  # struct btf_type

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

LINKAGE_STATIC = 0
LINKAGE_GLOBAL = 1
LINKAGE_EXTERN = 2

_ANY_VLEN = 0xFFFF

KINDS = (
    Kind(KIND_UNKN, "void", 0, 0, 0),  # type id 0 only, never a record
    Kind(KIND_INT, "int", 4, 0, 0),  # encoding, offset, bits
    Kind(KIND_PTR, "ptr", 0, 0, 0),
    Kind(KIND_ARRAY, "array", 12, 0, 0),  # elem type, index type, nelems
    Kind(KIND_STRUCT, "struct", 0, 12, _ANY_VLEN),  # members: name, type, offset
    Kind(KIND_UNION, "union", 0, 12, _ANY_VLEN),
    Kind(KIND_ENUM, "enum", 0, 8, _ANY_VLEN),  # name, 32-bit value
    Kind(KIND_FWD, "fwd", 0, 0, 0),
    Kind(KIND_TYPEDEF, "typedef", 0, 0, 0),
    Kind(KIND_VOLATILE, "volatile", 0, 0, 0),
    Kind(KIND_CONST, "const", 0, 0, 0),
    Kind(KIND_RESTRICT, "restrict", 0, 0, 0),
    Kind(KIND_FUNC, "func", 0, 0, LINKAGE_EXTERN),
    Kind(KIND_FUNC_PROTO, "func_proto", 0, 8, _ANY_VLEN),  # params: name, type
    Kind(KIND_VAR, "var", 4, 0, 0),  # linkage
    Kind(KIND_DATASEC, "datasec", 0, 12, _ANY_VLEN),  # vars: type, offset, size
    Kind(KIND_FLOAT, "float", 0, 0, 0),
    Kind(KIND_DECL_TAG, "decl_tag", 4, 0, 0),  # component index
    Kind(KIND_TYPE_TAG, "type_tag", 0, 0, 0),
    Kind(KIND_ENUM64, "enum64", 0, 12, _ANY_VLEN),  # name, value low, value high
)
assert all(k.number == i for i, k in enumerate(KINDS))

KIND_MAX = len(KINDS) - 1
KIND_NAMES = tuple(k.name for k in KINDS)

INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4

ENUM_KINDS = frozenset({KIND_ENUM, KIND_ENUM64})

