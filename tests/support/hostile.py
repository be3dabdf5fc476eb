"""Hostile inputs for ttcp's pure parsers: harnesses, mutators and guards.

Shared by the property-based fuzz tests (tests/unit/test_fuzz_parsers.py) and the
replay of committed inputs (tests/support/fuzz_corpus/). A harness pushes one input
through everything a parser offers; the contract under test is that the only
exception ever leaving ttcp is a TtcpError whose message names the problem,
within a hard time limit and without allocating absurd amounts of memory.
"""

from __future__ import annotations

import contextlib
import functools
import io
import signal
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from tests.support import paths
from tests.support.btf_builder import BtfBuilder, BtfExtBuilder
from ttcp.errors import TtcpError
from ttcp.obj import asm
from ttcp.obj import btf as B
from ttcp.obj.asm import insn
from ttcp.obj.btf import Btf
from ttcp.obj.btf_ext import BtfExt, CoreRelo, encode_func_info, encode_line_info
from ttcp.obj.btf_fixup import fixed_for_kernel
from ttcp.obj.core import CoreResolver, insn_class_label, patch_insn
from ttcp.obj.core.relo import Poison, SpecError
from ttcp.obj.spec import CollectionSpec

SHIPPED = paths.SHIPPED
CORPUS = paths.FUZZ_CORPUS
VMLINUX = Path("/sys/kernel/btf/vmlinux")

HARD_DEADLINE_S = 10.0  # per input; generous for a loaded 2-vCPU machine
MAX_ALLOC_BYTES = 96 << 20  # Python allocations per input (seeds are ~20 KB)

# Values that break naive bounds checks: zero, one, sign and width edges.
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 12, 16, 24, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000,
               0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF,
               1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


class Hang(BaseException):
    """The input took longer than the hard deadline (BaseException: nothing
    in ttcp may swallow it)."""


class Blowup(AssertionError):
    """The input made a parser allocate far more than its size warrants."""


