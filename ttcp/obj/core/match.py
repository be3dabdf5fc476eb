"""Does a target type match the local spec? (libbpf's bpf_core_spec_match)

A candidate matches when every accessor of the local spec finds its
counterpart: members by (essential) name, searched through anonymous
members, with compatible types; array indices within bounds. Type-based
relocations compare whole types instead (bpf_core_types_are_compat,
bpf_core_types_match). Hostile BTF cannot make this loop or take
exponential time: chains are bounded and each relocation has a budget of
member visits.
"""

from __future__ import annotations

from ttcp.errors import FormatError
from ttcp.obj.btf import (
    INT_SIGNED,
    Array,
    Btf,
    BtfType,
    Composite,
    Enum,
    Float,
    FuncProto,
    Fwd,
    Int,
    Ptr,
    Struct,
    Union,
    Void,
    essential_name,
)
from ttcp.obj.btf_ext import CoreRelo
from ttcp.obj.core.relo import ENUMVAL_KINDS, TYPE_KINDS, TYPE_MATCHES, SpecError, relo_error
from ttcp.obj.core.spec import SPEC_MAX_LEN, U32, Accessor, Spec, is_flex, member_of

_MAX_DEPTH = 32  # libbpf's recursion depth for type compat/match
_MAX_WORK = 50_000  # member visits per relocation before giving up (hostile BTF)


