"""Candidate target types for CO-RE relocations (libbpf's bpf_core_find_cands).

A candidate is a target type of a compatible kind (any enum for an enum)
whose essential name, the flavor "___suffix" dropped, equals the local
type's. libbpf keeps one list per local type for the whole object and
narrows it to the candidates that matched a relocation, so later
relocations of the same type see the pruned list; Candidates does the same.
"""

from __future__ import annotations

from ttcp.obj.btf import ENUM_KINDS, Btf, BtfType
from ttcp.obj.core.relo import SpecError


def find_cands(local_type: BtfType, target: Btf) -> list[int]:
    """Ids of the target types that may be `local_type` under another flavor."""
    if not local_type.name:
        raise SpecError(f"{local_type.describe()}: relocations against anonymous "
                        "types are not supported")
    kinds = ENUM_KINDS if local_type.kind in ENUM_KINDS else {local_type.kind}
    return [i for i in target.ids_by_essential_name(local_type.name, kinds) if i > 0]


class Candidates:
    """The candidate list of each local type of one object against one target."""

    def __init__(self, local: Btf, target: Btf) -> None:
        self._local = local
        self._target = target
        self._by_type: dict[int, list[int]] = {}

    def of(self, type_id: int) -> list[int]:
        """Candidates for local type `type_id`: found once, then as pruned."""
        found = self._by_type.get(type_id)
        if found is None:
            found = find_cands(self._local.type(type_id), self._target)
            self._by_type[type_id] = found
        return found

    def prune(self, type_id: int, matched: list[int]) -> None:
        """Keep only `matched` from now on (no match at all changes nothing:
        existence checks are expected to find none)."""
        if matched:
            self._by_type[type_id] = matched
