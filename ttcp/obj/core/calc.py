"""The value a CO-RE relocation patches in (libbpf's bpf_core_calc_relo_insn).

Pure calculation on the candidates it is given: each is matched against the
local spec, the matching ones must agree, and the chosen one's field
offset, size, signedness, type id or enumerator value becomes the new
value. Finding candidates is the resolver's job (cands.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from ttcp.errors import FormatError
from ttcp.obj.btf import INT_SIGNED, Array, Btf, Enum, Enum64, Int, Ptr, Sized
from ttcp.obj.btf_ext import CoreRelo
from ttcp.obj.core.match import Matcher
from ttcp.obj.core.relo import (
    ENUMVAL_EXISTS,
    FIELD_BYTE_OFFSET,
    FIELD_BYTE_SIZE,
    FIELD_EXISTS,
    FIELD_KINDS,
    FIELD_LSHIFT_U64,
    FIELD_SIGNED,
    KIND_NAMES_CORE,
    TYPE_EXISTS,
    TYPE_ID_LOCAL,
    TYPE_ID_TARGET,
    TYPE_KINDS,
    TYPE_MATCHES,
    Candidate,
    CoreResult,
    Poison,
    SpecError,
    relo_error,
)
from ttcp.obj.core.spec import SPEC_MAX_LEN, Spec, member_of

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


class _Res:
    """libbpf's bpf_core_relo_res for one candidate, filled in step by step
    (a plain class: a dataclass costs ~2 ms of start-up to create)."""

    __slots__ = ("fail_memsz_adjust", "new_sz", "new_type_id", "new_val", "orig_sz",
                 "orig_type_id", "orig_val", "poison", "validate")

    def __init__(self) -> None:
        self.orig_val = self.new_val = 0
        self.orig_sz = self.new_sz = 0
        self.orig_type_id = self.new_type_id = 0
        self.poison = False
        self.validate = True
        self.fail_memsz_adjust = False


def calc_relo_insn(relo: CoreRelo, local_spec: Spec, target: Btf,
                   cands: Sequence[int]) -> tuple[CoreResult, list[int]]:
    """libbpf's bpf_core_calc_relo_insn: the decision for `relo` given its
    parsed local spec and the candidate target type ids.

    Every matching candidate must give the same field offset and value, else
    the relocation is ambiguous (CoreRelocationError); none matching means
    the instruction is poisoned (existence kinds resolve to 0 instead).
    Returns the decision and the candidates that matched, which the caller
    may keep as the only candidates of this local type from now on.
    """
    if relo.kind == TYPE_ID_LOCAL:  # needs no target
        return CoreResult(
            relo=relo, kind=relo.kind, kind_name=KIND_NAMES_CORE[relo.kind],
            spec=local_spec.path(), local_spec=local_spec.format(), target_spec=None,
            local_value=relo.type_id, new_value=relo.type_id, poisoned=False,
            validate=False), []
    matcher = Matcher(local_spec.btf, target, relo)
    tried: list[Candidate] = []
    matched: list[int] = []
    best: tuple[_Res, Spec] | None = None
    for cand_id in cands:
        ok, cand_spec = matcher.spec_match(local_spec, cand_id)
        tried.append(Candidate(cand_id, ok, cand_spec.format()))
        if not ok:
            continue
        res = _calc(relo, local_spec, cand_spec)
        if best is None:
            best = (res, cand_spec)
        elif cand_spec.bit_offset != best[1].bit_offset:
            raise relo_error(relo, f"field offset ambiguity for {local_spec.path()}: "
                                   f"candidate [{cand_id}] at bit {cand_spec.bit_offset}, "
                                   f"[{best[1].root_type_id}] at bit {best[1].bit_offset}")
        elif res.poison != best[0].poison or res.new_val != best[0].new_val:
            raise relo_error(relo, f"relocation decision ambiguity for {local_spec.path()}: "
                                   f"candidate [{cand_id}] gives {_outcome(res)}, "
                                   f"[{best[1].root_type_id}] gives {_outcome(best[0])}")
        matched.append(cand_id)
    chosen: Spec | None
    if best is None:
        res, chosen = _calc(relo, local_spec, None), None
    else:
        res, chosen = best
    return CoreResult(
        relo=relo, kind=relo.kind, kind_name=KIND_NAMES_CORE[relo.kind],
        spec=local_spec.path(), local_spec=local_spec.format(),
        target_spec=chosen.format() if chosen is not None else None,
        local_value=res.orig_val, new_value=None if res.poison else res.new_val,
        poisoned=res.poison, validate=res.validate, orig_size=res.orig_sz,
        new_size=res.new_sz, fail_memsz_adjust=res.fail_memsz_adjust,
        target_type_id=chosen.root_type_id if chosen is not None else None,
        candidates=tuple(tried)), matched


def _calc(relo: CoreRelo, local: Spec, target: Spec | None) -> _Res:
    """libbpf's bpf_core_calc_relo for one candidate (None: no target)."""
    res = _Res()
    try:
        if relo.kind in FIELD_KINDS:
            _calc_fields(relo, local, target, res)
        elif relo.kind in TYPE_KINDS:
            res.orig_val = _type_value(relo.kind, local)
            res.validate = relo.kind != TYPE_ID_TARGET  # ids change when linking
            res.new_val = _type_value(relo.kind, target)
        else:
            res.orig_val = _enumval_value(relo.kind, local)
            res.new_val = _enumval_value(relo.kind, target)
    except Poison:
        res.poison = True
    except (SpecError, FormatError) as err:
        raise relo_error(relo, str(err)) from None
    return res


