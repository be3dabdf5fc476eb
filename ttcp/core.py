"""CO-RE: resolve BTF-based relocations against a target BTF and patch insns.

Mirrors libbpf's relo_core.c (v1.3+ semantics): the access string is parsed
into a local spec; candidates are the target types of a compatible kind
whose essential name (flavor "___suffix" dropped) matches; each candidate is
matched accessor by accessor (named fields searched through anonymous
members); every matching candidate must yield the same value, else the
relocation is ambiguous. No candidate means the instruction is poisoned
(existence and type kinds resolve to 0 instead).

Deliberate differences from libbpf, both for hostile input only: modifier
loops, array loops and exponential anonymous-member searches stop with an
error instead of hanging; a member search that backs out of an anonymous
struct restores its partial spec (libbpf keeps stale state there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ttcp import asm
from ttcp.asm import INSN_SIZE
from ttcp.btf import (
    COMPOSITE_KINDS,
    ENUM_KINDS,
    INT_SIGNED,
    KIND_ARRAY,
    KIND_ENUM,
    KIND_ENUM64,
    KIND_FLOAT,
    KIND_FUNC_PROTO,
    KIND_FWD,
    KIND_INT,
    KIND_PTR,
    KIND_STRUCT,
    KIND_UNION,
    KIND_UNKN,
    Btf,
    BtfType,
    essential_name,
)
from ttcp.btf_ext import CoreRelo
from ttcp.errors import CoreRelocationError, FormatError

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

POISON_IMM = 0xBAD2310  # libbpf's "bad relo" helper id: verifier says unknown#195896080
SPEC_MAX_LEN = 64  # BPF_CORE_SPEC_MAX_LEN
_MAX_DEPTH = 32  # libbpf's recursion depth for type compat/match
_MAX_WORK = 50_000  # member visits per relocation before giving up (hostile BTF)
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

_BYTES_SIZE = {v: k for k, v in asm.SIZE_BYTES.items()}

_ACCESS_INT = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


class _Poison(Exception):
    """libbpf's -EUCLEAN: the target lacks what the instruction needs."""


@dataclass
class Accessor:
    """One high-level step: a named member (name set) or an array index."""

    type_id: int
    idx: int
    name: str | None


@dataclass
class Spec:
    """A parsed access path into one BTF (libbpf's struct bpf_core_spec)."""

    btf: Btf
    root_type_id: int
    kind: int
    raw: list[int] = field(default_factory=list)
    accessors: list[Accessor] = field(default_factory=list)
    bit_offset: int = 0

    def path(self) -> str:
        """Readable C-like path: "struct sock.__sk_common.skc_family",
        "enum foo::BAR", or just "struct sock" for type kinds."""
        root = self.btf.type(self.root_type_id)
        text = f"{root.kind_name} {root.name or '<anon>'}"
        if self.kind in ENUMVAL_KINDS:
            return text + (f"::{self.accessors[0].name}" if self.accessors else "")
        if self.kind in FIELD_KINDS:
            text += self._accessor_text()
        return text

    def _accessor_text(self) -> str:
        out = []
        for i, acc in enumerate(self.accessors):
            if acc.name is not None:
                out.append(f".{acc.name}")
            elif i > 0 or acc.idx > 0:
                out.append(f"[{acc.idx}]")
        return "".join(out)

    def format(self) -> str:
        """libbpf's bpf_core_format_spec(), as bpftool -d prints it."""
        root = self.btf.type(self.root_type_id)
        text = (f"<{KIND_NAMES_CORE[self.kind]}> [{self.root_type_id}] {root.kind_name} "
                f"{root.name or '<anon>'}")
        if self.kind in TYPE_KINDS:
            return text
        if self.kind in ENUMVAL_KINDS:
            enum = self.btf.type(self.btf.skip_mods_and_typedefs(self.root_type_id))
            idx = self.raw[0] if self.raw else 0  # libbpf shows #0 when unmatched
            if enum.kind not in ENUM_KINDS or idx >= len(enum.enum_values):
                return text
            value = enum.enum_values[idx]
            return text + f"::{value.name} = {value.value}"
        raw = ":".join(str(i) for i in self.raw)
        byte, bit = divmod(self.bit_offset, 8)
        where = f"{byte}.{bit}" if bit else f"{byte}"
        return f"{text}{self._accessor_text()} ({raw} @ offset {where})"


