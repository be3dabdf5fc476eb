"""How the fuzz tests make hostile input: settings, seeds and mutations.

The number of examples per test comes from TTCP_FUZZ_EXAMPLES: small in the
default suite, 20000 under `make fuzz`. Seeds are the shipped object, the test
objects and hand-made BTF; a mutation truncates, flips and rewrites them field
by field (tests/support/hostile.py holds the harnesses that run them).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support import hostile as H

EXAMPLES = int(os.environ.get("TTCP_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@functools.cache
def object_seeds() -> tuple[bytes, ...]:
    """The shipped object and the two test objects (subprograms, CO-RE kinds)."""
    from tests.support.objects import compile_bpf  # clang: only when an object test runs

    return (H.shipped(), compile_bpf("subprogs.bpf.c").read_bytes(),
            compile_bpf("core_kinds.bpf.c").read_bytes())


@functools.cache
def btf_seeds() -> tuple[bytes, ...]:
    return (H.section_bytes(H.shipped(), ".BTF"), *H.builder_blobs())


# Weighted: structured field rewrites reach the deep stages; framing damage
# (truncation, shifting insertions and deletions) mostly stops at the header.
_OPS = ("field",) * 6 + ("word",) * 3 + ("flip",) * 2 + ("byte", "truncate", "copy", "zero",
                                                          "insert", "delete")


def field_value(d: st.DataObject, width: int, original: int) -> int:
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
                buf[off:off + width] = field_value(d, width, original).to_bytes(width, "little")
        elif op == "word":
            pos &= ~3
            if pos + 4 <= len(buf):
                original = int.from_bytes(buf[pos:pos + 4], "little")
                buf[pos:pos + 4] = field_value(d, 4, original).to_bytes(4, "little")
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


def section_regions(obj: bytes) -> tuple[tuple[int, int], ...]:
    """Each section's bytes in a seed object."""
    return tuple((off, off + size) for off, size in H.sections_of(obj).values() if size)


def corpus_files() -> list[Path]:
    """Every input that ever broke a parser, under tests/support/fuzz_corpus/."""
    return sorted(p for p in H.CORPUS.glob("*/*") if p.is_file() and p.suffix != ".md")
