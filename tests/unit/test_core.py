"""ttcp.obj.core: CO-RE resolution (libbpf semantics) and instruction patching."""

from __future__ import annotations

import struct

import pytest

from tests.support.btf_builder import BtfBuilder
from ttcp.errors import CoreRelocationError
from ttcp.obj import asm
from ttcp.obj import core as C
from ttcp.obj.asm import insn
from ttcp.obj.btf import Btf
from ttcp.obj.btf_ext import CoreRelo
from ttcp.obj.core import CoreResolver, patch_insn, resolve

U64 = (1 << 64) - 1

ADD64_X = asm.CLASS_ALU64 | asm.SOURCE_X  # BPF_ADD is 0: r_dst += r_src
JA = asm.CLASS_JMP  # BPF_JA is 0


def relo(type_id: int, access: str, kind: int, insn_off: int = 0, index: int = 0) -> CoreRelo:
    return CoreRelo(insn_off, type_id, 0, kind, access, index)


def pair(local: BtfBuilder, target: BtfBuilder) -> tuple[Btf, Btf]:
    return Btf.parse(local.build()), Btf.parse(target.build())


# ------------------------------------------------------------- fields


def moved_field() -> tuple[Btf, Btf, int, int]:
    lb = BtfBuilder()
    i = lb.add_int("int", 4, signed=True)
    foo = lb.add_struct("foo", [("a", i, 0), ("b", i, 32)], 8)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4, signed=True)
    tl = tb.add_int("long", 8, signed=True)
    tfoo = tb.add_struct("foo", [("x", ti, 0), ("a", ti, 32), ("pad", tl, 64), ("b", ti, 128)], 24)
    local, target = pair(lb, tb)
    return local, target, foo, tfoo


def test_field_offset_moves_and_ldx_is_patched() -> None:
    local, target, foo, tfoo = moved_field()
    res = resolve(relo(foo, "0:1", C.FIELD_BYTE_OFFSET), local, target)
    assert (res.local_value, res.new_value, res.poisoned, res.validate) == (4, 16, False, True)
    assert (res.orig_size, res.new_size, res.fail_memsz_adjust) == (4, 4, False)
    assert res.spec == "struct foo.b"
    assert res.local_spec == f"<byte_off> [{foo}] struct foo.b (0:1 @ offset 4)"
    assert res.target_spec == f"<byte_off> [{tfoo}] struct foo.b (0:3 @ offset 16)"
    assert res.target_type_id == tfoo
    assert [(c.type_id, c.matched) for c in res.candidates] == [(tfoo, True)]
    insns = bytearray(asm.ldx(asm.SIZE_W, 1, 2, 4) + asm.exit_())
    assert patch_insn(insns, 0, res) == (4, 16)
    assert insns[:8] == asm.ldx(asm.SIZE_W, 1, 2, 16)


def test_byte_size_exists_signed_shifts_on_plain_field() -> None:
    local, target, foo, _ = moved_field()
    r = CoreResolver(local, target)
    values = {k: r.resolve(relo(foo, "0:1", k)).new_value for k in C.FIELD_KINDS}
    assert values == {C.FIELD_BYTE_OFFSET: 16, C.FIELD_BYTE_SIZE: 4, C.FIELD_EXISTS: 1,
                      C.FIELD_SIGNED: 1, C.FIELD_LSHIFT_U64: 32, C.FIELD_RSHIFT_U64: 32}


