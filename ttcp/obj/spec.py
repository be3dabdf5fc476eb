"""What a BPF object says, decided without the kernel (cilium/ebpf's CollectionSpec).

Its programs, its maps (max entries may be overridden before anything is
created), its BTF and .BTF.ext; a program linked with the subprograms it
calls and its CO-RE relocations decided against a target BTF it is given;
func and line info rebased to the linked program; the object's BTF as the
kernel takes it. Nothing here calls the kernel: ttcp.elf_loader.Collection
loads what a spec describes and owns what the kernel hands back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ttcp.errors import FormatError, TtcpError
from ttcp.obj.asm import INSN_SIZE
from ttcp.obj.btf import KIND_FUNC, KIND_TYPEDEF, Btf
from ttcp.obj.btf_ext import BtfExt, CoreRelo, encode_func_info, encode_line_info
from ttcp.obj.btf_fixup import fixed_for_kernel
from ttcp.obj.core import CoreResolver, patch_insn
from ttcp.obj.elf import BpfObject, Function, read_object
from ttcp.obj.linker import Piece, ProgramImage, link_program
from ttcp.obj.map_specs import MapSpec, map_specs
from ttcp.obj.sections import SectionKind, classify


@dataclass(frozen=True)
class CoreDecision:
    """One CO-RE relocation as applied to one program (the `explain` line)."""

    program: str
    insn: int
    kind: str
    spec: str
    old: int
    new: int | None
    poisoned: bool

    def to_json(self) -> str:
        d = {"program": self.program, "insn": self.insn, "kind": self.kind,
             "spec": self.spec, "old": self.old}
        if self.poisoned:
            d["poisoned"] = True
        else:
            d["new"] = self.new
        return json.dumps(d)


class _Placed(Protocol):
    @property
    def insn_off(self) -> int: ...


R = TypeVar("R", bound=_Placed)


def _within(records_by_section: Mapping[str, Sequence[R]], piece: Piece) -> list[R]:
    """The records of a section that fall inside one placed piece."""
    return [r for r in records_by_section.get(piece.section, ())
            if piece.contains(piece.section, r.insn_off // INSN_SIZE)]


class CollectionSpec:
    """One BPF object, parsed: read from a path or from its bytes."""

    def __init__(self, source: str | bytes) -> None:
        self.obj: BpfObject = read_object(source)
        if self.obj.btf is None:
            raise FormatError("ELF", f"{self.obj.path}: no .BTF section (compile with clang -g)")
        self.btf = Btf.parse(self.obj.btf)
        self.ext = BtfExt.parse(self.obj.btf_ext, self.btf) if self.obj.btf_ext else None
        self.maps: dict[str, MapSpec] = map_specs(self.obj, self.btf)

    @property
    def path(self) -> str:
        return self.obj.path

    def program_names(self) -> list[str]:
        return [f.name for f in self.obj.programs]

    def function(self, name: str) -> Function:
        for f in self.obj.programs:
            if f.name == name:
                return f
        raise TtcpError(f"{self.obj.path}: no program named {name!r} "
                        f"(have: {', '.join(self.program_names()) or 'none'})")

    def kind(self, name: str) -> SectionKind:
        """What a program is and where it attaches, from its section's name."""
        return classify(self.function(name).section)

    def map(self, name: str) -> MapSpec:
        if name not in self.maps:
            raise TtcpError(f"{self.obj.path}: no map named {name!r}")
        return self.maps[name]

    def set_max_entries(self, map_name: str, max_entries: int) -> None:
        """Resize a map before it is created (like a runtime --max-filters)."""
        self.maps[map_name] = self.map(map_name).with_max_entries(max_entries)

    # ---- programs ----

    def link(self, name: str) -> ProgramImage:
        """A program with the subprograms it calls appended; CO-RE still to apply."""
        return link_program(self.obj, self.function(name))

    def _core_relos(self, image: ProgramImage) -> Iterator[tuple[Piece, CoreRelo, int]]:
        """Each CO-RE relocation inside one of the image's pieces, with its section insn."""
        if self.ext is None:
            return
        for piece in image.pieces:
            for relo in self.ext.core_relos.get(piece.section, ()):
                sec_insn = relo.insn_off // INSN_SIZE
                if piece.contains(piece.section, sec_insn):
                    yield piece, relo, sec_insn

    def needs_target(self, image: ProgramImage) -> bool:
        """Whether relocating the image needs a target BTF (it has CO-RE relocations)."""
        return next(self._core_relos(image), None) is not None

    def core_resolver(self, target: Btf) -> CoreResolver:
        """Decides this object's relocations against `target` (keeps what it learns)."""
        return CoreResolver(self.btf, target)

    def relocate(self, image: ProgramImage, resolver: CoreResolver | None) -> list[CoreDecision]:
        """Apply the image's CO-RE relocations in place, as `resolver` decides them
        (None only for an image that needs no target)."""
        decisions = []
        for piece, relo, sec_insn in self._core_relos(image):
            if resolver is None:
                raise TtcpError(f"{self.obj.path}: {image.name} has CO-RE relocations and no target BTF")
            result = resolver.resolve(relo)
            at = piece.to_program(sec_insn)
            old, new = patch_insn(image.insns, at, result)
            decisions.append(CoreDecision(image.name, at, result.kind_name, result.spec,
                                          old, new, result.poisoned))
        return decisions

    def explain(self, target: Btf) -> list[CoreDecision]:
        """Every CO-RE decision for every program against `target`, in program order."""
        resolver = self.core_resolver(target)
        return [d for name in self.program_names() for d in self.relocate(self.link(name), resolver)]

    def btf_infos(self, image: ProgramImage) -> tuple[bytes, int, bytes, int]:
        """func_info and line_info of a linked program, rebased to its pieces, and
        their record sizes (0 with no records)."""
        if self.ext is None:
            return b"", 0, b"", 0
        func, line = bytearray(), bytearray()
        for piece in image.pieces:
            base = piece.start - piece.base  # section index that lands at program 0
            func += encode_func_info(_within(self.ext.func_info, piece), base,
                                     self.ext.func_info_rec_size)
            line += encode_line_info(_within(self.ext.line_info, piece), base,
                                     self.ext.line_info_rec_size)
        return (bytes(func), self.ext.func_info_rec_size if func else 0,
                bytes(line), self.ext.line_info_rec_size if line else 0)

    def kernel_btf(self) -> bytes:
        """The object's BTF as BTF_LOAD takes it (ttcp.obj.btf_fixup)."""
        return fixed_for_kernel(self.btf, self.obj.section_sizes, self.obj.symbol_offsets)


def attach_btf_id(kind: SectionKind, target: Btf) -> int:
    """The kernel BTF id a program of `kind` attaches to (0: none): a FUNC for
    fentry/fexit, the btf_trace_* TYPEDEF for tp_btf."""
    name = kind.btf_target_name
    if name is None:
        return 0
    ids = target.ids_by_name(name, KIND_TYPEDEF if kind.style == "tp_btf" else KIND_FUNC)
    if not ids:
        raise TtcpError(f"{kind.style}: kernel BTF has no {name!r} "
                        "(this kernel lacks that function or tracepoint)")
    return ids[0]
