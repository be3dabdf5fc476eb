"""Hostile input for the pure parsers: ELF, BTF, .BTF.ext, CO-RE, map specs, linker.

Property: whatever the bytes, ttcp either accepts them or raises a TtcpError
(FormatError / CoreRelocationError) whose message names the problem — never
another exception, never a hang (hard SIGALRM deadline per input), never an
absurd allocation (tracemalloc peak per input). Inputs are seeded from the
shipped object, the test objects and hand-made BTF, then truncated,
bit-flipped and rewritten field by field.

The number of examples per test comes from TTCP_FUZZ_EXAMPLES: small in the
default suite, 20000 under `make fuzz`. Inputs that ever broke a parser live
in tests/fuzz_corpus/ and are replayed on every run.
"""

from __future__ import annotations

import functools
import os
import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import hostile as H
from tests.btf_builder import BtfBuilder, BtfExtBuilder
from ttcp.errors import CoreRelocationError, FormatError, TtcpError
from ttcp.obj import elf as elf_object
from ttcp.obj.btf import KIND_STRUCT, Btf
from ttcp.obj.btf_ext import BtfExt, CoreRelo
from ttcp.obj.core import CoreResolver
from ttcp.obj.elf import read_object

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("TTCP_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@functools.cache
def object_seeds() -> tuple[bytes, ...]:
    """The shipped object and the two test objects (subprograms, CO-RE kinds)."""
    from tests.objects import compile_bpf  # clang: only when an object test runs

    return (H.shipped(), compile_bpf("subprogs.bpf.c").read_bytes(),
            compile_bpf("core_kinds.bpf.c").read_bytes())


# ---- mutation -----------------------------------------------------------------------------

# Weighted: structured field rewrites reach the deep stages; framing damage
# (truncation, shifting insertions and deletions) mostly stops at the header.
_OPS = ("field",) * 6 + ("word",) * 3 + ("flip",) * 2 + ("byte", "truncate", "copy", "zero",
                                                          "insert", "delete")


def _value(d: st.DataObject, width: int, original: int) -> int:
    mask = (1 << (8 * width)) - 1
    choice = d.draw(st.sampled_from(("interesting", "near", "random")))
    if choice == "interesting":
        return d.draw(st.sampled_from(H.INTERESTING)) & mask
    if choice == "near":
        return (original + d.draw(st.integers(-64, 64))) & mask
    return d.draw(st.integers(0, mask))


def mutate(d: st.DataObject, seed: bytes, fields: tuple[tuple[int, int], ...],
           regions: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Apply 1-8 mutations. `fields` are (offset, width) spots that matter
    most; `regions` are (start, end) byte ranges (e.g. one ELF section) that
    a mutation may be confined to, so damage lands past the outer framing.
    Positions come from a seeded Random (uniform, still shrinkable):
    hypothesis' own integers would pile up at offset 0, the magic number."""
    buf = bytearray(seed)
    rnd = d.draw(st.randoms(use_true_random=False), label="positions")
    for _ in range(d.draw(st.integers(1, 8), label="mutations")):
        if not buf:
            break
        lo, hi = 0, len(buf)
        if regions and rnd.random() < 0.5:
            lo, hi = rnd.choice(regions)
            lo, hi = min(lo, len(buf) - 1), max(min(hi, len(buf)), min(lo, len(buf) - 1) + 1)
        pos = rnd.randrange(lo, hi)
        op = d.draw(st.sampled_from(_OPS))
        if op == "field" and fields:
            off, width = rnd.choice(fields)
            if off + width <= len(buf):
                original = int.from_bytes(buf[off:off + width], "little")
                buf[off:off + width] = _value(d, width, original).to_bytes(width, "little")
        elif op == "word":
            pos &= ~3
            if pos + 4 <= len(buf):
                original = int.from_bytes(buf[pos:pos + 4], "little")
                buf[pos:pos + 4] = _value(d, 4, original).to_bytes(4, "little")
        elif op == "flip":
            buf[pos] ^= 1 << rnd.randrange(8)
        elif op == "byte":
            buf[pos] = rnd.randrange(256)
        elif op == "truncate":
            del buf[pos:]
        elif op == "copy":  # overlap one region with another
            src = rnd.randrange(len(buf))
            chunk = buf[src:src + rnd.randrange(1, 257)]
            buf[pos:pos + len(chunk)] = chunk
        elif op == "zero":
            end = min(len(buf), pos + rnd.randrange(1, 513))
            buf[pos:end] = bytes(end - pos)
        elif op == "insert":
            buf[pos:pos] = rnd.randbytes(rnd.randrange(1, 33))
        elif op == "delete":
            del buf[pos:pos + rnd.randrange(1, 33)]
    return bytes(buf)


def _regions(obj: bytes) -> tuple[tuple[int, int], ...]:
    """Each section's bytes in a seed object."""
    return tuple((off, off + size) for off, size in H.sections_of(obj).values() if size)


# ---- ELF objects: reader, map specs, linker, CO-RE, func/line info ------------------------------


@pytest.mark.kernel  # reads /sys/kernel/btf/vmlinux, the CO-RE target (root only)
@FUZZ
@given(st.data())
def test_mutated_objects_raise_only_ttcp_errors(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(object_seeds()), label="seed")
    blob = mutate(data, seed, H.elf_fields(seed), _regions(seed))
    H.only_ttcp_errors(H.exercise_object, blob, H.vmlinux())


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

    monkeypatch.setattr(elf_object, "_read_relocs", bug)
    with pytest.raises(KeyError, match="a ttcp bug"):
        read_object(seed)


# ---- BTF ----------------------------------------------------------------------------------------


@functools.cache
def btf_seeds() -> tuple[bytes, ...]:
    return (H.section_bytes(H.shipped(), ".BTF"), *H.builder_blobs())


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


# ---- CO-RE -----------------------------------------------------------------------------------------

_ACCESS = st.one_of(
    st.lists(st.integers(0, 5), min_size=1, max_size=5).map(lambda xs: ":".join(map(str, [0, *xs[1:]]))),
    st.lists(st.integers(0, 70), min_size=1, max_size=8).map(lambda xs: ":".join(map(str, xs))),
    st.sampled_from(("0", "0:0", "0:1:2", "1", "", ":", "0:", "::", " 1", "+1", "-1", "0:-1",
                     "2147483648", "99999999999999999999", "0" + ":0" * 70, "0:1\x00", "0:a")),
    st.text(max_size=12),
)


@functools.cache
def core_locals() -> tuple[tuple[bytes, tuple[int, ...]], ...]:
    """Local BTF seeds with the ids worth relocating against (named types first)."""
    out = []
    for blob in (*H.core_btfs()[0], *btf_seeds()[:2]):
        btf = Btf.parse(blob)
        named = tuple(t for t in range(1, len(btf)) if btf.type(t).name)
        out.append((blob, named))
    return tuple(out)


@functools.cache
def type_fields(blob: bytes) -> tuple[tuple[int, int], ...]:
    """The type-record words of a BTF blob, without its header: CO-RE fuzzing
    wants damaged types, not blobs refused at the header."""
    return tuple(f for f in H.btf_fields(blob) if f[0] >= 24)


@pytest.mark.kernel  # some cases resolve against /sys/kernel/btf/vmlinux
@FUZZ
@given(st.data())
def test_random_relocations_raise_only_ttcp_errors(data: st.DataObject) -> None:
    local, named = data.draw(st.sampled_from(core_locals()), label="local")
    target = data.draw(st.sampled_from([None, *H.core_btfs()[1], *btf_seeds()[1:3]]), label="target")
    if data.draw(st.integers(0, 3), label="mutate local") == 0:
        local = mutate(data, local, type_fields(local))
    if target is not None and data.draw(st.integers(0, 2), label="mutate target") == 0:
        target = mutate(data, target, type_fields(target))
    type_ids = st.one_of(st.sampled_from(named), st.sampled_from(named), st.integers(0, 40),
                         st.sampled_from(H.INTERESTING))
    kinds = st.sampled_from(tuple(range(13)) * 3 + (-1, 13, 14, 1 << 31))
    relos = tuple(data.draw(st.lists(st.tuples(type_ids, kinds, _ACCESS), min_size=1, max_size=8),
                            label="relos"))
    code = data.draw(st.one_of(st.just(H.CORE_INSNS),
                               st.binary(max_size=48).map(lambda b: b[:len(b) // 8 * 8])))
    err = H.only_ttcp_errors(H.exercise_core, H.CoreCase(local, target, relos, code))
    assert err is None or isinstance(err, FormatError)  # a damaged BTF blob, refused whole


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


def _patched(data: bytes, off: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, off, value)
    return bytes(out)


def _shdr(data: bytes, name: str) -> int:
    """File offset of section `name`'s header in a seed object."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    names = list(H.sections_of(data))
    return shoff + 64 * names.index(name)


def handmade_objects() -> list[tuple[str, bytes, str | None]]:
    """(name, object, pattern its refusal must match; None: must be accepted)."""
    data = H.shipped()
    btf_off, btf_size = H.sections_of(data)[".BTF"]
    text = _shdr(data, "tp_btf/tcp_destroy_sock")
    return [
        ("bad magic", b"\x7fELG" + data[4:], r"ELF"),
        ("32-bit", _patched(data, 4, "<B", 1), r"ELF"),
        ("not BPF", _patched(data, 0x12, "<H", 62), r"not a BPF object"),
        ("odd-sized program", _patched(data, text + 32, "<Q", 2111), r"whole number of instructions"),
        ("program past the end", _patched(data, text + 24, "<Q", len(data) - 8), r"ELF"),
        ("section headers past the end", _patched(data, 0x28, "<Q", 1 << 40), r"ELF"),
        ("BTF bad magic", _patched(data, btf_off, "<H", 0x1234), r"BTF: bad magic 0x1234"),
        ("BTF strings past end", _patched(data, btf_off + 20, "<I", btf_size * 4),
         r"string section .* ends past"),
        ("section name offset past the end", _patched(data, _shdr(data, ".maps"), "<I", 1 << 30),
         r"ELF"),
        # A program section of size 0 holds no program: the others still load.
        ("zero-sized program", _patched(data, text + 32, "<Q", 0), None),
        # Program bytes read from inside .BTF: its relocations no longer land on ldimm64s.
        ("program overlaps .BTF", _patched(data, text + 24, "<Q", btf_off),
         r"unsupported relocation type 1 at insn \d+"),
    ]


@pytest.mark.kernel  # CO-RE against /sys/kernel/btf/vmlinux when the object parses
@pytest.mark.parametrize("case", handmade_objects(), ids=lambda c: c[0])
def test_handmade_objects_refused_or_accepted_cleanly(case: tuple[str, bytes, str | None]) -> None:
    _, blob, pattern = case
    err = H.only_ttcp_errors(H.exercise_object, blob, H.vmlinux())
    if pattern is None:
        assert err is None or isinstance(err, CoreRelocationError), err
    else:
        assert err is not None and re.search(pattern, str(err)), err


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


def corpus_files() -> list[Path]:
    return sorted(p for p in H.CORPUS.glob("*/*") if p.is_file() and p.suffix != ".md")


@pytest.mark.kernel  # ELF inputs resolve CO-RE against /sys/kernel/btf/vmlinux
@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_replays_cleanly(path: Path) -> None:
    harness = H.HARNESSES[path.parent.name]
    err = H.only_ttcp_errors(harness, path.read_bytes())
    assert err is None or isinstance(err, TtcpError)


def test_corpus_is_not_empty() -> None:
    assert len(corpus_files()) >= 3, "tests/fuzz_corpus lost its regression inputs"
