"""What a CO-RE relocation asks (its kinds) and what the resolver answers.

Kinds and their names are libbpf's (enum bpf_core_relo_kind and
core_relo_kind_str()); CoreResult is its bpf_core_relo_res plus what the
--explain output and the tests want to see. Both records are NamedTuples:
a frozen dataclass of 15 fields costs ~5 ms of start-up to create.
"""

from __future__ import annotations

from typing import NamedTuple

from ttcp.errors import CoreRelocationError, TtcpError
from ttcp.obj.btf_ext import CoreRelo

FIELD_BYTE_OFFSET = 0
FIELD_BYTE_SIZE = 1
FIELD_EXISTS = 2
FIELD_SIGNED = 3
FIELD_LSHIFT_U64 = 4
FIELD_RSHIFT_U64 = 5
TYPE_ID_LOCAL = 6
TYPE_ID_TARGET = 7
TYPE_EXISTS = 8
TYPE_SIZE = 9
ENUMVAL_EXISTS = 10
ENUMVAL_VALUE = 11
TYPE_MATCHES = 12

# As libbpf's core_relo_kind_str() prints them.
KIND_NAMES_CORE = (
    "byte_off", "byte_sz", "field_exists", "signed", "lshift_u64", "rshift_u64",
    "local_type_id", "target_type_id", "type_exists", "type_size",
    "enumval_exists", "enumval_value", "type_matches",
)

FIELD_KINDS = frozenset(range(FIELD_BYTE_OFFSET, FIELD_RSHIFT_U64 + 1))
TYPE_KINDS = frozenset({TYPE_ID_LOCAL, TYPE_ID_TARGET, TYPE_EXISTS, TYPE_SIZE, TYPE_MATCHES})
ENUMVAL_KINDS = frozenset({ENUMVAL_EXISTS, ENUMVAL_VALUE})


class Candidate(NamedTuple):
    """A target type tried for a relocation, with libbpf's debug view of it."""

    type_id: int
    matched: bool
    spec: str


class CoreResult(NamedTuple):
    """The decision for one relocation (libbpf's bpf_core_relo_res + context).

    Values are unsigned 64-bit, as libbpf computes and prints them.
    `validate`: the instruction must currently hold local_value.
    `orig_size`/`new_size`: field sizes for LDX/ST/STX size adjustment
    (0 when not a plain field byte offset); `fail_memsz_adjust`: sizes differ
    in a way that cannot be fixed by resizing the load, so a memory
    instruction gets poisoned instead.
    """

    relo: CoreRelo
    kind: int
    kind_name: str
    spec: str
    local_spec: str
    target_spec: str | None
    local_value: int
    new_value: int | None
    poisoned: bool
    validate: bool
    orig_size: int = 0
    new_size: int = 0
    fail_memsz_adjust: bool = False
    target_type_id: int | None = None
    candidates: tuple[Candidate, ...] = ()


class SpecError(TtcpError):
    """Internal: the relocation, or a BTF it walks, is malformed. Never leaves
    ttcp.obj.core: the resolver turns it into a CoreRelocationError that names
    the relocation (a ValueError from a bug in ttcp stays a ValueError)."""


class Poison(TtcpError):
    """Internal: libbpf's -EUCLEAN, the target lacks what the instruction needs (the
    instruction is poisoned; never leaves ttcp.obj.core)."""


def relo_error(relo: CoreRelo, message: str) -> CoreRelocationError:
    return CoreRelocationError(f"CO-RE relo #{relo.index} (insn #{relo.insn_idx}, "
                               f"{kind_name(relo.kind)}): {message}")


def kind_name(kind: int) -> str:
    return KIND_NAMES_CORE[kind] if 0 <= kind < len(KIND_NAMES_CORE) else f"kind {kind}"
