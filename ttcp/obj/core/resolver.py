"""CoreResolver: the relocations of one object against one target BTF.

The order is libbpf's bpf_core_resolve_relo: check the record, find (or
reuse) the candidates, parse the local spec, calculate the decision, prune
the candidates to those that matched.
"""

from __future__ import annotations

from ttcp.errors import FormatError
from ttcp.obj.btf import Btf
from ttcp.obj.btf_ext import CoreRelo
from ttcp.obj.core.calc import calc_relo_insn
from ttcp.obj.core.cands import Candidates
from ttcp.obj.core.relo import TYPE_ID_LOCAL, TYPE_MATCHES, CoreResult, SpecError, relo_error
from ttcp.obj.core.spec import parse_spec


class CoreResolver:
    """Resolves the relocations of one object (`local` BTF) against `target`;
    candidate lists are shared by all of them, as in libbpf."""

    def __init__(self, local: Btf, target: Btf) -> None:
        self.local = local
        self.target = target
        self._cands = Candidates(local, target)

    def resolve(self, relo: CoreRelo) -> CoreResult:
        """Decide what relo's instruction becomes; CoreRelocationError when
        the relocation is malformed or ambiguous."""
        if not 0 <= relo.kind <= TYPE_MATCHES:
            raise relo_error(relo, f"unknown relocation kind {relo.kind}")
        if not 0 <= relo.type_id < len(self.local):
            raise relo_error(relo, f"type id {relo.type_id} out of range "
                                   f"(local BTF has {len(self.local)} types)")
        local_type = self.local.type(relo.type_id)
        cands: list[int] = []
        if relo.kind != TYPE_ID_LOCAL:
            try:
                cands = self._cands.of(relo.type_id)
            except SpecError as err:
                raise relo_error(relo, str(err)) from None
        try:
            local_spec = parse_spec(self.local, relo)
        except (SpecError, FormatError) as err:
            raise relo_error(relo, f"parsing {local_type.describe()} + {relo.access_str!r} "
                                   f"failed: {err}") from None
        result, matched = calc_relo_insn(relo, local_spec, self.target, cands)
        self._cands.prune(relo.type_id, matched)
        return result


def resolve(relo: CoreRelo, local: Btf, target: Btf) -> CoreResult:
    """Resolve one relocation (use a CoreResolver for many: it caches)."""
    return CoreResolver(local, target).resolve(relo)
