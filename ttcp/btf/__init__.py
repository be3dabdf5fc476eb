"""BTF (BPF Type Format): read vmlinux, module (split) and object BTF (pure).

kinds: the kind table; header: magic and section bounds; strings: the
string section; index: the lazy record walker (type id ↔ offset); decode and
types: one record → one BtfType; btf: the Btf facade and its queries (sizes,
modifier chains, name lookups). The kernel fix-ups of object BTF live with
the loader (ttcp.btf_fixup).
"""

from ttcp.btf.btf import Btf, essential_name
from ttcp.btf.header import BTF_MAGIC, HEADER_SIZE, check_header
from ttcp.btf.kinds import (
    COMPOSITE_KINDS,
    ENUM_KINDS,
    INT_BOOL,
    INT_CHAR,
    INT_SIGNED,
    KIND_ARRAY,
    KIND_CONST,
    KIND_DATASEC,
    KIND_DECL_TAG,
    KIND_ENUM,
    KIND_ENUM64,
    KIND_FLOAT,
    KIND_FUNC,
    KIND_FUNC_PROTO,
    KIND_FWD,
    KIND_INT,
    KIND_MAX,
    KIND_NAMES,
    KIND_PTR,
    KIND_RESTRICT,
    KIND_STRUCT,
    KIND_TYPE_TAG,
    KIND_TYPEDEF,
    KIND_UNION,
    KIND_UNKN,
    KIND_VAR,
    KIND_VOLATILE,
    KINDS,
    LINKAGE_EXTERN,
    LINKAGE_GLOBAL,
    LINKAGE_STATIC,
    MODIFIER_KINDS,
    Kind,
)
from ttcp.btf.types import VOID, ArrayInfo, BtfType, EnumValue, Member, Param, VarSecInfo

__all__ = [
    "BTF_MAGIC", "COMPOSITE_KINDS", "ENUM_KINDS", "HEADER_SIZE", "INT_BOOL", "INT_CHAR",
    "INT_SIGNED", "KINDS", "KIND_ARRAY", "KIND_CONST", "KIND_DATASEC", "KIND_DECL_TAG",
    "KIND_ENUM", "KIND_ENUM64", "KIND_FLOAT", "KIND_FUNC", "KIND_FUNC_PROTO", "KIND_FWD",
    "KIND_INT", "KIND_MAX", "KIND_NAMES", "KIND_PTR", "KIND_RESTRICT", "KIND_STRUCT",
    "KIND_TYPEDEF", "KIND_TYPE_TAG", "KIND_UNION", "KIND_UNKN", "KIND_VAR", "KIND_VOLATILE",
    "LINKAGE_EXTERN", "LINKAGE_GLOBAL", "LINKAGE_STATIC", "MODIFIER_KINDS", "VOID", "ArrayInfo",
    "Btf", "BtfType", "EnumValue", "Kind", "Member", "Param", "VarSecInfo", "check_header",
    "essential_name",
]
