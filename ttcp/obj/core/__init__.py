"""CO-RE: resolve BTF-based relocations against a target BTF and patch insns (pure).

Mirrors libbpf's relo_core.c (v1.3+ semantics) along its seams: spec
parses an access string into a local spec; cands finds the target types of
a compatible kind whose essential name (flavor "___suffix" dropped) matches;
match compares each candidate accessor by accessor (named fields searched
through anonymous members); calc computes the value, requiring every
matching candidate to agree; patch writes it into the instruction, or
poisons it when no candidate matched. resolver drives them per relocation.

Deliberate differences from libbpf, both for hostile input only: modifier
loops, array loops and exponential anonymous-member searches stop with an
error instead of hanging; a member search that backs out of an anonymous
struct restores its partial spec (libbpf keeps stale state there).
"""

from ttcp.obj.core.patch import POISON_IMM, insn_class_label, patch_insn
from ttcp.obj.core.relo import (
    ENUMVAL_EXISTS,
    ENUMVAL_KINDS,
    ENUMVAL_VALUE,
    FIELD_BYTE_OFFSET,
    FIELD_BYTE_SIZE,
    FIELD_EXISTS,
    FIELD_KINDS,
    FIELD_LSHIFT_U64,
    FIELD_RSHIFT_U64,
    FIELD_SIGNED,
    KIND_NAMES_CORE,
    TYPE_EXISTS,
    TYPE_ID_LOCAL,
    TYPE_ID_TARGET,
    TYPE_KINDS,
    TYPE_MATCHES,
    TYPE_SIZE,
    Candidate,
    CoreResult,
)
from ttcp.obj.core.resolver import CoreResolver, resolve
from ttcp.obj.core.spec import SPEC_MAX_LEN

__all__ = [
    "ENUMVAL_EXISTS", "ENUMVAL_KINDS", "ENUMVAL_VALUE", "FIELD_BYTE_OFFSET", "FIELD_BYTE_SIZE",
    "FIELD_EXISTS", "FIELD_KINDS", "FIELD_LSHIFT_U64", "FIELD_RSHIFT_U64", "FIELD_SIGNED",
    "KIND_NAMES_CORE", "POISON_IMM", "SPEC_MAX_LEN", "TYPE_EXISTS", "TYPE_ID_LOCAL",
    "TYPE_ID_TARGET", "TYPE_KINDS", "TYPE_MATCHES", "TYPE_SIZE", "Candidate", "CoreResolver",
    "CoreResult", "insn_class_label", "patch_insn", "resolve",
]