class Matcher:
    """Matches candidates for one relocation of `local` against `target`,
    counting the work done for it."""

    def __init__(self, local: Btf, target: Btf, relo: CoreRelo) -> None:
        self.local = local
        self.target = target
        self.relo = relo
        self._work = 0

    def _tick(self) -> None:
        self._work += 1
        if self._work > _MAX_WORK:
            raise relo_error(self.relo, f"gave up after {_MAX_WORK} type comparisons "
                                        "(hostile BTF?)")

    def spec_match(self, local: Spec, targ_id: int) -> tuple[bool, Spec]:
        """libbpf's bpf_core_spec_match: (matched, target spec so far)."""
        target = self.target
        spec = Spec(target, targ_id, local.kind)
        try:
            if local.kind in TYPE_KINDS:
                if local.kind == TYPE_MATCHES:
                    ok = self._types_match(local.root_type_id, targ_id, False, _MAX_DEPTH)
                else:
                    ok = self._types_compat(local.root_type_id, targ_id, _MAX_DEPTH)
                return ok, spec
            if local.kind in ENUMVAL_KINDS:
                return self._match_enumval(local, spec, targ_id), spec
            return self._match_fields(local, spec, targ_id), spec
        except (SpecError, FormatError) as err:
            raise relo_error(self.relo, f"matching candidate "
                                        f"{target.type(targ_id).describe()}: {err}") from None

    def _match_enumval(self, local: Spec, spec: Spec, targ_id: int) -> bool:
        enum_id = self.target.skip_mods_and_typedefs(targ_id)
        enum = self.target.type(enum_id)
        if not isinstance(enum, Enum):
            return False
        want = essential_name(local.accessors[0].name or "")
        for i, value in enumerate(enum.values):
            if essential_name(value.name) == want:
                spec.accessors.append(Accessor(enum_id, i, value.name))
                spec.raw.append(i)
                return True
        return False

    def _match_fields(self, local: Spec, spec: Spec, targ_id: int) -> bool:
        target = self.target
        for i, acc in enumerate(local.accessors):
            targ_id = target.skip_mods_and_typedefs(targ_id)
            if acc.name is not None:
                found = self._match_member(acc, targ_id, spec)
                if found is None:
                    return False
                targ_id = found
                continue
            if i > 0:
                t = target.type(targ_id)
                if not isinstance(t, Array):
                    return False
                if not is_flex(target, spec.accessors[-1], t) and acc.idx >= t.nelems:
                    return False
                targ_id = target.skip_mods_and_typedefs(t.elem_type)
            if len(spec.raw) == SPEC_MAX_LEN:
                raise SpecError(f"access path deeper than {SPEC_MAX_LEN}")
            spec.accessors.append(Accessor(targ_id, acc.idx, None))
            spec.raw.append(acc.idx)
            size = target.resolve_size(targ_id)
            spec.bit_offset = (spec.bit_offset + acc.idx * size * 8) & U32
        return True

    def _match_member(self, acc: Accessor, targ_id: int, spec: Spec) -> int | None:
        """Find local member `acc` by name in target composite `targ_id`,
        descending into anonymous members; returns the member's type id."""
        target = self.target
        targ_id = target.skip_mods_and_typedefs(targ_id)
        t = target.type(targ_id)
        if not isinstance(t, Composite):
            return None
        local_member = member_of(self.local, acc)
        for i, member in enumerate(t.members):
            self._tick()
            if len(spec.raw) == SPEC_MAX_LEN:
                raise SpecError(f"access path deeper than {SPEC_MAX_LEN}")
            saved_offset = spec.bit_offset
            spec.bit_offset = (spec.bit_offset + member.bit_offset) & U32
            spec.raw.append(i)
            if not member.name:
                found = self._match_member(acc, member.type, spec)
                if found is not None:
                    return found
            elif member.name == local_member.name:
                if self._fields_compat(local_member.type, member.type):
                    spec.accessors.append(Accessor(targ_id, i, member.name))
                    return member.type
                spec.bit_offset = saved_offset  # first same-named member decides
                spec.raw.pop()
                return None
            spec.bit_offset = saved_offset
            spec.raw.pop()
        return None

    # ------------------------------------------------------ compatibility

    def _fields_compat(self, local_id: int, targ_id: int) -> bool:
        """libbpf's bpf_core_fields_are_compat."""
        for _ in range(SPEC_MAX_LEN):
            self._tick()
            lt = self.local.type(self.local.skip_mods_and_typedefs(local_id))
            tt = self.target.type(self.target.skip_mods_and_typedefs(targ_id))
            if isinstance(lt, Composite) and isinstance(tt, Composite):
                return True
            if not _kind_compat(lt, tt):
                return False
            if isinstance(lt, (Ptr, Float)):
                return True
            if isinstance(lt, (Fwd, Enum)):
                return (not lt.name or not tt.name
                        or essential_name(lt.name) == essential_name(tt.name))
            if isinstance(lt, Int) and isinstance(tt, Int):
                return lt.offset == 0 and tt.offset == 0
            if not (isinstance(lt, Array) and isinstance(tt, Array)):
                return False
            local_id, targ_id = lt.elem_type, tt.elem_type
        raise SpecError(f"array nesting deeper than {SPEC_MAX_LEN} (loop?)")

    def _types_compat(self, local_id: int, targ_id: int, level: int) -> bool:
        """libbpf's __bpf_core_types_are_compat (TYPE_* kinds except MATCHES)."""
        local, target = self.local, self.target
        if not _kind_compat(local.type(local_id), target.type(targ_id)):
            return False
        for _ in range(_MAX_DEPTH):
            self._tick()
            local_id = local.skip_mods_and_typedefs(local_id)
            targ_id = target.skip_mods_and_typedefs(targ_id)
            lt, tt = local.type(local_id), target.type(targ_id)
            if not _kind_compat(lt, tt):
                return False
            if isinstance(lt, (Void, Composite, Enum, Fwd)):
                return True
            if isinstance(lt, Int) and isinstance(tt, Int):
                return lt.offset == 0 and tt.offset == 0
            if isinstance(lt, Ptr) and isinstance(tt, Ptr):
                local_id, targ_id = lt.type, tt.type
            elif isinstance(lt, Array) and isinstance(tt, Array):
                local_id, targ_id = lt.elem_type, tt.elem_type
            elif isinstance(lt, FuncProto) and isinstance(tt, FuncProto):
                if len(lt.params) != len(tt.params):
                    return False
                for lp, tp in zip(lt.params, tt.params):
                    if level <= 0:
                        raise SpecError("function prototypes nested too deeply")
                    if not self._types_compat(local.skip_mods_and_typedefs(lp.type),
                                              target.skip_mods_and_typedefs(tp.type),
                                              level - 1):
                        return False
                local_id, targ_id = lt.type, tt.type
            else:
                return False
        raise SpecError(f"type chain deeper than {_MAX_DEPTH} (loop?)")

    def _types_match(self, local_id: int, targ_id: int, behind_ptr: bool, level: int) -> bool:
        """libbpf's __bpf_core_types_match (TYPE_MATCHES)."""
        if level <= 0:
            raise SpecError("types nested too deeply")
        local, target = self.local, self.target
        for _ in range(_MAX_DEPTH):
            self._tick()
            lt = local.type(local.skip_mods_and_typedefs(local_id))
            tt = target.type(target.skip_mods_and_typedefs(targ_id))
            if essential_name(lt.name) != essential_name(tt.name):
                return False
            if isinstance(lt, Void):
                return isinstance(tt, Void)
            if isinstance(lt, Fwd):
                if isinstance(tt, Fwd):
                    return lt.kflag == tt.kflag
                return behind_ptr and (isinstance(tt, Struct) and not lt.kflag
                                       or isinstance(tt, Union) and lt.kflag)
            if isinstance(lt, Enum):
                return isinstance(tt, Enum) and _enums_match(lt, tt)
            if isinstance(lt, Composite):
                if behind_ptr:
                    if lt.kind == tt.kind:
                        return True
                    return isinstance(tt, Fwd) and isinstance(lt, Union) == tt.kflag
                return (isinstance(tt, Composite) and lt.kind == tt.kind
                        and self._composites_match(lt, tt, level))
            if isinstance(lt, Int):
                return (isinstance(tt, Int) and lt.size == tt.size
                        and lt.encoding & INT_SIGNED == tt.encoding & INT_SIGNED)
            if lt.kind != tt.kind:
                return False
            if isinstance(lt, Ptr) and isinstance(tt, Ptr):
                behind_ptr = True
                local_id, targ_id = lt.type, tt.type
            elif isinstance(lt, Array) and isinstance(tt, Array):
                if lt.nelems != tt.nelems:
                    return False
                local_id, targ_id = lt.elem_type, tt.elem_type
            elif isinstance(lt, FuncProto) and isinstance(tt, FuncProto):
                if len(lt.params) != len(tt.params):
                    return False
                for lp, tp in zip(lt.params, tt.params):
                    if not self._types_match(lp.type, tp.type, behind_ptr, level - 1):
                        return False
                local_id, targ_id = lt.type, tt.type
            else:
                return False
        raise SpecError(f"type chain deeper than {_MAX_DEPTH} (loop?)")

    def _composites_match(self, lt: Composite, tt: Composite, level: int) -> bool:
        if len(lt.members) > len(tt.members):
            return False
        for lm in lt.members:
            want = essential_name(lm.name)
            if not any(essential_name(tm.name) == want
                       and self._types_match(lm.type, tm.type, False, level - 1)
                       for tm in tt.members):
                return False
        return True


def _kind_compat(a: BtfType, b: BtfType) -> bool:
    return a.kind == b.kind or (isinstance(a, Enum) and isinstance(b, Enum))


def _enums_match(lt: Enum, tt: Enum) -> bool:
    if lt.size != tt.size or len(lt.values) > len(tt.values):
        return False
    names = {essential_name(v.name) for v in tt.values}
    return all(essential_name(v.name) in names for v in lt.values)