@dataclass(frozen=True)
class Candidate:
    """A target type tried for a relocation, with libbpf's debug view of it."""

    type_id: int
    matched: bool
    spec: str


@dataclass(frozen=True)
class CoreResult:
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


@dataclass
class _Res:
    orig_val: int = 0
    new_val: int = 0
    poison: bool = False
    validate: bool = True
    orig_sz: int = 0
    new_sz: int = 0
    orig_type_id: int = 0
    new_type_id: int = 0
    fail_memsz_adjust: bool = False


def _err(relo: CoreRelo, message: str) -> CoreRelocationError:
    return CoreRelocationError(f"CO-RE relo #{relo.index} (insn #{relo.insn_idx}, "
                               f"{_kind_name(relo.kind)}): {message}")


def _kind_name(kind: int) -> str:
    return KIND_NAMES_CORE[kind] if 0 <= kind < len(KIND_NAMES_CORE) else f"kind {kind}"


def parse_access_string(text: str) -> list[int]:
    """"0:1:2" → [0, 1, 2], accepting what libbpf's sscanf("%d") loop does."""
    if not text or text[0] == ":":
        raise ValueError(f"access string {text!r} is empty or starts with ':'")
    out: list[int] = []
    pos = 0
    while pos < len(text):
        if text[pos] == ":":
            pos += 1
        found = _ACCESS_INT.match(text, pos)
        if found is None:
            raise ValueError(f"access string {text!r}: no number at position {pos}")
        value = int(found.group())
        if not 0 <= value <= 0x7FFFFFFF:
            raise ValueError(f"access string {text!r}: index {value} out of range")
        if len(out) == SPEC_MAX_LEN:
            raise ValueError(f"access string {text!r}: more than {SPEC_MAX_LEN} indices")
        out.append(value)
        pos = found.end()
    return out


