"""Hostile input for the pure parsers: ELF, BTF, .BTF.ext, CO-RE, map specs, linker.

Property: whatever the bytes, ttcp either accepts them or raises a TtcpError
(FormatError / CoreRelocationError) whose message names the problem — never
another exception, never a hang (hard SIGALRM deadline per input), never an
absurd allocation (tracemalloc peak per input). Inputs are seeded from the
shipped object, the test objects and hand-made BTF, then truncated,
bit-flipped and rewritten field by field.

The number of examples per test comes from TTCP_FUZZ_EXAMPLES: small in the
default suite, 20000 under `make fuzz`. Inputs that ever broke a parser live
in tests/support/fuzz_corpus/ and are replayed on every run (the cases that
run whole objects through CO-RE against the kernel's BTF are
tests/kernel/test_fuzz_objects.py's).
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import hostile as H
from tests.support.btf_builder import BtfBuilder, BtfExtBuilder
from tests.support.mutation import FUZZ, btf_seeds, corpus_files, mutate, object_seeds
from ttcp.errors import CoreRelocationError, FormatError
from ttcp.obj import elf
from ttcp.obj.btf import KIND_STRUCT, Btf
from ttcp.obj.btf_ext import BtfExt, CoreRelo
from ttcp.obj.core import CoreResolver
from ttcp.obj.elf import read_object

pytestmark = pytest.mark.fuzz


# ---- ELF objects: reader, map specs, linker, CO-RE, func/line info ------------------------------


@FUZZ
@given(st.binary(max_size=512), st.sampled_from((b"", b"\x7fELF", b"\x7fELF\x02\x01\x01")))
def test_random_bytes_are_not_objects(tail: bytes, head: bytes) -> None:
    err = H.only_ttcp_errors(read_object, head + tail)
    assert isinstance(err, FormatError) and err.what == "ELF"


def test_seeds_are_accepted() -> None:
    """The mutation seeds must themselves pass, or the fuzzing above tests nothing."""
    for seed in object_seeds():
        obj = read_object(seed)
        assert obj.programs and obj.btf and obj.btf_ext
    for blob in H.builder_blobs():
        Btf.parse(blob)
    for btf_blob, ext_blob in H.btf_ext_seeds():
        assert H.only_ttcp_errors(H.exercise_btf_ext, ext_blob, btf_blob) is None
    assert H.only_ttcp_errors(H.exercise_btf, H.section_bytes(H.shipped(), ".BTF")) is None


def test_the_guards_catch_what_they_claim_to() -> None:
    """The harness must be able to fail: stray exceptions, hangs, blow-ups and
    internal errors dressed as a TtcpError all stop the test."""
    with pytest.raises(IndexError):
        H.only_ttcp_errors(_raise, IndexError("a parser bug"))
    with pytest.raises(H.Hang), H.bounded(seconds=0.2):
        while True:
            pass
    with pytest.raises(H.Blowup), H.bounded(max_bytes=1 << 20):
        bytearray(8 << 20)
    with pytest.raises(AssertionError, match="MemoryError"):
        H.only_ttcp_errors(_raise, FormatError("ELF", "malformed object (MemoryError: )"))
    assert isinstance(H.only_ttcp_errors(read_object, b"\x7fELF"), FormatError)


def _raise(err: Exception) -> None:
    raise err


def test_only_malformed_input_is_a_malformed_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """What pyelftools raises on a bad header becomes FormatError; an exception
    from a bug (here: a KeyError in ttcp's own reading) is not dressed as one."""
    seed = H.shipped()
    past_seek = bytearray(seed)
    past_seek[0x28:0x30] = (1 << 63).to_bytes(8, "little")  # e_shoff beyond what seek() takes
    err = H.only_ttcp_errors(read_object, bytes(past_seek))
    assert isinstance(err, FormatError) and "ELFParseError" in err.message
    corrupt = (H.CORPUS / "elf" / "compressed-btf-corrupt-zlib.o").read_bytes()
    err = H.only_ttcp_errors(read_object, corrupt)
    assert isinstance(err, FormatError) and "decompressing" in err.message

    def bug(*args: object) -> None:
        raise KeyError("a ttcp bug")

    monkeypatch.setattr(elf, "_read_relocs", bug)
    with pytest.raises(KeyError, match="a ttcp bug"):
        read_object(seed)


# ---- BTF ----------------------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_mutated_btf_raises_only_format_errors(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(btf_seeds()), label="seed")
    blob = mutate(data, seed, H.btf_fields(seed))
    err = H.only_ttcp_errors(H.exercise_btf, blob)
    assert err is None or isinstance(err, FormatError)


# ---- .BTF.ext ------------------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_mutated_btf_ext_raises_only_format_errors(data: st.DataObject) -> None:
    btf_blob, ext_blob = data.draw(st.sampled_from(H.btf_ext_seeds()), label="seed")
    ext_fields = tuple((off, 4) for off in range(0, len(ext_blob) - 3, 4))
    ext_blob = mutate(data, ext_blob, ext_fields)
    if data.draw(st.booleans(), label="also mutate the BTF"):
        btf_blob = mutate(data, btf_blob, H.btf_fields(btf_blob))
    err = H.only_ttcp_errors(H.exercise_btf_ext, ext_blob, btf_blob)
    assert err is None or isinstance(err, FormatError)


# ---- hand-crafted inputs: each refusal names its problem -------------------------------------------


def _btf_header(blob: bytes, **fields: int) -> bytes:
    names = ("magic", "version", "flags", "hdr_len", "type_off", "type_len", "str_off", "str_len")
    values = dict(zip(names, struct.unpack_from("<HBBIIIII", blob), strict=True))
    values.update(fields)
    return struct.pack("<HBBIIIII", *(values[n] for n in names)) + blob[24:]


def _one_struct(vlen: int | None = None, member_type: int = 1, name_off: int | None = None) -> bytes:
    b = BtfBuilder()
    i = b.add_int("int", 4)
    b.add_struct("s", [("a", member_type, 0)], 4)
    blob = bytearray(b.build())
    rec = 24 + 16  # header + the INT record
    if vlen is not None:
        struct.pack_into("<I", blob, rec + 4, (4 << 24) | vlen)
    if name_off is not None:
        struct.pack_into("<I", blob, rec, name_off)
    assert i == 1
    return bytes(blob)


def _cycle(kind: str) -> Btf:
    b = BtfBuilder()
    if kind == "typedef":
        b.add_typedef("a", 2)
        b.add_typedef("b", 1)
    elif kind == "const":
        b.add_const(1)
    elif kind == "array":
        b.add_array(1, 1)
    return Btf.parse(b.build())


HANDMADE_BTF = [
    ("bad magic", _btf_header(_one_struct(), magic=0xBEEF), r"bad magic 0xbeef"),
    ("big endian", _btf_header(_one_struct(), magic=0x9FEB), r"big-endian"),
    ("version", _btf_header(_one_struct(), version=2), r"unsupported version 2"),
    ("header too long", _btf_header(_one_struct(), hdr_len=1 << 20), r"header length"),
    ("strings past end", _btf_header(_one_struct(), str_len=1 << 16), r"string section .* ends past"),
    ("types overlap strings", _btf_header(_one_struct(), type_len=64), r"overlaps the string section"),
    ("truncated", _one_struct()[:20], r"truncated header"),
    ("absurd vlen", _one_struct(vlen=0xFFFF), r"runs past the end of the type section"),
    ("name offset past end", _one_struct(name_off=1 << 20), r"string offset \d+ past the end"),
    ("member type out of range", _one_struct(member_type=99), r"out of range"),
]


@pytest.mark.parametrize(("blob", "pattern"), [c[1:] for c in HANDMADE_BTF],
                         ids=[c[0] for c in HANDMADE_BTF])
def test_handmade_btf_refusals_name_the_problem(blob: bytes, pattern: str) -> None:
    err = H.only_ttcp_errors(H.exercise_btf, blob)
    assert isinstance(err, FormatError) and err.what == "BTF"
    assert re.search(pattern, str(err)), str(err)


@pytest.mark.parametrize("kind", ["typedef", "const", "array"])
def test_reference_cycles_stop_with_an_error(kind: str) -> None:
    btf = _cycle(kind)
    with H.bounded(seconds=5), pytest.raises(FormatError, match=r"loop|deeper|steps"):
        if kind == "array":
            btf.resolve_size(1)
        else:
            btf.skip_mods_and_typedefs(1)


def test_core_refusals_name_the_relocation() -> None:
    locals_, targets = H.core_btfs()
    local = Btf.parse(locals_[0])
    resolver = CoreResolver(local, Btf.parse(targets[0]))
    sock = local.first_id("sock", KIND_STRUCT)
    assert sock is not None
    cases = [
        (CoreRelo(0, 999, 0, 0, "0:0", 3), r"relo #3 .*type id 999 out of range"),
        (CoreRelo(8, sock, 0, 42, "0:0", 0), r"unknown relocation kind 42"),
        (CoreRelo(0, sock, 0, 0, "0:9", 1), r"relo #1 .*member index 9 out of range"),
        (CoreRelo(0, sock, 0, 0, "x", 0), r"no number"),
        (CoreRelo(0, sock, 0, 8, "0:1", 0), r"needs access string '0'"),
        (CoreRelo(0, 1, 0, 0, "0:0", 0), r"lands in \[1\] int int, not a struct"),
    ]
    for relo, pattern in cases:
        with pytest.raises(CoreRelocationError, match=pattern):
            resolver.resolve(relo)


def test_ext_refusals_name_the_part() -> None:
    b = BtfBuilder()
    b.add_int("int", 4)
    ext = BtfExtBuilder(b)
    ext.add_func_info("socket", 0, 1)
    blob = bytearray(ext.build())
    btf = Btf.parse(b.build())
    bad_count = bytearray(blob)
    struct.pack_into("<I", bad_count, 32 + 8, 0xFFFFFFF)  # num_info of the first block
    with pytest.raises(FormatError, match=r"func_info: block at offset \d+ claims"):
        BtfExt.parse(bytes(bad_count), btf)
    bad_name = bytearray(blob)
    struct.pack_into("<I", bad_name, 32 + 4, 1 << 20)
    with pytest.raises(FormatError, match=r"func_info: section name: string offset"):
        BtfExt.parse(bytes(bad_name), btf)


# ---- the corpus: every input that ever broke a parser ----------------------------------------------


def test_corpus_is_not_empty() -> None:
    assert len(corpus_files()) >= 3, "tests/support/fuzz_corpus lost its regression inputs"
