"""ttcp.obj.btf: decoding every kind, lookups, malformed blobs."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.btf_builder import BtfBuilder
from ttcp.errors import FormatError
from ttcp.obj import btf as B
from ttcp.obj.btf import Btf, essential_name
from ttcp.obj.btf.index import REGEX_MIN_BYTES
from ttcp.obj.btf_fixup import fixed_for_kernel


def one_of_each() -> tuple[BtfBuilder, dict[str, int]]:
    b = BtfBuilder()
    ids = {}
    ids["int"] = b.add_int("int", 4, signed=True)
    ids["uchar"] = b.add_int("unsigned char", 1, encoding=B.INT_CHAR)
    ids["ptr"] = b.add_ptr(ids["int"])
    ids["array"] = b.add_array(ids["int"], 7, index_type=ids["int"])
    ids["struct"] = b.add_struct("pair", [("a", ids["int"], 0), ("b", ids["ptr"], 64)], 16)
    ids["bits"] = b.add_struct("bits", [("x", ids["int"], 3, 5), ("y", ids["int"], 8)], 4)
    ids["union"] = b.add_union("u", [("i", ids["int"], 0), ("c", ids["uchar"], 0)], 4)
    ids["enum"] = b.add_enum("color", [("RED", 0), ("BLUE", 0xFFFFFFFF)])
    ids["senum"] = b.add_enum("sgn", [("NEG", -2)], signed=True)
    ids["fwd"] = b.add_fwd("later", union=True)
    ids["typedef"] = b.add_typedef("int_t", ids["int"])
    ids["volatile"] = b.add_volatile(ids["typedef"])
    ids["const"] = b.add_const(ids["volatile"])
    ids["restrict"] = b.add_restrict(ids["ptr"])
    ids["proto"] = b.add_func_proto(ids["int"], [("x", ids["int"]), ("", 0)])
    ids["func"] = b.add_func("tcp_close", ids["proto"], linkage=B.LINKAGE_GLOBAL)
    ids["var"] = b.add_var("counter", ids["int"], linkage=B.LINKAGE_GLOBAL)
    ids["datasec"] = b.add_datasec(".data", [(ids["var"], 8, 4)], size=16)
    ids["float"] = b.add_float("double", 8)
    ids["decl_tag"] = b.add_decl_tag("tag", ids["struct"], component_idx=1)
    ids["type_tag"] = b.add_type_tag("user", ids["int"])
    ids["enum64"] = b.add_enum64("big", [("HUGE", 1 << 40), ("MAX", (1 << 64) - 1)])
    ids["senum64"] = b.add_enum64("sbig", [("M1", -1)], signed=True)
    return b, ids


def test_every_kind_decodes() -> None:
    b, ids = one_of_each()
    btf = Btf.parse(b.build())
    assert len(btf) == len(ids) + 1
    t = btf.type(ids["int"])
    assert (t.kind, t.name, t.size, t.encoding, t.offset, t.bits) == (B.KIND_INT, "int", 4, 1, 0, 32)
    assert btf.type(ids["uchar"]).encoding == B.INT_CHAR
    assert btf.type(ids["ptr"]).type == ids["int"]
    arr = btf.type(ids["array"])
    assert (arr.elem_type, arr.index_type, arr.nelems) == (ids["int"], ids["int"], 7)
    assert btf.type(ids["struct"]).members == (
        B.Member("a", ids["int"], 0, 0), B.Member("b", ids["ptr"], 64, 0))
    assert btf.type(ids["bits"]).members == (
        B.Member("x", ids["int"], 3, 5), B.Member("y", ids["int"], 8, 0))
    assert btf.type(ids["union"]).kind == B.KIND_UNION
    assert btf.type(ids["enum"]).values == (B.EnumValue("RED", 0), B.EnumValue("BLUE", 0xFFFFFFFF))
    assert btf.type(ids["senum"]).values == (B.EnumValue("NEG", -2),)
    fwd = btf.type(ids["fwd"])
    assert (fwd.kind, fwd.kflag) == (B.KIND_FWD, True)
    assert btf.type(ids["typedef"]).type == ids["int"]
    assert btf.type(ids["const"]).type == ids["volatile"]
    assert btf.type(ids["restrict"]).kind == B.KIND_RESTRICT
    proto = btf.type(ids["proto"])
    assert (proto.type, proto.params) == (ids["int"], (B.Param("x", ids["int"]), B.Param("", 0)))
    func = btf.type(ids["func"])
    assert (func.name, func.type, func.linkage) == ("tcp_close", ids["proto"], 1)
    assert btf.type(ids["var"]).linkage == B.LINKAGE_GLOBAL
    sec = btf.type(ids["datasec"])
    assert (sec.name, sec.size, sec.vars) == (".data", 16, (B.VarSecInfo(ids["var"], 8, 4),))
    assert btf.type(ids["float"]).size == 8
    tag = btf.type(ids["decl_tag"])
    assert (tag.type, tag.component_idx) == (ids["struct"], 1)
    assert btf.type(ids["type_tag"]).name == "user"
    assert btf.type(ids["enum64"]).values == (B.EnumValue("HUGE", 1 << 40),
                                              B.EnumValue("MAX", (1 << 64) - 1))
    assert btf.type(ids["senum64"]).values == (B.EnumValue("M1", -1),)
    assert btf.type(0) == B.VOID and btf.type(0).kind == B.KIND_UNKN
    classes = {"int": B.Int, "uchar": B.Int, "ptr": B.Ptr, "array": B.Array, "struct": B.Struct,
               "bits": B.Struct, "union": B.Union, "enum": B.Enum, "senum": B.Enum, "fwd": B.Fwd,
               "typedef": B.Typedef, "volatile": B.Volatile, "const": B.Const,
               "restrict": B.Restrict, "proto": B.FuncProto, "func": B.Func, "var": B.Var,
               "datasec": B.Datasec, "float": B.Float, "decl_tag": B.DeclTag,
               "type_tag": B.TypeTag, "enum64": B.Enum64, "senum64": B.Enum64}
    raw = Btf.parse(b.build())  # kind_of reads the record's info word, nothing decoded
    for key, tid in ids.items():  # one class per kind, and it has the record's kind
        assert type(btf.type(tid)) is classes[key]
        assert btf.type(tid).kind == raw.kind_of(tid)
    assert btf.type(ids["struct"]).describe() == f"[{ids['struct']}] struct pair"
    assert btf.type(ids["ptr"]).describe() == f"[{ids['ptr']}] ptr <anon>"


def test_helpers() -> None:
    b, ids = one_of_each()
    btf = Btf.parse(b.build())
    assert btf.skip_mods_and_typedefs(ids["const"]) == ids["int"]
    assert btf.skip_mods_and_typedefs(ids["int"]) == ids["int"]
    assert btf.resolve_size(ids["const"]) == 4
    assert btf.resolve_size(ids["array"]) == 28
    assert btf.resolve_size(ids["ptr"]) == 8
    assert btf.resolve_size(ids["var"]) == 4
    assert btf.resolve_size(ids["struct"]) == 16
    with pytest.raises(FormatError, match="fwd has no size"):
        btf.resolve_size(ids["fwd"])
    with pytest.raises(FormatError, match="void has no size"):
        btf.resolve_size(0)
    assert btf.name_of(ids["func"]) == "tcp_close"
    assert btf.string(btf.type(ids["func"]).name_off) == "tcp_close"
    assert btf.kind_of(ids["datasec"]) == B.KIND_DATASEC
    assert btf.typed(ids["struct"], B.Composite).members == btf.type(ids["struct"]).members
    with pytest.raises(FormatError, match=r"int int is not a composite"):
        btf.typed(ids["int"], B.Composite)


def test_name_lookups() -> None:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    s1 = b.add_struct("sock", [("a", i, 0)], 4)
    td = b.add_typedef("sock", s1)
    s2 = b.add_struct("sock___v2", [("a", i, 0)], 4)
    s3 = b.add_struct("sock___v2___x", [("a", i, 0)], 4)
    b.add_struct("tcp_sock", [("sock", i, 0)], 4)  # "sock" as a member name too
    f = b.add_func("tcp_close", b.add_func_proto(0, []))
    btf = Btf.parse(b.build())
    assert btf.ids_by_name("sock") == [s1, td]
    assert btf.ids_by_name("sock", B.KIND_STRUCT) == [s1]
    assert btf.ids_by_name("sock___v2") == [s2]
    assert btf.ids_by_name("nope") == []
    assert btf.ids_by_name("") == []
    assert btf.ids_by_essential_name("sock", [B.KIND_STRUCT]) == [s1, s2]
    assert btf.ids_by_essential_name("sock___anything", [B.KIND_STRUCT]) == [s1, s2]
    assert btf.ids_by_essential_name("sock___v2___y", [B.KIND_STRUCT]) == [s3]
    assert btf.func_by_name("tcp_close") == f
    assert btf.first_id("sock", B.KIND_TYPEDEF) == td
    assert btf.first_id("sock", B.KIND_UNION) is None


@pytest.mark.parametrize("name, essential", [
    ("sock", "sock"), ("sock___v2", "sock"), ("a___b___c", "a___b"), ("x____y", "x____y"),
    ("___x", "___x"), ("a___", "a___"), ("", ""), ("ab___c", "ab"),
])
def test_essential_name(name: str, essential: str) -> None:
    assert essential_name(name) == essential


def test_split_btf_continues_ids_and_strings() -> None:
    base_b = BtfBuilder()
    i = base_b.add_int("int", 4)
    base_b.add_struct("sock", [("x", i, 0)], 4)
    base = Btf.parse(base_b.build())
    split_b = BtfBuilder(start_id=len(base), str_base=len(base_b.strings))
    split_b._offsets.update({"sock": base_b.str("sock")})  # reuse a base string
    p = split_b.add_ptr(i)
    m = split_b.add_struct("sock", [("y", p, 0)], 8)
    split = Btf.parse(split_b.build(), base=base)
    assert len(split) == 5
    assert split.type(p).type == i
    assert split.type(i).name == "int"
    assert split.type(m).members[0].name == "y"
    assert split.ids_by_name("sock", B.KIND_STRUCT) == [2, m]


def test_large_btf_regex_walk_matches_builder() -> None:
    """Big enough (> 64 KiB) for the regex walker, with records it skips
    (vlen >= 48, FUNC linkage, kflag) scattered between ordinary ones."""
    b = BtfBuilder()
    expect = {}
    i = b.add_int("int", 4)
    expect[i] = (B.KIND_INT, "int")
    for n in range(1500):
        name = f"s{n}"
        vlen = (n * 7) % 60
        tid = b.add_struct(name, [(f"m{k}", i, 32 * k, k % 3 if n % 5 == 0 else 0)
                                  for k in range(vlen)], 4 * vlen)
        expect[tid] = (B.KIND_STRUCT, name)
        tid = b.add_func_proto(i, [("p", i)] * (n % 4))
        expect[tid] = (B.KIND_FUNC_PROTO, "")
        tid = b.add_func(f"f{n}", tid, linkage=n % 3)
        expect[tid] = (B.KIND_FUNC, f"f{n}")
        tid = b.add_enum(f"e{n}", [(f"E{n}_{k}", k) for k in range(n % 50)])
        expect[tid] = (B.KIND_ENUM, f"e{n}")
        tid = b.add_array(i, n)
        expect[tid] = (B.KIND_ARRAY, "")
    data = b.build()
    assert len(data) > REGEX_MIN_BYTES
    btf = Btf.parse(data)
    assert len(btf) == len(expect) + 1
    for tid in sorted(expect, reverse=True)[:300] + sorted(expect)[::7]:
        t = btf.type(tid)
        assert (t.kind, t.name) == expect[tid]
    late = max(t for t, (k, _) in expect.items() if k == B.KIND_STRUCT)
    assert btf.ids_by_name(expect[late][1]) == [late]
    assert btf.ids_by_name("f1234", B.KIND_FUNC) == [b_id for b_id, v in expect.items()
                                                     if v == (B.KIND_FUNC, "f1234")]


def test_lookup_walks_lazily() -> None:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    first = b.add_struct("first", [("a", i, 0)], 4)
    for n in range(6000):
        b.add_struct(f"filler{n}", [("a", i, 0), ("b", i, 32)], 8)
    btf = Btf.parse(b.build())
    assert btf.ids_by_name("first") == [first]
    assert not btf.index.done
    assert len(btf) == 6003
    assert btf.index.done


# ------------------------------------------------------------ malformed


def malformed(data: bytes) -> str:
    """Parse and touch everything; return the FormatError message."""
    with pytest.raises(FormatError) as info:
        btf = Btf.parse(data)
        for tid in range(len(btf)):
            btf.type(tid)
            btf.skip_mods_and_typedefs(tid)
    assert info.value.what == "BTF"
    return info.value.message


def small() -> BtfBuilder:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    b.add_struct("s", [("a", i, 0)], 4)
    return b


def test_malformed_header() -> None:
    assert "truncated header" in malformed(small().build()[:20])
    assert "bad magic 0xeb9e" in malformed(small().build(magic=0xEB9E))
    assert "big-endian" in malformed(small().build(magic=0x9FEB))
    assert "version 2" in malformed(small().build(version=2))
    assert "flags" in malformed(small().build(flags=1))
    assert "header length 9999" in malformed(small().build()[:24].replace(
        struct.pack("<I", 24), struct.pack("<I", 9999), 1))
    assert "not 4-byte aligned" in malformed(small().build(type_len=29))
    assert "overlaps the string section" in malformed(small().build(str_off=8))
    assert "ends past the end" in malformed(small().build(str_len=10_000))


def test_malformed_strings() -> None:
    b = small()
    assert "does not end with a NUL" in malformed(b.build(strings=bytes(b.strings) + b"x"))
    assert "does not start with the empty string" in malformed(
        b.build(strings=b"x" + bytes(b.strings)))
    assert "empty string section" in malformed(b.build(strings=b""))
    b = small()
    b.add_raw(struct.pack("<III", 10_000, B.KIND_PTR << 24, 1))
    assert "string offset 10000 past the end" in malformed(b.build())


def test_malformed_types() -> None:
    b = small()
    b.add_ptr(99)
    assert "refers to type id 99, out of range" in malformed(b.build())
    b = small()
    b.add_raw(struct.pack("<III", 0, 25 << 24, 0))
    assert "unknown kind 25" in malformed(b.build())
    b = small()
    b.add_raw(struct.pack("<III", 0, 0, 0))
    assert "unknown kind 0" in malformed(b.build())
    b = small()
    b.add_raw(struct.pack("<III", 0, B.KIND_PTR << 24 | 1 << 20, 1))
    assert "reserved bits" in malformed(b.build())
    b = small()
    b.add_raw(struct.pack("<III", 0, B.KIND_STRUCT << 24 | 0xFFFF, 4))  # absurd vlen
    assert "runs past the end" in malformed(b.build())
    b = small()
    b.add_raw(struct.pack("<II", 0, B.KIND_PTR << 24))
    assert "truncated" in malformed(b.build())


def test_bad_record_late_in_a_big_blob() -> None:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    for n in range(3000):
        b.add_struct(f"s{n}", [("a", i, 0), ("b", i, 32)], 8)
    b.add_raw(struct.pack("<III", 0, 25 << 24, 0))
    b.add_struct("after", [("a", i, 0)], 4)
    btf = Btf.parse(b.build())
    assert btf.type(2).name == "s0"
    assert btf.ids_by_name("s5") == [7]
    for _ in range(2):  # the same error every time, the walk does not resume
        with pytest.raises(FormatError, match=r"type \[3002\]: unknown kind 25"):
            len(btf)
        with pytest.raises(FormatError, match="unknown kind 25"):
            btf.type(3003)
    assert btf.type(100).name == "s98"


def test_typedef_cycle_stops() -> None:
    b = BtfBuilder()
    b.add_typedef("a", 2)
    b.add_const(3)
    b.add_typedef("c", 1)
    btf = Btf.parse(b.build())
    with pytest.raises(FormatError, match="loops"):
        btf.skip_mods_and_typedefs(1)
    with pytest.raises(FormatError, match="not resolved within 32 steps"):
        btf.resolve_size(2)


def test_bad_type_ids_rejected() -> None:
    btf = Btf.parse(small().build())
    for bad in (-1, 3, 1 << 40, "1"):
        with pytest.raises(FormatError):
            btf.type(bad)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzzed_blobs_raise_only_format_error(data: st.DataObject) -> None:
    base, _ = one_of_each()
    blob = bytearray(base.build())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        btf = Btf.parse(bytes(blob[:cut] if data.draw(st.booleans()) else blob))
        for tid in range(len(btf)):
            t = btf.type(tid)
            btf.skip_mods_and_typedefs(tid)
            try:
                btf.resolve_size(tid)
            except FormatError:
                pass
            for m in t.members if isinstance(t, B.Composite) else ():
                btf.type(m.type)
        btf.ids_by_name("pair")
        btf.ids_by_essential_name("color___x")
        fixed_for_kernel(btf, {".data": 16}, {"counter": 8})
    except FormatError:
        pass