class CoreResolver:
    """Resolves the relocations of one object against one target BTF.

    Candidate lists are cached per local type id and narrowed to the
    candidates that matched, as libbpf does for the whole object, so later
    relocations of the same type see the same pruned list.
    """

    def __init__(self, local: Btf, target: Btf) -> None:
        self.local = local
        self.target = target
        self._cands: dict[int, list[int]] = {}
        self._work = 0

    # ------------------------------------------------------------ driver

    def resolve(self, relo: CoreRelo) -> CoreResult:
        """Decide what relo's instruction becomes; CoreRelocationError when
        the relocation is malformed or ambiguous."""
        self._work = 0
        if not 0 <= relo.kind <= TYPE_MATCHES:
            raise _err(relo, f"unknown relocation kind {relo.kind}")
        if not 0 <= relo.type_id < len(self.local):
            raise _err(relo, f"type id {relo.type_id} out of range "
                             f"(local BTF has {len(self.local)} types)")
        local_type = self.local.type(relo.type_id)
        cands = None
        if relo.kind != TYPE_ID_LOCAL:
            cands = self._candidates(relo, local_type)
        try:
            local_spec = self._parse_spec(relo)
        except (ValueError, FormatError) as err:
            raise _err(relo, f"parsing {local_type.describe()} + {relo.access_str!r} "
                             f"failed: {err}") from None
        if cands is None:
            return CoreResult(
                relo=relo, kind=relo.kind, kind_name=KIND_NAMES_CORE[relo.kind],
                spec=local_spec.path(), local_spec=local_spec.format(), target_spec=None,
                local_value=relo.type_id, new_value=relo.type_id, poisoned=False,
                validate=False)
        return self._decide(relo, local_spec, cands)

    def _candidates(self, relo: CoreRelo, local_type: BtfType) -> list[int]:
        cached = self._cands.get(relo.type_id)
        if cached is not None:
            return cached
        if not local_type.name:
            raise _err(relo, f"{local_type.describe()}: relocations against anonymous "
                             "types are not supported")
        kinds = ENUM_KINDS if local_type.kind in ENUM_KINDS else {local_type.kind}
        found = [i for i in self.target.ids_by_essential_name(local_type.name, kinds)
                 if i > 0]
        self._cands[relo.type_id] = found
        return found

    def _decide(self, relo: CoreRelo, local_spec: Spec, cands: list[int]) -> CoreResult:
        tried: list[Candidate] = []
        matched: list[int] = []
        best: tuple[_Res, Spec] | None = None
        for cand_id in cands:
            ok, cand_spec = self._spec_match(relo, local_spec, cand_id)
            tried.append(Candidate(cand_id, ok, cand_spec.format()))
            if not ok:
                continue
            res = self._calc(relo, local_spec, cand_spec)
            if best is None:
                best = (res, cand_spec)
            elif cand_spec.bit_offset != best[1].bit_offset:
                raise _err(relo, f"field offset ambiguity for {local_spec.path()}: "
                                 f"candidate [{cand_id}] at bit {cand_spec.bit_offset}, "
                                 f"[{best[1].root_type_id}] at bit {best[1].bit_offset}")
            elif res.poison != best[0].poison or res.new_val != best[0].new_val:
                raise _err(relo, f"relocation decision ambiguity for {local_spec.path()}: "
                                 f"candidate [{cand_id}] gives {_outcome(res)}, "
                                 f"[{best[1].root_type_id}] gives {_outcome(best[0])}")
            matched.append(cand_id)
        if matched:
            self._cands[relo.type_id] = matched
        if best is None:
            res, target = self._calc(relo, local_spec, None), None
        else:
            res, target = best
        return CoreResult(
            relo=relo, kind=relo.kind, kind_name=KIND_NAMES_CORE[relo.kind],
            spec=local_spec.path(), local_spec=local_spec.format(),
            target_spec=target.format() if target is not None else None,
            local_value=res.orig_val, new_value=None if res.poison else res.new_val,
            poisoned=res.poison, validate=res.validate, orig_size=res.orig_sz,
            new_size=res.new_sz, fail_memsz_adjust=res.fail_memsz_adjust,
            target_type_id=target.root_type_id if target is not None else None,
            candidates=tuple(tried))

    def _tick(self, relo: CoreRelo) -> None:
        self._work += 1
        if self._work > _MAX_WORK:
            raise _err(relo, f"gave up after {_MAX_WORK} type comparisons (hostile BTF?)")

    # -------------------------------------------------------- local spec

    def _parse_spec(self, relo: CoreRelo) -> Spec:
        """libbpf's bpf_core_parse_spec on the local BTF."""
        btf = self.local
        spec = Spec(btf, relo.type_id, relo.kind)
        if relo.kind in TYPE_KINDS:
            if relo.access_str != "0":
                raise ValueError(f"type relocation needs access string '0', "
                                 f"got {relo.access_str!r}")
            return spec
        spec.raw = parse_access_string(relo.access_str)
        type_id = btf.skip_mods_and_typedefs(relo.type_id)
        t = btf.type(type_id)
        first = spec.raw[0]
        spec.accessors.append(Accessor(type_id, first, None))
        if relo.kind in ENUMVAL_KINDS:
            if t.kind not in ENUM_KINDS or len(spec.raw) > 1 or first >= len(t.enum_values):
                raise ValueError(f"enumerator index {spec.raw} invalid for {t.describe()}")
            spec.accessors[0].name = t.enum_values[first].name
            return spec
        spec.bit_offset = (first * btf.resolve_size(type_id) * 8) & _U32
        for i in range(1, len(spec.raw)):
            type_id = self._parse_step(spec, type_id, spec.raw[i], i)
        return spec

    def _parse_step(self, spec: Spec, type_id: int, idx: int, pos: int) -> int:
        btf = spec.btf
        type_id = btf.skip_mods_and_typedefs(type_id)
        t = btf.type(type_id)
        if t.kind in COMPOSITE_KINDS:
            if idx >= len(t.members):
                raise ValueError(f"member index {idx} out of range for {t.describe()}")
            member = t.members[idx]
            spec.bit_offset = (spec.bit_offset + member.bit_offset) & _U32
            if member.name:
                spec.accessors.append(Accessor(type_id, idx, member.name))
            return member.type
        if t.kind == KIND_ARRAY:
            assert t.array is not None
            elem = btf.skip_mods_and_typedefs(t.array.elem_type)
            if not _is_flex(btf, spec.accessors[-1], t) and idx >= t.array.nelems:
                raise ValueError(f"array index {idx} out of range for {t.describe()} "
                                 f"of {t.array.nelems}")
            spec.accessors.append(Accessor(elem, idx, None))
            spec.bit_offset = (spec.bit_offset + idx * btf.resolve_size(elem) * 8) & _U32
            return elem
        raise ValueError(f"index #{pos} lands in {t.describe()}, not a struct, union "
                         "or array")

    # ----------------------------------------------------- candidate match

    def _spec_match(self, relo: CoreRelo, local: Spec, targ_id: int) -> tuple[bool, Spec]:
        """libbpf's bpf_core_spec_match: (matched, target spec so far)."""
        target = self.target
        spec = Spec(target, targ_id, local.kind)
        try:
            if local.kind in TYPE_KINDS:
                if local.kind == TYPE_MATCHES:
                    ok = self._types_match(relo, local.root_type_id, targ_id, False, _MAX_DEPTH)
                else:
                    ok = self._types_compat(relo, local.root_type_id, targ_id, _MAX_DEPTH)
                return ok, spec
            if local.kind in ENUMVAL_KINDS:
                return self._match_enumval(local, spec, targ_id), spec
            return self._match_fields(relo, local, spec, targ_id), spec
        except (ValueError, FormatError) as err:
            raise _err(relo, f"matching candidate {target.type(targ_id).describe()}: "
                             f"{err}") from None

    def _match_enumval(self, local: Spec, spec: Spec, targ_id: int) -> bool:
        enum_id = self.target.skip_mods_and_typedefs(targ_id)
        enum = self.target.type(enum_id)
        if enum.kind not in ENUM_KINDS:
            return False
        want = essential_name(local.accessors[0].name or "")
        for i, value in enumerate(enum.enum_values):
            if essential_name(value.name) == want:
                spec.accessors.append(Accessor(enum_id, i, value.name))
                spec.raw.append(i)
                return True
        return False

    def _match_fields(self, relo: CoreRelo, local: Spec, spec: Spec, targ_id: int) -> bool:
        target = self.target
        for i, acc in enumerate(local.accessors):
            targ_id = target.skip_mods_and_typedefs(targ_id)
            if acc.name is not None:
                found = self._match_member(relo, acc, targ_id, spec)
                if found is None:
                    return False
                targ_id = found
                continue
            if i > 0:
                t = target.type(targ_id)
                if t.kind != KIND_ARRAY:
                    return False
                assert t.array is not None
                if not _is_flex(target, spec.accessors[-1], t) and acc.idx >= t.array.nelems:
                    return False
                targ_id = target.skip_mods_and_typedefs(t.array.elem_type)
            if len(spec.raw) == SPEC_MAX_LEN:
                raise ValueError(f"access path deeper than {SPEC_MAX_LEN}")
            spec.accessors.append(Accessor(targ_id, acc.idx, None))
            spec.raw.append(acc.idx)
            size = target.resolve_size(targ_id)
            spec.bit_offset = (spec.bit_offset + acc.idx * size * 8) & _U32
        return True

    def _match_member(self, relo: CoreRelo, acc: Accessor, targ_id: int,
                      spec: Spec) -> int | None:
        """Find local member `acc` by name in target composite `targ_id`,
        descending into anonymous members; returns the member's type id."""
        target = self.target
        targ_id = target.skip_mods_and_typedefs(targ_id)
        t = target.type(targ_id)
        if t.kind not in COMPOSITE_KINDS:
            return None
        local_member = self.local.type(acc.type_id).members[acc.idx]
        for i, member in enumerate(t.members):
            self._tick(relo)
            if len(spec.raw) == SPEC_MAX_LEN:
                raise ValueError(f"access path deeper than {SPEC_MAX_LEN}")
            saved_offset = spec.bit_offset
            spec.bit_offset = (spec.bit_offset + member.bit_offset) & _U32
            spec.raw.append(i)
            if not member.name:
                found = self._match_member(relo, acc, member.type, spec)
                if found is not None:
                    return found
            elif member.name == local_member.name:
                if self._fields_compat(relo, local_member.type, member.type):
                    spec.accessors.append(Accessor(targ_id, i, member.name))
                    return member.type
                spec.bit_offset = saved_offset  # first same-named member decides
                spec.raw.pop()
                return None
            spec.bit_offset = saved_offset
            spec.raw.pop()
        return None

    # ------------------------------------------------------ compatibility

    def _fields_compat(self, relo: CoreRelo, local_id: int, targ_id: int) -> bool:
        """libbpf's bpf_core_fields_are_compat."""
        for _ in range(SPEC_MAX_LEN):
            self._tick(relo)
            lt = self.local.type(self.local.skip_mods_and_typedefs(local_id))
            tt = self.target.type(self.target.skip_mods_and_typedefs(targ_id))
            if lt.kind in COMPOSITE_KINDS and tt.kind in COMPOSITE_KINDS:
                return True
            if not _kind_compat(lt, tt):
                return False
            if lt.kind in (KIND_PTR, KIND_FLOAT):
                return True
            if lt.kind in (KIND_FWD, KIND_ENUM, KIND_ENUM64):
                return (not lt.name or not tt.name
                        or essential_name(lt.name) == essential_name(tt.name))
            if lt.kind == KIND_INT:
                return lt.int_offset == 0 and tt.int_offset == 0
            if lt.kind != KIND_ARRAY:
                return False
            assert lt.array is not None and tt.array is not None
            local_id, targ_id = lt.array.elem_type, tt.array.elem_type
        raise ValueError(f"array nesting deeper than {SPEC_MAX_LEN} (loop?)")

    def _types_compat(self, relo: CoreRelo, local_id: int, targ_id: int, level: int) -> bool:
        """libbpf's __bpf_core_types_are_compat (TYPE_* kinds except MATCHES)."""
        local, target = self.local, self.target
        if not _kind_compat(local.type(local_id), target.type(targ_id)):
            return False
        for _ in range(_MAX_DEPTH):
            self._tick(relo)
            local_id = local.skip_mods_and_typedefs(local_id)
            targ_id = target.skip_mods_and_typedefs(targ_id)
            lt, tt = local.type(local_id), target.type(targ_id)
            if not _kind_compat(lt, tt):
                return False
            if lt.kind in (KIND_UNKN, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD,
                           KIND_ENUM64):
                return True
            if lt.kind == KIND_INT:
                return lt.int_offset == 0 and tt.int_offset == 0
            if lt.kind == KIND_PTR:
                local_id, targ_id = lt.type, tt.type
            elif lt.kind == KIND_ARRAY:
                assert lt.array is not None and tt.array is not None
                local_id, targ_id = lt.array.elem_type, tt.array.elem_type
            elif lt.kind == KIND_FUNC_PROTO:
                if len(lt.params) != len(tt.params):
                    return False
                for lp, tp in zip(lt.params, tt.params):
                    if level <= 0:
                        raise ValueError("function prototypes nested too deeply")
                    if not self._types_compat(relo, local.skip_mods_and_typedefs(lp.type),
                                              target.skip_mods_and_typedefs(tp.type),
                                              level - 1):
                        return False
                local_id, targ_id = lt.type, tt.type
            else:
                return False
        raise ValueError(f"type chain deeper than {_MAX_DEPTH} (loop?)")

    def _types_match(self, relo: CoreRelo, local_id: int, targ_id: int, behind_ptr: bool,
                     level: int) -> bool:
        """libbpf's __bpf_core_types_match (TYPE_MATCHES)."""
        if level <= 0:
            raise ValueError("types nested too deeply")
        local, target = self.local, self.target
        for _ in range(_MAX_DEPTH):
            self._tick(relo)
            lt = local.type(local.skip_mods_and_typedefs(local_id))
            tt = target.type(target.skip_mods_and_typedefs(targ_id))
            if essential_name(lt.name) != essential_name(tt.name):
                return False
            if lt.kind == KIND_UNKN:
                return tt.kind == KIND_UNKN
            if lt.kind == KIND_FWD:
                if tt.kind == KIND_FWD:
                    return lt.kflag == tt.kflag
                return behind_ptr and (tt.kind == KIND_STRUCT and not lt.kflag
                                       or tt.kind == KIND_UNION and lt.kflag)
            if lt.kind in ENUM_KINDS:
                return tt.kind in ENUM_KINDS and _enums_match(lt, tt)
            if lt.kind in COMPOSITE_KINDS:
                if behind_ptr:
                    if lt.kind == tt.kind:
                        return True
                    return tt.kind == KIND_FWD and (lt.kind == KIND_UNION) == tt.kflag
                return lt.kind == tt.kind and self._composites_match(relo, lt, tt, level)
            if lt.kind == KIND_INT:
                return (tt.kind == KIND_INT and lt.size == tt.size
                        and lt.int_encoding & INT_SIGNED == tt.int_encoding & INT_SIGNED)
            if lt.kind != tt.kind:
                return False
            if lt.kind == KIND_PTR:
                behind_ptr = True
                local_id, targ_id = lt.type, tt.type
            elif lt.kind == KIND_ARRAY:
                assert lt.array is not None and tt.array is not None
                if lt.array.nelems != tt.array.nelems:
                    return False
                local_id, targ_id = lt.array.elem_type, tt.array.elem_type
            elif lt.kind == KIND_FUNC_PROTO:
                if len(lt.params) != len(tt.params):
                    return False
                for lp, tp in zip(lt.params, tt.params):
                    if not self._types_match(relo, lp.type, tp.type, behind_ptr, level - 1):
                        return False
                local_id, targ_id = lt.type, tt.type
            else:
                return False
        raise ValueError(f"type chain deeper than {_MAX_DEPTH} (loop?)")

    def _composites_match(self, relo: CoreRelo, lt: BtfType, tt: BtfType, level: int) -> bool:
        if len(lt.members) > len(tt.members):
            return False
        for lm in lt.members:
            want = essential_name(lm.name)
            if not any(essential_name(tm.name) == want
                       and self._types_match(relo, lm.type, tm.type, False, level - 1)
                       for tm in tt.members):
                return False
        return True

    # ------------------------------------------------------------- values

    def _calc(self, relo: CoreRelo, local: Spec, target: Spec | None) -> _Res:
        """libbpf's bpf_core_calc_relo for one candidate (None: no target)."""
        res = _Res()
        try:
            if relo.kind in FIELD_KINDS:
                self._calc_fields(relo, local, target, res)
            elif relo.kind in TYPE_KINDS:
                res.orig_val = _type_value(relo.kind, local)
                res.validate = relo.kind != TYPE_ID_TARGET  # ids change when linking
                res.new_val = _type_value(relo.kind, target)
            else:
                res.orig_val = _enumval_value(relo.kind, local)
                res.new_val = _enumval_value(relo.kind, target)
        except _Poison:
            res.poison = True
        except (ValueError, FormatError) as err:
            raise _err(relo, str(err)) from None
        return res

    def _calc_fields(self, relo: CoreRelo, local: Spec, target: Spec | None, res: _Res) -> None:
        (res.orig_val, res.orig_sz, res.orig_type_id,
         res.validate) = _field_value(relo.kind, local)
        res.new_val, res.new_sz, res.new_type_id, _ = _field_value(relo.kind, target)
        if res.orig_sz == res.new_sz:
            return
        assert target is not None
        orig_t = local.btf.type(res.orig_type_id)
        new_t = target.btf.type(res.new_type_id)
        if orig_t.kind == KIND_PTR and new_t.kind == KIND_PTR:
            return
        if (orig_t.kind == KIND_INT and new_t.kind == KIND_INT
                and orig_t.int_encoding != INT_SIGNED and new_t.int_encoding != INT_SIGNED):
            return
        res.fail_memsz_adjust = True


