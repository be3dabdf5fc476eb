"""Access specs: where in a type a CO-RE relocation points (libbpf's bpf_core_spec).

clang records each access as a root type id plus an access string of
indices ("0:1:2": element 0 of the root, its member 1, that member's member
2). parse_spec() turns it into accessors (named members and array indices)
and a bit offset in the local BTF; the matcher builds the same for a target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ttcp.obj.btf import Array, Btf, Composite, Enum, Member
from ttcp.obj.btf_ext import CoreRelo
from ttcp.obj.core.relo import ENUMVAL_KINDS, FIELD_KINDS, KIND_NAMES_CORE, TYPE_KINDS, SpecError

SPEC_MAX_LEN = 64  # BPF_CORE_SPEC_MAX_LEN
U32 = 0xFFFFFFFF  # bit offsets wrap as libbpf's __u32 does

_ACCESS_INT = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


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
            if not isinstance(enum, Enum) or idx >= len(enum.values):
                return text
            value = enum.values[idx]
            return text + f"::{value.name} = {value.value}"
        raw = ":".join(str(i) for i in self.raw)
        byte, bit = divmod(self.bit_offset, 8)
        where = f"{byte}.{bit}" if bit else f"{byte}"
        return f"{text}{self._accessor_text()} ({raw} @ offset {where})"


def parse_access_string(text: str) -> list[int]:
    """"0:1:2" → [0, 1, 2], accepting what libbpf's sscanf("%d") loop does."""
    if not text or text[0] == ":":
        raise SpecError(f"access string {text!r} is empty or starts with ':'")
    out: list[int] = []
    pos = 0
    while pos < len(text):
        if text[pos] == ":":
            pos += 1
        found = _ACCESS_INT.match(text, pos)
        if found is None:
            raise SpecError(f"access string {text!r}: no number at position {pos}")
        value = int(found.group())
        if not 0 <= value <= 0x7FFFFFFF:
            raise SpecError(f"access string {text!r}: index {value} out of range")
        if len(out) == SPEC_MAX_LEN:
            raise SpecError(f"access string {text!r}: more than {SPEC_MAX_LEN} indices")
        out.append(value)
        pos = found.end()
    return out


def parse_spec(btf: Btf, relo: CoreRelo) -> Spec:
    """libbpf's bpf_core_parse_spec: relo's access path in its own (local) BTF."""
    spec = Spec(btf, relo.type_id, relo.kind)
    if relo.kind in TYPE_KINDS:
        if relo.access_str != "0":
            raise SpecError(f"type relocation needs access string '0', "
                            f"got {relo.access_str!r}")
        return spec
    spec.raw = parse_access_string(relo.access_str)
    type_id = btf.skip_mods_and_typedefs(relo.type_id)
    t = btf.type(type_id)
    first = spec.raw[0]
    spec.accessors.append(Accessor(type_id, first, None))
    if relo.kind in ENUMVAL_KINDS:
        if not isinstance(t, Enum) or len(spec.raw) > 1 or first >= len(t.values):
            raise SpecError(f"enumerator index {spec.raw} invalid for {t.describe()}")
        spec.accessors[0].name = t.values[first].name
        return spec
    spec.bit_offset = (first * btf.resolve_size(type_id) * 8) & U32
    for i in range(1, len(spec.raw)):
        type_id = _parse_step(spec, type_id, spec.raw[i], i)
    return spec


def _parse_step(spec: Spec, type_id: int, idx: int, pos: int) -> int:
    btf = spec.btf
    type_id = btf.skip_mods_and_typedefs(type_id)
    t = btf.type(type_id)
    if isinstance(t, Composite):
        if idx >= len(t.members):
            raise SpecError(f"member index {idx} out of range for {t.describe()}")
        member = t.members[idx]
        spec.bit_offset = (spec.bit_offset + member.bit_offset) & U32
        if member.name:
            spec.accessors.append(Accessor(type_id, idx, member.name))
        return member.type
    if isinstance(t, Array):
        elem = btf.skip_mods_and_typedefs(t.elem_type)
        if not is_flex(btf, spec.accessors[-1], t) and idx >= t.nelems:
            raise SpecError(f"array index {idx} out of range for {t.describe()} "
                            f"of {t.nelems}")
        spec.accessors.append(Accessor(elem, idx, None))
        spec.bit_offset = (spec.bit_offset + idx * btf.resolve_size(elem) * 8) & U32
        return elem
    raise SpecError(f"index #{pos} lands in {t.describe()}, not a struct, union or array")


def is_flex(btf: Btf, acc: Accessor, arr: Array) -> bool:
    """A zero-length array that is the last member of its struct (`acc`)."""
    if acc.name is None or arr.nelems > 0:
        return False
    return acc.idx == len(btf.typed(acc.type_id, Composite).members) - 1


def member_of(btf: Btf, acc: Accessor) -> Member:
    """The member a named accessor stands for."""
    return btf.typed(acc.type_id, Composite).members[acc.idx]