def test_member_found_through_anonymous_members() -> None:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    inner = lb.add_struct("inner", [("v", i, 0)], 4)
    anon = lb.add_union("", [("a", i, 0)], 4)
    outer = lb.add_struct("outer", [("", anon, 0), ("pad", i, 32), ("in", inner, 64)], 12)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4)
    tl = tb.add_int("long", 8)
    tinner = tb.add_struct("inner", [("w", ti, 0), ("v", ti, 32)], 8)
    tanon_s = tb.add_struct("", [("a", ti, 32)], 8)
    tanon_u = tb.add_union("", [("u", tl, 0), ("", tanon_s, 0), ("in", tinner, 0)], 8)
    touter = tb.add_struct("outer", [("x", tl, 0), ("", tanon_u, 64)], 16)
    local, target = pair(lb, tb)
    r = CoreResolver(local, target)
    res = r.resolve(relo(outer, "0:0:0", C.FIELD_BYTE_OFFSET))
    assert (res.local_value, res.new_value, res.spec) == (0, 12, "struct outer.a")
    assert res.target_spec == f"<byte_off> [{touter}] struct outer.a (0:1:1:0 @ offset 12)"
    res = r.resolve(relo(outer, "0:2:0", C.FIELD_BYTE_OFFSET))
    assert (res.local_value, res.new_value, res.spec) == (8, 12, "struct outer.in.v")
    assert res.target_spec == f"<byte_off> [{touter}] struct outer.in.v (0:1:2:1 @ offset 12)"