def _calc_fields(relo: CoreRelo, local: Spec, target: Spec | None, res: _Res) -> None:
    (res.orig_val, res.orig_sz, res.orig_type_id,
     res.validate) = _field_value(relo.kind, local)
    res.new_val, res.new_sz, res.new_type_id, _ = _field_value(relo.kind, target)
    if res.orig_sz == res.new_sz or target is None:  # no target: sizes are both 0
        return
    orig_t = local.btf.type(res.orig_type_id)
    new_t = target.btf.type(res.new_type_id)
    if isinstance(orig_t, Ptr) and isinstance(new_t, Ptr):
        return
    if (isinstance(orig_t, Int) and isinstance(new_t, Int)
            and orig_t.encoding != INT_SIGNED and new_t.encoding != INT_SIGNED):
        return
    res.fail_memsz_adjust = True


def _outcome(res: _Res) -> str:
    return "poison" if res.poison else str(res.new_val)


def _enum_raw(enum: Enum, idx: int) -> int:
    """An enumerator as libbpf reads it: s32 sign-extended, or u64."""
    value = enum.values[idx].value
    if not isinstance(enum, Enum64):
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
        raise Poison
    acc = spec.accessors[0]
    return _enum_raw(spec.btf.typed(acc.type_id, Enum), acc.idx)


def _elem_size(btf: Btf, type_id: int) -> int:
    """Size of the innermost element for arrays, else of the type itself."""
    t = btf.type(btf.skip_mods_and_typedefs(type_id))
    for _ in range(SPEC_MAX_LEN):
        if not isinstance(t, Array):
            return btf.resolve_size(t.id)
        t = btf.type(btf.skip_mods_and_typedefs(t.elem_type))
    raise SpecError(f"array nesting deeper than {SPEC_MAX_LEN} (loop?)")


def _field_value(kind: int, spec: Spec | None) -> tuple[int, int, int, bool]:
    """libbpf's bpf_core_calc_field_relo: (value, field size, field type id,
    validate)."""
    if kind == FIELD_EXISTS:
        return int(spec is not None), 0, 0, True
    if spec is None:
        raise Poison
    btf = spec.btf
    acc = spec.accessors[-1]
    if acc.name is None:  # array element access
        if kind == FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, _elem_size(btf, acc.type_id), acc.type_id, True
        if kind == FIELD_BYTE_SIZE:
            return btf.resolve_size(acc.type_id), 0, 0, True
        raise SpecError(f"{KIND_NAMES_CORE[kind]} cannot apply to an array element")
    member = member_of(btf, acc)
    field_type_id = btf.skip_mods_and_typedefs(member.type)
    mt = btf.type(field_type_id)
    bit_off = spec.bit_offset
    bit_sz = member.bitfield_size
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = mt.size if isinstance(mt, Sized) else 0
        if byte_sz == 0:
            raise SpecError(f"bitfield {member.name!r} has zero-sized type {mt.describe()}")
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise SpecError(f"bitfield {member.name!r} cannot be read with one "
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
        signed = ((isinstance(mt, Enum) and mt.kflag)
                  or (isinstance(mt, Int) and bool(mt.encoding & INT_SIGNED)))
        return int(signed), 0, 0, True
    if kind == FIELD_LSHIFT_U64:
        return (64 - (bit_off + bit_sz - byte_off * 8)) & _U32, 0, 0, validate
    return (64 - bit_sz) & _U32, 0, 0, True  # FIELD_RSHIFT_U64

