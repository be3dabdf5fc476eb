"""Hostile objects run whole, CO-RE included, against the running kernel's BTF:
mutated objects, random relocations, hand-made objects and the corpus of
inputs that once broke a parser. Whatever the bytes, ttcp accepts them or
raises a TtcpError naming the problem (tests/unit/test_fuzz_parsers.py has
the parsers alone, on bytes)."""

from __future__ import annotations

import functools
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import hostile as H
from tests.support.mutation import FUZZ, btf_seeds, corpus_files, mutate, object_seeds, section_regions
from ttcp.errors import CoreRelocationError, FormatError, TtcpError
from ttcp.obj.btf import Btf

pytestmark = [pytest.mark.fuzz, pytest.mark.kernel]  # the CO-RE target is /sys/kernel/btf/vmlinux


@FUZZ
@given(st.data())
def test_mutated_objects_raise_only_ttcp_errors(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(object_seeds()), label="seed")
    blob = mutate(data, seed, H.elf_fields(seed), section_regions(seed))
    H.only_ttcp_errors(H.exercise_object, blob, H.vmlinux())


# ---- CO-RE ----------------------------------------------------------------------------------------

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


# ---- hand-crafted objects --------------------------------------------------------------------------


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


@pytest.mark.parametrize("case", handmade_objects(), ids=lambda c: c[0])
def test_handmade_objects_refused_or_accepted_cleanly(case: tuple[str, bytes, str | None]) -> None:
    _, blob, pattern = case
    err = H.only_ttcp_errors(H.exercise_object, blob, H.vmlinux())
    if pattern is None:
        assert err is None or isinstance(err, CoreRelocationError), err
    else:
        assert err is not None and re.search(pattern, str(err)), err


# ---- the corpus: every input that ever broke a parser ----------------------------------------------


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_replays_cleanly(path: Path) -> None:
    harness = H.HARNESSES[path.parent.name]
    err = H.only_ttcp_errors(harness, path.read_bytes())
    assert err is None or isinstance(err, TtcpError)