def _outcome(res: _Res) -> str:
    return "poison" if res.poison else str(res.new_val)


def _kind_compat(a: BtfType, b: BtfType) -> bool:
    return a.kind == b.kind or (a.kind in ENUM_KINDS and b.kind in ENUM_KINDS)


def _is_flex(btf: Btf, acc: Accessor, arr: BtfType) -> bool:
    """A zero-length array that is the last member of its struct."""
    assert arr.array is not None
    if acc.name is None or arr.array.nelems > 0:
        return False
    return acc.idx == len(btf.type(acc.type_id).members) - 1


def _enums_match(lt: BtfType, tt: BtfType) -> bool:
    if lt.size != tt.size or len(lt.enum_values) > len(tt.enum_values):
        return False
    names = {essential_name(v.name) for v in tt.enum_values}
    return all(essential_name(v.name) in names for v in lt.enum_values)


def _enum_raw(enum: BtfType, idx: int) -> int:
    """An enumerator as libbpf reads it: s32 sign-extended, or u64."""
    value = enum.enum_values[idx].value
    if enum.kind == KIND_ENUM:
        value &= _U32
        if value >= 1 << 31:
            value -= 1 << 32
    return value & _U64


def _type_value(kind: int, spec: Spec | None) -> int:
    if spec is None:
        return 0
    if kind == TYPE_ID_TARGET:
        return spec.root_type_id
    if kind in (TYPE_EXISTS, TYPE_MATCHES):
        return 1
    return spec.btf.resolve_size(spec.root_type_id)  # TYPE_SIZE


