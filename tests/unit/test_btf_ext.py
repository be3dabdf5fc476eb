"""ttcp.obj.btf_ext: parsing, rebasing for PROG_LOAD, malformed sections."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.btf_builder import BtfBuilder, BtfExtBuilder
from ttcp.errors import FormatError
from ttcp.obj.btf import Btf
from ttcp.obj.btf_ext import BtfExt, CoreRelo, FuncInfo, LineInfo, encode_func_info, encode_line_info


def sample(extra: bytes = b"") -> tuple[Btf, bytes]:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    s = b.add_struct("sock", [("a", i, 0)], 4)
    proto = b.add_func_proto(i, [])
    f1 = b.add_func("prog_a", proto)
    f2 = b.add_func("helper", proto)
    ext = BtfExtBuilder(b)
    ext.add_func_info("tp_btf/x", 0, f1, extra)
    ext.add_func_info("tp_btf/x", 80, f2, extra)
    ext.add_func_info(".text", 0, f2, extra)
    ext.add_line_info("tp_btf/x", 0, "a.c", 12, 3)
    ext.add_line_info("tp_btf/x", 16, "a.c", 13, 5)
    ext.add_core_relo("tp_btf/x", 8, s, "0:0", 0)
    ext.add_core_relo("tp_btf/x", 24, s, "0", 8)
    blob = ext.build()
    return Btf.parse(b.build()), blob


def test_parse_groups_by_section() -> None:
    btf, blob = sample()
    ext = BtfExt.parse(blob, btf)
    assert list(ext.func_info) == ["tp_btf/x", ".text"]
    assert [(r.insn_off, btf.name_of(r.type_id)) for r in ext.func_info["tp_btf/x"]] == [
        (0, "prog_a"), (80, "helper")]
    lines = ext.line_info["tp_btf/x"]
    assert [(r.insn_off, btf.string(r.file_name_off), r.line, r.column) for r in lines] == [
        (0, "a.c", 12, 3), (16, "a.c", 13, 5)]
    relos = ext.core_relos["tp_btf/x"]
    assert relos == [CoreRelo(8, 2, relos[0].access_str_off, 0, "0:0", 0),
                     CoreRelo(24, 2, relos[1].access_str_off, 8, "0", 1)]
    assert relos[1].insn_idx == 3
    assert (ext.func_info_rec_size, ext.line_info_rec_size, ext.core_relo_rec_size) == (8, 16, 16)


def test_encode_rebases_and_keeps_extra_bytes() -> None:
    btf, blob = sample(extra=b"\xaa\xbb\xcc\xdd")
    ext = BtfExt.parse(blob, btf)
    assert ext.func_info_rec_size == 12
    recs = ext.func_info["tp_btf/x"]
    out = encode_func_info(recs, insn_base=0)
    assert out == struct.pack("<II", 0, 4) + b"\xaa\xbb\xcc\xdd" + struct.pack("<II", 10, 5) \
        + b"\xaa\xbb\xcc\xdd"
    # the helper at section insn 10 appended after a 30-insn main program
    assert encode_func_info(recs[1:], insn_base=10 - 30)[:4] == struct.pack("<I", 30)
    lines = encode_line_info(ext.line_info["tp_btf/x"], insn_base=0, rec_size=16)
    assert struct.unpack_from("<I", lines, 16)[0] == 2
    assert lines[4:16] == ext.line_info["tp_btf/x"][0].raw[4:]


def test_encode_errors() -> None:
    with pytest.raises(FormatError, match="before the program start"):
        encode_func_info([FuncInfo(8, 1, struct.pack("<II", 8, 1))], insn_base=2)
    with pytest.raises(FormatError, match="not a multiple of 8"):
        encode_func_info([FuncInfo(4, 1, struct.pack("<II", 4, 1))], insn_base=0)
    with pytest.raises(FormatError, match="expected 16"):
        encode_line_info([LineInfo(0, 0, 0, 0, bytes(12))], insn_base=0, rec_size=16)


def test_header_without_core_relos() -> None:
    btf, blob = sample()
    short = blob[:4] + struct.pack("<I", 24) + blob[8:24] + blob[32:]
    ext = BtfExt.parse(short, btf)
    assert ext.core_relos == {}
    assert len(ext.func_info["tp_btf/x"]) == 2


def bad(blob: bytes, btf: Btf) -> str:
    with pytest.raises(FormatError) as info:
        BtfExt.parse(blob, btf)
    assert info.value.what == ".BTF.ext"
    return info.value.message


def patched(blob: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def test_malformed() -> None:
    btf, blob = sample()
    fi_start = 32  # func_info part: rec_size at hdr_len + 0
    assert "truncated header" in bad(blob[:6], btf)
    assert "bad magic" in bad(patched(blob, 0, "<H", 0x1234), btf)
    assert "big-endian" in bad(patched(blob, 0, "<H", 0x9FEB), btf)
    assert "version" in bad(patched(blob, 2, "<B", 2), btf)
    assert "flags" in bad(patched(blob, 3, "<B", 1), btf)
    assert "header length" in bad(patched(blob, 4, "<I", 8), btf)
    assert "runs past the end" in bad(patched(blob, 12, "<I", 10_000), btf)
    assert "not 4-byte aligned" in bad(patched(blob, 8, "<I", 2), btf)
    assert "invalid record size 4" in bad(patched(blob, fi_start, "<I", 4), btf)
    assert "invalid record size 10" in bad(patched(blob, fi_start, "<I", 10), btf)
    assert "has no records" in bad(patched(blob, fi_start + 8, "<I", 0), btf)
    assert "more than the part holds" in bad(patched(blob, fi_start + 8, "<I", 1000), btf)
    assert "section name" in bad(patched(blob, fi_start + 4, "<I", 99_999), btf)
    assert "record size but no records" in bad(patched(blob, 12, "<I", 4), btf)
    assert "truncated block header" in bad(patched(blob, 12, "<I", 4 + 8 + 16 + 4), btf)


def test_core_relo_checks() -> None:
    b = BtfBuilder()
    ext = BtfExtBuilder(b)
    ext.add_core_relo("s", 12, 1, "0", 0)
    with pytest.raises(FormatError, match="not a multiple of 8"):
        BtfExt.parse(ext.build(), Btf.parse(b.build()))
    b = BtfBuilder()
    ext = BtfExtBuilder(b)
    ext.core_relos["s"] = [struct.pack("<IIII", 0, 1, 5000, 0)]
    with pytest.raises(FormatError, match="access string"):
        BtfExt.parse(ext.build(), Btf.parse(b.build()))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzzed_raise_only_format_error(data: st.DataObject) -> None:
    btf, blob = sample()
    mutated = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        ext = BtfExt.parse(bytes(mutated[:data.draw(st.integers(0, len(mutated)))]), btf)
        for recs in ext.func_info.values():
            encode_func_info(recs, 0)
    except FormatError:
        pass