@contextlib.contextmanager
def bounded(seconds: float = HARD_DEADLINE_S, max_bytes: int = MAX_ALLOC_BYTES) -> Iterator[None]:
    """Run the body under a SIGALRM deadline and a tracemalloc peak limit.

    The alarm interrupts any pure-Python loop, so a hang fails the test
    instead of stalling the suite; the peak check catches inputs that make
    a parser allocate gigabytes before it notices the input is bad.
    """
    def expire(signum: int, frame: object) -> None:
        raise Hang(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracemalloc.start()
    failed = True
    try:
        yield
        failed = False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if not failed and peak > max_bytes:
        raise Blowup(f"peak allocation {peak >> 20} MiB for one input (limit {max_bytes >> 20} MiB)")


def only_ttcp_errors(harness: Callable[..., object], *args: object) -> TtcpError | None:
    """Run `harness(*args)` bounded; None if it accepted the input, the TtcpError
    if it refused it. Any other exception (and a hang) propagates: a bug."""
    try:
        with bounded():
            harness(*args)
    except TtcpError as err:
        check_message(err)
        return err
    return None


def check_message(err: TtcpError) -> None:
    """A refusal must say what is wrong in words, not leak an internal failure (nor
    ttcp.obj.core's own signals, which leave it as a CoreRelocationError)."""
    assert not isinstance(err, (SpecError, Poison)), f"{type(err).__name__} left ttcp.obj.core: {err}"
    text = str(err)
    assert len(text.strip()) >= 8, f"uninformative error {text!r}"
    for internal in ("MemoryError", "RecursionError", "Traceback"):
        assert internal not in text, f"{internal} surfaced as {type(err).__name__}: {text}"


# ---- harnesses: one input through everything a parser offers ---------------------------------


def referenced_ids(t: B.BtfType) -> list[int]:
    """Every type id a type's record names (libbpf's btf_type_visit_type_ids)."""
    if isinstance(t, B.Array):
        return [t.elem_type, t.index_type]
    if isinstance(t, B.Composite):
        return [m.type for m in t.members]
    if isinstance(t, B.FuncProto):
        return [t.type, *(p.type for p in t.params)]
    if isinstance(t, B.Datasec):
        return [v.type for v in t.vars]
    if isinstance(t, B.Reference):  # ptr, typedef, qualifiers, func, var, decl_tag
        return [t.type]
    return []


def walk_btf(btf: Btf) -> None:
    """Decode every type and call every helper on it; TtcpError is the only way out."""
    count = len(btf)
    for tid in range(count):
        t = btf.type(tid)
        t.describe()
        btf.kind_of(tid)
        for ref in referenced_ids(t):
            with contextlib.suppress(TtcpError):
                btf.type(ref)
        with contextlib.suppress(TtcpError):
            btf.skip_mods_and_typedefs(tid)
        with contextlib.suppress(TtcpError):
            btf.resolve_size(tid)
        if t.name:
            found = btf.ids_by_name(t.name)
            assert found == sorted(found) and all(0 < f < count for f in found)
            btf.ids_by_essential_name(t.name)
    btf.ids_by_name("sock")
    btf.first_id("int", B.KIND_INT)
    btf.func_by_name("tcp_close")


def exercise_btf(blob: bytes) -> None:
    """Parse a BTF blob (alone, then as split BTF on top of itself) and walk it."""
    btf = Btf.parse(blob)
    walk_btf(btf)
    by_kind: dict[int, set[str]] = {B.KIND_DATASEC: set(), B.KIND_VAR: set()}
    for tid in range(len(btf)):
        t = btf.type(tid)
        by_kind.get(t.kind, set()).add(t.name)
    symbols = {name: 8 * n for n, name in enumerate(sorted(by_kind[B.KIND_VAR]))}
    fixed_for_kernel(btf, {n: 64 for n in by_kind[B.KIND_DATASEC]}, symbols)
    split = Btf.parse(blob, base=btf)
    walk_btf(split)


def exercise_btf_ext(ext_blob: bytes, btf_blob: bytes) -> None:
    """Parse .BTF.ext against its BTF and encode every record for PROG_LOAD."""
    btf = Btf.parse(btf_blob)
    ext = BtfExt.parse(ext_blob, btf)
    for records in ext.func_info.values():
        encode_func_info(records, 0, ext.func_info_rec_size)
    for records in ext.line_info.values():
        encode_line_info(records, 0, ext.line_info_rec_size)
    for relos in ext.core_relos.values():
        for relo in relos:
            assert relo.insn_idx >= 0


def exercise_object(data: bytes, target: Btf) -> None:
    """Everything the loader does to an object before the first bpf(2) call:
    read the ELF, parse BTF and .BTF.ext, build map specs, link every
    program, apply its CO-RE relocations against `target`, encode its
    func/line info, and prepare the BTF blob the kernel would get
    (ttcp.obj.spec.CollectionSpec, as ttcp.elf_loader.Collection drives it)."""
    spec = CollectionSpec(data)
    walk_btf(spec.btf)
    for name, m in spec.maps.items():
        assert m.kernel_name == m.kernel_name[:15]
        spec.set_max_entries(name, 4096)
    spec.kernel_btf()
    resolver = spec.core_resolver(target)
    for name in spec.program_names():
        image = spec.link(name)
        spec.relocate(image, resolver)
        assert len(image.insns) % 8 == 0
        image.set_map_fds({ref.map_name: 3 for ref in image.map_refs})
        spec.btf_infos(image)


@dataclass(frozen=True)
class CoreCase:
    """One CO-RE relocation against a pair of BTFs, then patched into code."""

    local: bytes
    target: bytes | None  # None: the running kernel's BTF
    relos: tuple[tuple[int, int, str], ...]  # (type_id, kind, access string)
    insns: bytes


def exercise_core(case: CoreCase) -> None:
    """Resolve each relocation and patch it into a copy of `insns` at every slot.

    A refused relocation (TtcpError) must name its problem; the next one is
    still tried, so one bad record does not hide the rest of the case."""
    local = Btf.parse(case.local)
    target = vmlinux() if case.target is None else Btf.parse(case.target)
    resolver = CoreResolver(local, target)
    for index, (type_id, kind, access) in enumerate(case.relos):
        relo = CoreRelo(0, type_id, 0, kind, access, index)
        try:
            result = resolver.resolve(relo)
        except TtcpError as err:
            check_message(err)
            continue
        assert result.poisoned == (result.new_value is None)
        count = len(case.insns) // 8
        for at in range(-1, count + 1):
            code = bytearray(case.insns)
            insn_class_label(code, at)
            try:
                old, new = patch_insn(code, at, result)
            except TtcpError as err:
                check_message(err)
                continue
            assert len(code) == len(case.insns)
            assert new is None or new == result.new_value
            assert old >= 0


HARNESSES: dict[str, Callable[[bytes], None]] = {}


def _replay_object(data: bytes) -> None:
    exercise_object(data, vmlinux())


def _replay_btf_ext(data: bytes) -> None:
    # Corpus layout: u32 length of the BTF blob, the BTF blob, then .BTF.ext.
    (n,) = struct.unpack_from("<I", data)
    exercise_btf_ext(data[4 + n:], data[4:4 + n])


HARNESSES.update({"elf": _replay_object, "btf": exercise_btf, "btf_ext": _replay_btf_ext})


def pack_btf_ext_case(btf_blob: bytes, ext_blob: bytes) -> bytes:
    """One corpus file for the btf_ext harness."""
    return struct.pack("<I", len(btf_blob)) + btf_blob + ext_blob


# ---- seeds -----------------------------------------------------------------------------------


@functools.cache
def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once (never mutated: a CO-RE target)."""
    return Btf.parse(VMLINUX.read_bytes())


@functools.cache
def shipped() -> bytes:
    return SHIPPED.read_bytes()


@functools.cache
def sections_of(data: bytes) -> dict[str, tuple[int, int]]:
    """Section name -> (file offset, size) of a well-formed seed object."""
    elf = ELFFile(_stream(data))
    return {s.name: (s["sh_offset"], s["sh_size"]) for s in elf.iter_sections()}


def section_bytes(data: bytes, name: str) -> bytes:
    off, size = sections_of(data)[name]
    return data[off:off + size]


def _stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


@functools.cache
def elf_fields(data: bytes) -> tuple[tuple[int, int], ...]:
    """(offset, width) of every header, section-header, symbol and relocation
    field of a seed object, plus every BTF/.BTF.ext header and type-record
    word inside it: where structured mutations hurt the most."""
    out: list[tuple[int, int]] = [(0x10, 2), (0x12, 2), (0x28, 8), (0x3A, 2), (0x3C, 2), (0x3E, 2),
                                  (0x04, 1), (0x05, 1)]
    elf = ELFFile(_stream(data))
    shoff = elf["e_shoff"]
    for i, sec in enumerate(elf.iter_sections()):
        base = shoff + 64 * i
        out += [(base, 4), (base + 4, 4), (base + 8, 8), (base + 24, 8), (base + 32, 8),
                (base + 40, 4), (base + 44, 4), (base + 56, 8)]
        off = sec["sh_offset"]
        if isinstance(sec, SymbolTableSection):
            for j in range(sec.num_symbols()):
                s = off + 24 * j
                out += [(s, 4), (s + 4, 1), (s + 6, 2), (s + 8, 8), (s + 16, 8)]
        elif isinstance(sec, RelocationSection):
            for j in range(sec.num_relocations()):
                r = off + 16 * j
                out += [(r, 8), (r + 8, 4), (r + 12, 4)]
        elif sec.name == ".BTF":
            out += [(off + f, w) for f, w in btf_fields(section_bytes(data, ".BTF"))]
        elif sec.name == ".BTF.ext":
            out += [(off + f, 4) for f in range(4, min(sec["sh_size"], 96), 4)]
    return tuple(out)


@functools.cache
def btf_fields(blob: bytes) -> tuple[tuple[int, int], ...]:
    """(offset, width) of the header fields and of every 4-byte word of every
    type record of a well-formed BTF blob (names, info, sizes, ids, vlen)."""
    out = [(4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (2, 1), (3, 1)]
    hdr_len, type_off, type_len = struct.unpack_from("<III", blob, 4)[0], *struct.unpack_from(
        "<II", blob, 8)
    start = hdr_len + type_off
    out += [(p, 4) for p in range(start, start + type_len, 4)]
    return tuple(out)


def builder_blobs() -> list[bytes]:
    """Hand-made BTF: every kind, plus the shapes that trap naive walkers
    (reference cycles, self-containing types, deep chains, empty names)."""
    blobs = []
    b = BtfBuilder()
    i = b.add_int("int", 4, signed=True)
    u8 = b.add_int("unsigned char", 1, encoding=B.INT_CHAR)
    p = b.add_ptr(i)
    arr = b.add_array(i, 7, index_type=i)
    pair = b.add_struct("pair", [("a", i, 0), ("b", p, 64)], 16)
    b.add_struct("bits", [("x", i, 3, 5), ("y", i, 8)], 4)
    b.add_union("u", [("i", i, 0), ("c", u8, 0)], 4)
    b.add_enum("color", [("RED", 0), ("BLUE", 0xFFFFFFFF)])
    b.add_fwd("later", union=True)
    td = b.add_typedef("int_t", i)
    b.add_const(b.add_volatile(td))
    b.add_restrict(p)
    proto = b.add_func_proto(i, [("x", i), ("", 0)])
    b.add_func("tcp_close", proto)
    var = b.add_var("counter", i)
    b.add_datasec(".data", [(var, 8, 4)], size=16)
    b.add_float("double", 8)
    b.add_decl_tag("tag", pair, component_idx=1)
    b.add_type_tag("user", i)
    b.add_enum64("big", [("HUGE", 1 << 40)])
    b.add_struct("holder", [("arr", arr, 0)], 28)
    blobs.append(b.build())

    c = BtfBuilder()  # cycles: typedef <-> typedef, const -> const, ptr -> ptr, array of itself
    c.add_typedef("a", 2)
    c.add_typedef("b", 1)
    c.add_const(3)
    c.add_ptr(4)
    c.add_array(5, 3)
    c.add_struct("self", [("me", 6, 0), ("arr", 5, 0)], 8)
    c.add_var("v", 7)
    c.add_func_proto(8, [("p", 8)])
    c.add_func("f", 9)
    c.add_datasec(".maps", [(10, 0, 4)])
    blobs.append(c.build())

    d = BtfBuilder()  # a 60-deep modifier chain and a 40-deep array nest
    prev = d.add_int("long", 8)
    for _ in range(60):
        prev = d.add_const(prev)
    nest = d.add_int("char", 1)
    for _ in range(40):
        nest = d.add_array(nest, 2)
    d.add_struct("deep", [("m", prev, 0), ("n", nest, 64)], 16)
    blobs.append(d.build())
    return blobs


def core_btfs() -> tuple[list[bytes], list[bytes]]:
    """(local, target) BTF seeds with kernel-like names, flavors, anonymous
    members, bitfields and enums, so random relocations find candidates."""
    local = BtfBuilder()
    i = local.add_int("int", 4, signed=True)
    u16 = local.add_int("unsigned short", 2)
    u64 = local.add_int("unsigned long long", 8)
    common = local.add_struct("sock_common", [("skc_family", u16, 0), ("skc_daddr", i, 32)], 8)
    arr = local.add_array(u64, 4)
    sock = local.add_struct("sock", [("__sk_common", common, 0), ("flags", i, 64, 3),
                                     ("cnt", arr, 128), ("tail", local.add_array(i, 0), 384)], 48)
    local.add_struct("sock___v2", [("__sk_common", common, 0)], 8)
    local.add_ptr(sock)
    local.add_enum("state", [("TCP_ESTABLISHED", 1), ("TCP_CLOSE", 7)])
    local.add_enum64("big", [("HUGE", 1 << 40)], signed=True)
    local.add_typedef("sock_t", local.add_const(sock))
    local.add_union("u", [("a", i, 0), ("b", u64, 0)], 8)
    local.add_func_proto(i, [("sk", sock)])

    target = BtfBuilder()
    ti = target.add_int("int", 4, signed=True)
    tu16 = target.add_int("unsigned short", 2)
    tu32 = target.add_int("unsigned int", 4)
    anon = target.add_struct("", [("skc_family", tu16, 16), ("skc_daddr", tu32, 64)], 12)
    tcommon = target.add_struct("sock_common", [("", anon, 0), ("pad", ti, 96)], 16)
    target.add_struct("sock", [("pad", ti, 0), ("__sk_common", tcommon, 64),
                               ("flags", ti, 195, 5), ("cnt", target.add_array(tu32, 8), 224)], 72)
    target.add_struct("sock___old", [("__sk_common", tcommon, 32)], 24)
    target.add_enum("state___x", [("TCP_CLOSE", 8), ("TCP_ESTABLISHED", 2)])
    target.add_enum64("big", [("HUGE", -5)], signed=True)
    loop = target.add_struct("loopy", [("", 0, 0)], 4)
    target.add_typedef("sock_t", target.add_const(loop))
    return [local.build()], [target.build()]


def btf_ext_seeds() -> list[tuple[bytes, bytes]]:
    """(BTF, .BTF.ext) pairs: the shipped object's and a hand-made one."""
    seeds = [(section_bytes(shipped(), ".BTF"), section_bytes(shipped(), ".BTF.ext"))]
    b = BtfBuilder()
    i = b.add_int("int", 4)
    s = b.add_struct("s", [("a", i, 0)], 4)
    ext = BtfExtBuilder(b)
    ext.add_func_info("socket", 0, 1, extra=b"\0" * 4)
    ext.add_func_info("socket", 16, 1, extra=b"\0" * 4)
    ext.add_line_info("socket", 0, "a.c", 3, 4)
    ext.add_line_info(".text", 8, "b.c", 9, 1)
    ext.add_core_relo("socket", 8, s, "0:0", 0)
    ext.add_core_relo("socket", 24, s, "0", 8)
    ext_blob = ext.build()
    seeds.append((b.build(), ext_blob))
    return seeds


CORE_INSNS = (
    asm.ldx(asm.SIZE_W, 1, 2, 4) + asm.ldx(asm.SIZE_DW, 1, 2, 0)
    + asm.add_imm(1, 4) + insn(asm.CLASS_ALU64 | asm.SOURCE_X, 1, 2)  # add64 imm, add64 reg
    + asm.ld_imm64(1, 1)  # two halves
    + insn(asm.CLASS_STX | 0x60 | asm.SIZE_W, 10, 1, off=-8) + asm.exit_()  # stxw (BPF_MEM)
)
