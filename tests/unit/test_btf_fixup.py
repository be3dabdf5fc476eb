"""ttcp.obj.btf_fixup: object BTF filled in as the kernel wants it (libbpf's DATASEC fix-ups)."""

from __future__ import annotations

import pytest

from tests.support.btf_builder import BtfBuilder
from ttcp.errors import FormatError
from ttcp.obj import btf as B
from ttcp.obj.btf import Btf
from ttcp.obj.btf_fixup import fixed_for_kernel


def datasec_btf() -> tuple[bytes, dict[str, int]]:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    ids = {
        "a": b.add_var("a", i, B.LINKAGE_GLOBAL),
        "b": b.add_var("b", i, B.LINKAGE_GLOBAL),
        "s": b.add_var("s", i, B.LINKAGE_STATIC),
        "k": b.add_var("k", i, B.LINKAGE_EXTERN),
    }
    ids["data"] = b.add_datasec(".data", [(ids["a"], 0, 4), (ids["b"], 0, 4), (ids["s"], 0, 4)])
    ids["ksyms"] = b.add_datasec(".ksyms", [(ids["k"], 4, 4), (ids["a"], 0, 4)])
    return b.build(), ids


def test_fills_sizes_offsets_and_sorts() -> None:
    data, ids = datasec_btf()
    fixed = Btf.parse(fixed_for_kernel(Btf.parse(data), {".data": 12}, {"a": 8, "b": 4},
                                      hidden_symbols={"b"}))
    sec = fixed.type(ids["data"])
    assert sec.size == 12
    # b@4, a@8 filled from symbols; static s keeps its offset 0 and sorts first.
    assert sec.vars == (B.VarSecInfo(ids["s"], 0, 4), B.VarSecInfo(ids["b"], 4, 4),
                                B.VarSecInfo(ids["a"], 8, 4))
    assert fixed.type(ids["b"]).linkage == B.LINKAGE_STATIC
    assert fixed.type(ids["a"]).linkage == B.LINKAGE_GLOBAL
    ksyms = fixed.type(ids["ksyms"])  # not an ELF section: left alone but sorted
    assert (ksyms.size, ksyms.vars) == (0, (B.VarSecInfo(ids["a"], 0, 4),
                                                    B.VarSecInfo(ids["k"], 4, 4)))
    assert len(fixed.data) == len(data)


def test_needs_every_global_symbol() -> None:
    data, _ = datasec_btf()
    with pytest.raises(FormatError, match="no ELF symbol for VAR 'b'"):
        fixed_for_kernel(Btf.parse(data), {".data": 12}, {"a": 8})


def test_rejects_non_var_entries() -> None:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    b.add_datasec(".bss", [(i, 0, 4)])
    with pytest.raises(FormatError, match="not a VAR"):
        fixed_for_kernel(Btf.parse(b.build()), {".bss": 4}, {})