def test_missing_field_poisons_but_exists_is_zero() -> None:
    _, target, _, _ = moved_field()
    lb_missing = BtfBuilder()
    i = lb_missing.add_int("int", 4)
    foo2 = lb_missing.add_struct("foo", [("gone", i, 0)], 4)
    local = Btf.parse(lb_missing.build())
    res = resolve(relo(foo2, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    assert (res.poisoned, res.new_value, res.local_value, res.target_spec) == (True, None, 0, None)
    assert [c.matched for c in res.candidates] == [False]
    res = resolve(relo(foo2, "0:0", C.FIELD_EXISTS), local, target)
    assert (res.poisoned, res.new_value, res.local_value) == (False, 0, 1)


def test_type_missing_in_target() -> None:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    s = lb.add_struct("only_here", [("a", i, 0)], 4)
    e = lb.add_enum("only_enum", [("X", 5)])
    local, target = pair(lb, BtfBuilder())
    r = CoreResolver(local, target)
    got = {k: (x.new_value, x.poisoned) for k in C.FIELD_KINDS | C.TYPE_KINDS
           if (x := r.resolve(relo(s, "0" if k in C.TYPE_KINDS else "0:0", k)))}
    assert got[C.FIELD_BYTE_OFFSET] == (None, True)
    assert got[C.FIELD_EXISTS] == (0, False)
    assert got[C.TYPE_EXISTS] == got[C.TYPE_SIZE] == got[C.TYPE_ID_TARGET] == (0, False)
    assert got[C.TYPE_MATCHES] == (0, False)
    assert got[C.TYPE_ID_LOCAL] == (s, False)
    assert r.resolve(relo(e, "0", C.ENUMVAL_EXISTS)).new_value == 0
    assert r.resolve(relo(e, "0", C.ENUMVAL_VALUE)).poisoned


def two_foos(second_offset: int, second_type: str = "int") -> tuple[Btf, Btf, int]:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    foo = lb.add_struct("foo", [("x", i, 0)], 4)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4)
    tl = tb.add_int("long", 8)
    tb.add_struct("foo", [("x", ti, 32)], 8)
    tb.add_struct("foo", [("x", tl if second_type == "long" else ti, second_offset)], 16)
    local, target = pair(lb, tb)
    return local, target, foo


def test_ambiguous_candidates_are_an_error() -> None:
    local, target, foo = two_foos(64)
    with pytest.raises(CoreRelocationError, match=r"field offset ambiguity for struct foo\.x: "
                       r"candidate \[4\] at bit 64, \[3\] at bit 32"):
        resolve(relo(foo, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    local, target, foo = two_foos(32, "long")
    with pytest.raises(CoreRelocationError, match="decision ambiguity.*gives 8.*gives 4"):
        resolve(relo(foo, "0:0", C.FIELD_BYTE_SIZE), local, target)


def test_agreeing_candidates_are_fine() -> None:
    local, target, foo = two_foos(32)
    res = resolve(relo(foo, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    assert res.new_value == 4
    assert [c.matched for c in res.candidates] == [True, True]


def test_candidates_pruned_per_local_type_like_libbpf() -> None:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    foo = lb.add_struct("foo", [("a", i, 0), ("b", i, 32)], 8)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4)
    first = tb.add_struct("foo", [("a", ti, 0), ("b", ti, 32)], 8)
    tb.add_struct("foo", [("b", ti, 0)], 4)
    local, target = pair(lb, tb)
    r = CoreResolver(local, target)
    assert r.resolve(relo(foo, "0:0", C.FIELD_BYTE_OFFSET)).target_type_id == first
    assert r.resolve(relo(foo, "0:1", C.FIELD_BYTE_OFFSET)).new_value == 4  # only `first` left
    with pytest.raises(CoreRelocationError, match="ambiguity"):
        CoreResolver(local, target).resolve(relo(foo, "0:1", C.FIELD_BYTE_OFFSET))


def test_flavors_on_both_sides() -> None:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    v2 = lb.add_struct("foo___v2", [("x", i, 0)], 4)
    plain = lb.add_struct("bar", [("x", i, 0)], 4)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4)
    tb.add_typedef("foo", ti)  # wrong kind: not a candidate
    tfoo = tb.add_struct("foo", [("y", ti, 0), ("x", ti, 32)], 8)
    tbar = tb.add_struct("bar___kernel_6", [("x", ti, 64)], 12)
    local, target = pair(lb, tb)
    res = resolve(relo(v2, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    assert (res.new_value, res.target_type_id) == (4, tfoo)
    assert [c.type_id for c in res.candidates] == [tfoo]
    res = resolve(relo(plain, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    assert (res.new_value, res.target_type_id) == (8, tbar)


def test_incompatible_field_type_does_not_match() -> None:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    s = lb.add_struct("s", [("f", i, 0)], 4)
    tb = BtfBuilder()
    inner = tb.add_struct("inner", [], 0)
    tb.add_struct("s", [("f", tb.add_ptr(inner), 0)], 8)
    local, target = pair(lb, tb)
    assert resolve(relo(s, "0:0", C.FIELD_BYTE_OFFSET), local, target).poisoned


# ----------------------------------------------------------- bitfields


def bitfields() -> tuple[Btf, Btf, int]:
    lb = BtfBuilder()
    u32 = lb.add_int("unsigned int", 4)
    s32 = lb.add_int("int", 4, signed=True)
    u8 = lb.add_int("unsigned char", 1)
    bf = lb.add_struct("bf", [("a", u32, 0, 3), ("b", s32, 3, 5), ("c", u8, 8, 4),
                              ("d", u32, 12, 0)], 8)
    tb = BtfBuilder()
    tu32 = tb.add_int("unsigned int", 4)
    ts32 = tb.add_int("int", 4, signed=True)
    tu8 = tb.add_int("unsigned char", 1)
    tu64 = tb.add_int("unsigned long", 8)
    tb.add_struct("bf", [("a", tu32, 9, 3), ("b", ts32, 20, 5), ("c", tu8, 38, 4),
                         ("d", tu64, 60, 8)], 16)
    local, target = pair(lb, tb)
    return local, target, bf


@pytest.mark.parametrize("access, expect_local, expect_target", [
    # a: u32:3 at bit 0 -> bit 9: load 4 bytes at 0, shift left 64-12, right 61
    ("0:0", (0, 4, 0, 61, 61), (0, 4, 0, 52, 61)),
    # b: s32:5 at bit 3 -> bit 20: signed
    ("0:1", (0, 4, 1, 56, 59), (0, 4, 1, 39, 59)),
    # c: u8:4 at bit 8 -> bit 38 crosses a byte: widened to a 2-byte load at 4
    ("0:2", (1, 1, 0, 60, 60), (4, 2, 0, 54, 60)),
])
def test_bitfield_kinds(access: str, expect_local: tuple, expect_target: tuple) -> None:
    local, target, bf = bitfields()
    r = CoreResolver(local, target)
    kinds = (C.FIELD_BYTE_OFFSET, C.FIELD_BYTE_SIZE, C.FIELD_SIGNED, C.FIELD_LSHIFT_U64,
             C.FIELD_RSHIFT_U64)
    results = [r.resolve(relo(bf, access, k)) for k in kinds]
    assert tuple(x.local_value for x in results) == expect_local
    assert tuple(x.new_value for x in results) == expect_target
    # bitfield positions are the compiler's choice: only signed/rshift validate
    assert [x.validate for x in results] == [False, False, True, False, True]
    assert results[0].orig_size == results[0].new_size == 0


def test_bitfield_needing_more_than_64_bits_fails() -> None:
    _, target, _ = bitfields()
    lb = BtfBuilder()
    u32 = lb.add_int("unsigned int", 4)
    bf2 = lb.add_struct("bf", [("d", u32, 0, 8)], 4)
    local = Btf.parse(lb.build())
    with pytest.raises(CoreRelocationError, match="cannot be read with one 64-bit load"):
        resolve(relo(bf2, "0:0", C.FIELD_BYTE_OFFSET), local, target)


def test_bitfield_offset_formats_like_libbpf() -> None:
    local, target, bf = bitfields()
    res = resolve(relo(bf, "0:1", C.FIELD_LSHIFT_U64), local, target)
    assert res.local_spec == f"<lshift_u64> [{bf}] struct bf.b (0:1 @ offset 0.3)"
    assert res.target_spec.endswith("struct bf.b (0:1 @ offset 2.4)")


# ------------------------------------------------------- arrays, sizes


def arrays() -> tuple[Btf, Btf, int]:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    arr = lb.add_array(i, 4, index_type=i)
    holder = lb.add_struct("holder", [("n", i, 0), ("arr", arr, 32)], 20)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4)
    tl = tb.add_int("long", 8)
    tflex = tb.add_array(ti, 0, index_type=ti)
    tb.add_struct("holder", [("n", tl, 0), ("arr", tflex, 64)], 8)
    local, target = pair(lb, tb)
    return local, target, holder


def test_array_element_and_flexible_target() -> None:
    local, target, holder = arrays()
    r = CoreResolver(local, target)
    res = r.resolve(relo(holder, "0:1:3", C.FIELD_BYTE_OFFSET))
    assert (res.local_value, res.new_value) == (16, 20)
    assert (res.orig_size, res.new_size) == (4, 4)
    assert res.spec == "struct holder.arr[3]"
    assert res.target_spec.endswith("struct holder.arr[3] (0:1:3 @ offset 20)")
    assert r.resolve(relo(holder, "0:1:3", C.FIELD_BYTE_SIZE)).new_value == 4
    whole = r.resolve(relo(holder, "0:1", C.FIELD_BYTE_SIZE))
    assert (whole.local_value, whole.new_value) == (16, 0)  # flexible: no size
    assert r.resolve(relo(holder, "0:0", C.FIELD_BYTE_SIZE)).new_value == 8
    with pytest.raises(CoreRelocationError, match="cannot apply to an array element"):
        r.resolve(relo(holder, "0:1:3", C.FIELD_SIGNED))
    # root index: holder[1].n
    res = r.resolve(relo(holder, "1:0", C.FIELD_BYTE_OFFSET))
    assert (res.local_value, res.new_value, res.spec) == (20, 8, "struct holder[1].n")


def test_array_index_beyond_target_bounds_does_not_match() -> None:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    holder = lb.add_struct("holder", [("arr", lb.add_array(i, 4), 0)], 16)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4)
    tb.add_struct("holder", [("arr", tb.add_array(ti, 2), 0), ("z", ti, 64)], 12)
    local, target = pair(lb, tb)
    assert resolve(relo(holder, "0:0:3", C.FIELD_BYTE_OFFSET), local, target).poisoned
    assert resolve(relo(holder, "0:0:1", C.FIELD_BYTE_OFFSET), local, target).new_value == 4


def load_size_pair(target_signed: bool) -> tuple[Btf, Btf, int]:
    lb = BtfBuilder()
    u64 = lb.add_int("unsigned long", 8)
    m = lb.add_struct("m", [("v", u64, 0)], 8)
    tb = BtfBuilder()
    tv = tb.add_int("int" if target_signed else "unsigned int", 4, signed=target_signed)
    tb.add_struct("m", [("pad", tv, 0), ("v", tv, 32)], 8)
    local, target = pair(lb, tb)
    return local, target, m


def test_load_size_adjusted_for_unsigned_ints() -> None:
    local, target, m = load_size_pair(target_signed=False)
    res = resolve(relo(m, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    assert (res.orig_size, res.new_size, res.fail_memsz_adjust) == (8, 4, False)
    insns = bytearray(asm.ldx(asm.SIZE_DW, 0, 1, 0))
    assert patch_insn(insns, 0, res) == (0, 4)
    assert insns == asm.ldx(asm.SIZE_W, 0, 1, 4)


def test_load_size_change_of_signed_field_poisons_the_load() -> None:
    local, target, m = load_size_pair(target_signed=True)
    res = resolve(relo(m, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    assert res.fail_memsz_adjust and not res.poisoned
    insns = bytearray(asm.ldx(asm.SIZE_DW, 0, 1, 0))
    assert patch_insn(insns, 0, res) == (0, None)
    assert insns == asm.call(C.POISON_IMM)
    alu = bytearray(asm.add_imm(1, 0))  # offset arithmetic is still fine
    assert patch_insn(alu, 0, res) == (0, 4)


# ------------------------------------------------------ enums and types


def enums() -> tuple[Btf, Btf, dict[str, int]]:
    lb = BtfBuilder()
    ids = {
        "e": lb.add_enum("e", [("A", 1), ("B", 2), ("GONE", 3), ("C___old", 4)]),
        "big": lb.add_enum("big", [("HUGE", 5)]),
    }
    tb = BtfBuilder()
    ids["te"] = tb.add_enum("e", [("B", 7), ("A", -1), ("C", 0x80000000 - 1)], signed=True)
    ids["tbig"] = tb.add_enum64("big", [("HUGE", 1 << 40)])
    local, target = pair(lb, tb)
    return local, target, ids


@pytest.mark.parametrize("access, kind, local_value, new_value", [
    ("0", C.ENUMVAL_VALUE, 1, U64),  # A = -1: sign-extended like libbpf
    ("1", C.ENUMVAL_VALUE, 2, 7),
    ("3", C.ENUMVAL_VALUE, 4, 0x7FFFFFFF),  # C___old matches C
    ("2", C.ENUMVAL_EXISTS, 1, 0),
    ("1", C.ENUMVAL_EXISTS, 1, 1),
])
def test_enum_values(access: str, kind: int, local_value: int, new_value: int) -> None:
    local, target, ids = enums()
    res = resolve(relo(ids["e"], access, kind), local, target)
    assert (res.local_value, res.new_value) == (local_value, new_value)


def test_enum64_target_and_formats() -> None:
    local, target, ids = enums()
    res = resolve(relo(ids["big"], "0", C.ENUMVAL_VALUE), local, target)
    assert (res.new_value, res.spec) == (1 << 40, "enum big::HUGE")
    assert res.local_spec == f"<enumval_value> [{ids['big']}] enum big::HUGE = 5"
    assert res.target_spec == f"<enumval_value> [{ids['tbig']}] enum64 big::HUGE = {1 << 40}"
    res = resolve(relo(ids["e"], "0", C.ENUMVAL_VALUE), local, target)
    assert res.target_spec == f"<enumval_value> [{ids['te']}] enum e::A = -1"
    gone = resolve(relo(ids["e"], "2", C.ENUMVAL_VALUE), local, target)
    assert gone.poisoned and gone.candidates[0].spec.endswith("enum e::B = 7")  # libbpf shows #0
    insns = bytearray(asm.ld_imm64(1, 3) + asm.exit_())
    assert patch_insn(insns, 0, gone) == (3, None)
    assert insns[:16] == asm.call(C.POISON_IMM) * 2


def types() -> tuple[Btf, Btf, dict[str, int]]:
    lb = BtfBuilder()
    i = lb.add_int("int", 4, signed=True)
    l64 = lb.add_int("long", 8, signed=True)
    ids = {"t": lb.add_struct("t", [("a", i, 0), ("p", lb.add_ptr(l64), 64)], 16),
           "td": lb.add_typedef("td_t", i),
           "fn": lb.add_typedef("fn_t", lb.add_ptr(lb.add_func_proto(i, [("x", i)])))}
    tb = BtfBuilder()
    ti = tb.add_int("int", 4, signed=True)
    tu = tb.add_int("unsigned int", 4)
    tl = tb.add_int("long", 8, signed=True)
    ids["tt"] = tb.add_struct("t", [("b", tl, 0), ("a", ti, 64), ("p", tb.add_ptr(tl), 128)], 24)
    ids["tt_bad"] = tb.add_struct("t", [("a", tu, 0), ("p", tb.add_ptr(tl), 64)], 16)
    ids["ttd"] = tb.add_typedef("td_t", tb.add_struct("s", [], 0))
    ids["tfn"] = tb.add_typedef("fn_t", tb.add_ptr(tb.add_func_proto(tl, [("y", tl)])))
    local, target = pair(lb, tb)
    return local, target, ids


def test_type_kinds() -> None:
    local, target, ids = types()
    r = CoreResolver(local, target)
    t = ids["t"]
    local_id = r.resolve(relo(t, "0", C.TYPE_ID_LOCAL))
    assert (local_id.local_value, local_id.new_value, local_id.validate) == (t, t, False)
    assert local_id.candidates == ()
    with pytest.raises(CoreRelocationError, match="ambiguity"):
        r.resolve(relo(t, "0", C.TYPE_ID_TARGET))  # two compatible struct t
    m = r.resolve(relo(t, "0", C.TYPE_MATCHES))  # only the first matches
    assert (m.new_value, m.target_type_id) == (1, ids["tt"])
    target_id = r.resolve(relo(t, "0", C.TYPE_ID_TARGET))  # candidates now pruned
    assert (target_id.local_value, target_id.new_value, target_id.validate) == (t, ids["tt"], False)
    size = r.resolve(relo(t, "0", C.TYPE_SIZE))
    assert (size.local_value, size.new_value, size.local_spec) == (16, 24, f"<type_size> [{t}] struct t")
    exists = r.resolve(relo(ids["td"], "0", C.TYPE_EXISTS))  # typedef to int vs to struct
    assert (exists.new_value, exists.poisoned) == (0, False)
    fn = r.resolve(relo(ids["fn"], "0", C.TYPE_EXISTS))  # compatible protos (ints of any size)
    assert fn.new_value == 1
    assert r.resolve(relo(ids["fn"], "0", C.TYPE_MATCHES)).new_value == 0  # int vs long


# -------------------------------------------------------------- patching


def test_patch_alu_imm_and_validation() -> None:
    local, target, foo, _ = moved_field()
    res = resolve(relo(foo, "0:1", C.FIELD_BYTE_OFFSET, insn_off=8), local, target)
    insns = bytearray(insn(JA) + asm.add_imm(1, 4))
    assert patch_insn(insns, 1, res) == (4, 16)
    assert insns[8:] == asm.add_imm(1, 16)
    wrong = bytearray(asm.add_imm(1, 5))
    with pytest.raises(CoreRelocationError, match="insn #0: expected 4 got 5"):
        patch_insn(wrong, 0, res)
    with pytest.raises(CoreRelocationError, match="register source"):
        patch_insn(bytearray(insn(ADD64_X, 1, 2)), 0, res)
    with pytest.raises(CoreRelocationError, match="cannot relocate"):
        patch_insn(bytearray(insn(JA, off=4, imm=4)), 0, res)
    with pytest.raises(CoreRelocationError, match="out of range"):
        patch_insn(bytearray(asm.add_imm(0, 4)), 1, res)


def test_patch_ldimm64_64bit_value() -> None:
    local, target, ids = enums()
    res = resolve(relo(ids["big"], "0", C.ENUMVAL_VALUE), local, target)
    insns = bytearray(asm.ld_imm64(2, 5))
    assert patch_insn(insns, 0, res) == (5, 1 << 40)
    assert struct.unpack_from("<i", insns, 4)[0] == 0 and struct.unpack_from("<i", insns, 12)[0] == 256
    with pytest.raises(CoreRelocationError, match="unexpected form"):
        patch_insn(bytearray(insn(asm.LD_IMM64, 2, imm=5) + insn(0, off=1)), 0, res)
    with pytest.raises(CoreRelocationError, match="second half"):
        patch_insn(bytearray(insn(asm.LD_IMM64, 2, imm=5)), 0, res)


def test_negative_imm_compares_as_u64() -> None:
    local, target, ids = enums()
    res = resolve(relo(ids["e"], "0", C.ENUMVAL_VALUE), local, target)  # A: 1 -> -1
    insns = bytearray(asm.mov_imm(1, 1))
    assert patch_insn(insns, 0, res) == (1, U64)
    assert struct.unpack_from("<i", insns, 4)[0] == -1


def test_offset_too_big_for_insn() -> None:
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    s = lb.add_struct("s", [("f", i, 0)], 4)
    tb = BtfBuilder()
    ti = tb.add_int("int", 4)
    tb.add_struct("s", [("f", ti, 8 * 40000)], 40004)
    local, target = pair(lb, tb)
    res = resolve(relo(s, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    with pytest.raises(CoreRelocationError, match="does not fit"):
        patch_insn(bytearray(asm.ldx(asm.SIZE_W, 0, 1, 0)), 0, res)
    assert patch_insn(bytearray(asm.add_imm(1, 0)), 0, res) == (0, 40000)


# ------------------------------------------------------------- malformed


@pytest.mark.parametrize("access, kind, message", [
    ("", C.FIELD_BYTE_OFFSET, "empty or starts with ':'"),
    (":0", C.FIELD_BYTE_OFFSET, "empty or starts with ':'"),
    ("0:x", C.FIELD_BYTE_OFFSET, "no number"),
    ("0::1", C.FIELD_BYTE_OFFSET, "no number"),
    ("0:-1", C.FIELD_BYTE_OFFSET, "out of range"),
    ("0:9", C.FIELD_BYTE_OFFSET, "member index 9 out of range"),
    ("0:0:1", C.FIELD_BYTE_OFFSET, "lands in .* int, not a struct"),
    (":".join(["0"] * 65), C.FIELD_BYTE_OFFSET, "more than 64"),
    ("1", C.TYPE_SIZE, "needs access string '0'"),
    ("0", C.ENUMVAL_VALUE, "enumerator index"),
])
def test_malformed_relocations(access: str, kind: int, message: str) -> None:
    local, target, foo, _ = moved_field()
    with pytest.raises(CoreRelocationError, match=message):
        resolve(relo(foo, access, kind), local, target)


def test_bad_kind_type_id_and_anonymous_type() -> None:
    local, target, foo, _ = moved_field()
    with pytest.raises(CoreRelocationError, match="unknown relocation kind 13"):
        resolve(relo(foo, "0:0", 13), local, target)
    with pytest.raises(CoreRelocationError, match="type id 99 out of range"):
        resolve(relo(99, "0:0", C.FIELD_BYTE_OFFSET), local, target)
    lb = BtfBuilder()
    anon = lb.add_struct("", [("a", lb.add_int("int", 4), 0)], 4)
    with pytest.raises(CoreRelocationError, match="anonymous types"):
        resolve(relo(anon - 1 + 1, "0:0", C.FIELD_BYTE_OFFSET), Btf.parse(lb.build()), target)
    # TYPE_ID_LOCAL needs no candidates, so anonymous is fine
    assert resolve(relo(anon, "0", C.TYPE_ID_LOCAL), Btf.parse(lb.build()), target).new_value == anon


def test_hostile_member_fanout_gives_up() -> None:
    """Each anonymous level holds two anonymous members of the next level:
    2**40 paths, which libbpf would walk forever."""
    lb = BtfBuilder()
    i = lb.add_int("int", 4)
    s = lb.add_struct("s", [("needle", i, 0)], 4)
    tb = BtfBuilder()
    prev = tb.add_int("int", 4)
    for _ in range(40):
        prev = tb.add_struct("", [("", prev, 0), ("", prev, 0)], 4)
    tb.add_struct("s", [("", prev, 0)], 4)
    local, target = pair(lb, tb)
    with pytest.raises(CoreRelocationError, match="gave up"):
        resolve(relo(s, "0:0", C.FIELD_BYTE_OFFSET), local, target)