def _enumval_value(kind: int, spec: Spec | None) -> int:
    if kind == ENUMVAL_EXISTS:
        return int(spec is not None)
    if spec is None:
        raise _Poison
    acc = spec.accessors[0]
    return _enum_raw(spec.btf.type(acc.type_id), acc.idx)


def _elem_size(btf: Btf, type_id: int) -> int:
    """Size of the innermost element for arrays, else of the type itself."""
    t = btf.type(btf.skip_mods_and_typedefs(type_id))
    for _ in range(SPEC_MAX_LEN):
        if t.kind != KIND_ARRAY:
            return btf.resolve_size(t.id)
        assert t.array is not None
        t = btf.type(btf.skip_mods_and_typedefs(t.array.elem_type))
    raise ValueError(f"array nesting deeper than {SPEC_MAX_LEN} (loop?)")


def _field_value(kind: int, spec: Spec | None) -> tuple[int, int, int, bool]:
    """libbpf's bpf_core_calc_field_relo: (value, field size, field type id,
    validate)."""
    if kind == FIELD_EXISTS:
        return int(spec is not None), 0, 0, True
    if spec is None:
        raise _Poison
    btf = spec.btf
    acc = spec.accessors[-1]
    if acc.name is None:  # array element access
        if kind == FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, _elem_size(btf, acc.type_id), acc.type_id, True
        if kind == FIELD_BYTE_SIZE:
            return btf.resolve_size(acc.type_id), 0, 0, True
        raise ValueError(f"{KIND_NAMES_CORE[kind]} cannot apply to an array element")
    member = btf.type(acc.type_id).members[acc.idx]
    field_type_id = btf.skip_mods_and_typedefs(member.type)
    mt = btf.type(field_type_id)
    bit_off = spec.bit_offset
    bit_sz = member.bitfield_size
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = mt.size
        if byte_sz == 0:
            raise ValueError(f"bitfield {member.name!r} has zero-sized type {mt.describe()}")
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise ValueError(f"bitfield {member.name!r} cannot be read with one "
                                 "64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = btf.resolve_size(field_type_id)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    validate = not bitfield
    if kind == FIELD_BYTE_OFFSET:
        if bitfield:
            return byte_off, 0, 0, validate
        return byte_off, _elem_size(btf, field_type_id), field_type_id, validate
    if kind == FIELD_BYTE_SIZE:
        return byte_sz, 0, 0, validate
    if kind == FIELD_SIGNED:
        signed = ((mt.kind in ENUM_KINDS and mt.kflag)
                  or (mt.kind == KIND_INT and bool(mt.int_encoding & INT_SIGNED)))
        return int(signed), 0, 0, True
    if kind == FIELD_LSHIFT_U64:
        return (64 - (bit_off + bit_sz - byte_off * 8)) & _U32, 0, 0, validate
    return (64 - bit_sz) & _U32, 0, 0, True  # FIELD_RSHIFT_U64


def resolve(relo: CoreRelo, local: Btf, target: Btf) -> CoreResult:
    """Resolve one relocation (use a CoreResolver for many: it caches)."""
    return CoreResolver(local, target).resolve(relo)


# ------------------------------------------------------------------ patching


def insn_class_label(insns: bytes | bytearray, insn_idx: int) -> str:
    """How libbpf names the instruction in its log: "ALU/ALU64", "LDX/ST/STX",
    "LDIMM64" or "other"."""
    code = insns[insn_idx * INSN_SIZE] if 0 <= insn_idx * INSN_SIZE < len(insns) else -1
    cls = code & 0x07
    if cls in (asm.CLASS_ALU, asm.CLASS_ALU64):
        return "ALU/ALU64"
    if cls in (asm.CLASS_LDX, asm.CLASS_ST, asm.CLASS_STX):
        return "LDX/ST/STX"
    if code == asm.LD_IMM64:
        return "LDIMM64"
    return "other"


def _poison(insns: bytearray, idx: int) -> None:
    asm.store(insns, idx, asm.Insn(asm.CALL, 0, 0, 0, POISON_IMM))


def patch_insn(insns: bytearray, insn_idx: int, result: CoreResult) -> tuple[int, int | None]:
    """Apply `result` to instruction `insn_idx` in place, like libbpf's
    bpf_core_patch_insn. Returns (old value read from the insn, new value),
    new None when the instruction was poisoned (turned into
    `call 0xbad2310`, both halves of an ldimm64). Values are u64 as libbpf
    prints them (a negative imm/off reads as 2**64 - n)."""
    where = f"insn #{insn_idx}"
    if insn_idx < 0 or insn_idx >= asm.count(insns):
        raise CoreRelocationError(f"{where} out of range ({asm.count(insns)} instructions)")
    ins = asm.decode(insns, insn_idx)
    code, off, imm, cls = ins.code, ins.off, ins.imm, ins.cls
    if result.poisoned:
        old = _current_value(insns, insn_idx)
        if code == asm.LD_IMM64:
            _check_ldimm64_room(insns, insn_idx)
            _poison(insns, insn_idx + 1)
        _poison(insns, insn_idx)
        return old, None
    assert result.new_value is not None
    new = result.new_value
    if cls in (asm.CLASS_ALU, asm.CLASS_ALU64):
        return _patch_alu(insns, insn_idx, result, code, imm, new)
    if cls in (asm.CLASS_LDX, asm.CLASS_ST, asm.CLASS_STX):
        return _patch_mem(insns, insn_idx, result, code, off, new)
    if code == asm.LD_IMM64:
        return _patch_ldimm64(insns, insn_idx, result, ins, new)
    raise CoreRelocationError(f"{where}: cannot relocate instruction code 0x{code:02x} "
                              f"(regs 0x{ins.src << 4 | ins.dst:02x} off {off} imm {imm})")


def _current_value(insns: bytearray, idx: int) -> int:
    ins = asm.decode(insns, idx)
    if ins.cls in (asm.CLASS_LDX, asm.CLASS_ST, asm.CLASS_STX):
        return ins.off & _U64
    if ins.code == asm.LD_IMM64 and idx + 2 <= asm.count(insns):
        return asm.ldimm64_value(insns, idx)
    return ins.imm & _U64


def _check_value(insn_idx: int, result: CoreResult, got: int) -> None:
    if result.validate and got != result.local_value:
        raise CoreRelocationError(
            f"insn #{insn_idx}: expected {result.local_value} got {got} "
            f"({result.kind_name} {result.spec}; the object does not match its BTF)")


def _patch_alu(insns: bytearray, idx: int, result: CoreResult, code: int, imm: int,
               new: int) -> tuple[int, int]:
    if code & asm.SOURCE_X:  # register source, nothing to patch
        raise CoreRelocationError(f"insn #{idx}: ALU instruction with a register source")
    old = imm & _U64
    _check_value(idx, result, old)
    ins = asm.decode(insns, idx)
    asm.store(insns, idx, ins._replace(imm=asm.s32(new & _U32)))
    return old, new


def _patch_mem(insns: bytearray, idx: int, result: CoreResult, code: int, off: int,
               new: int) -> tuple[int, int | None]:
    old = off & _U64
    _check_value(idx, result, old)
    if new > 0x7FFF:
        raise CoreRelocationError(f"insn #{idx}: offset {new} does not fit the 16-bit "
                                  "offset field")
    if result.fail_memsz_adjust:
        _poison(insns, idx)
        return old, None
    asm.store(insns, idx, asm.decode(insns, idx)._replace(off=new))
    if result.new_size != result.orig_size:
        size = asm.SIZE_BYTES[code & 0x18]
        if size != result.orig_size:
            raise CoreRelocationError(f"insn #{idx}: accesses {size} bytes, the field "
                                      f"has {result.orig_size}")
        if result.new_size not in _BYTES_SIZE:
            raise CoreRelocationError(f"insn #{idx}: no load/store of "
                                      f"{result.new_size} bytes")
        ins = asm.decode(insns, idx)
        asm.store(insns, idx, ins._replace(code=(code & 0xE0) | _BYTES_SIZE[result.new_size] | (code & 0x07)))
    return old, new


def _check_ldimm64_room(insns: bytearray, idx: int) -> None:
    if idx + 2 > asm.count(insns):
        raise CoreRelocationError(f"insn #{idx}: ldimm64 lacks its second half")


def _patch_ldimm64(insns: bytearray, idx: int, result: CoreResult, ins: asm.Insn,
                   new: int) -> tuple[int, int]:
    _check_ldimm64_room(insns, idx)
    second = asm.decode(insns, idx + 1)
    if ins.src or ins.off or second.code or second.dst or second.src or second.off:
        raise CoreRelocationError(f"insn #{idx}: ldimm64 has an unexpected form")
    old = _current_value(insns, idx)
    _check_value(idx, result, old)
    asm.set_ldimm64_value(insns, idx, new & _U64)
    return old, new
