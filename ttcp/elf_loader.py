"""Load a BPF ELF object into the kernel: BTF, maps, CO-RE, programs.

The pure steps (ELF reading, linking, map specs, CO-RE decisions) come from
their own modules; this one orders them and owns every file descriptor the
kernel hands back, so close() releases all of it whatever failed midway.

    python -m ttcp.elf_loader OBJ --explain   # CO-RE decisions as JSON lines
    python -m ttcp.elf_loader OBJ --load      # load every program, attach none
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import mmap
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, TypeVar

from ttcp import syscalls
from ttcp.errors import BpfError, FormatError, TtcpError
from ttcp.kernel import features
from ttcp.obj.asm import INSN_SIZE
from ttcp.obj.btf import KIND_FUNC, KIND_TYPEDEF, Btf
from ttcp.obj.btf_ext import BtfExt, encode_func_info, encode_line_info
from ttcp.obj.btf_fixup import fixed_for_kernel
from ttcp.obj.core import CoreResolver, patch_insn
from ttcp.obj.elf import BpfObject, Function, read_object
from ttcp.obj.linker import Piece, ProgramImage, link_program
from ttcp.obj.map_compat import IncompatibleMapError, MapShape, differences
from ttcp.obj.map_specs import MapSpec, map_specs
from ttcp.obj.sections import SectionKind, classify

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
log = logging.getLogger("ttcp")


@dataclass(frozen=True)
class CoreDecision:
    """One CO-RE relocation as applied to one program (the --explain line)."""

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


@dataclass(frozen=True)
class LoadedProgram:
    name: str
    section: str
    kind: SectionKind
    fd: int
    attach_btf_id: int = 0  # the kernel BTF id it was loaded against (BTF programs)


class _Placed(Protocol):
    @property
    def insn_off(self) -> int: ...


R = TypeVar("R", bound=_Placed)


def _within(records_by_section: Mapping[str, Sequence[R]], piece: Piece) -> list[R]:
    """The records of a section that fall inside one placed piece."""
    return [r for r in records_by_section.get(piece.section, ())
            if piece.contains(piece.section, r.insn_off // INSN_SIZE)]


def read_vmlinux_btf(path: Path = VMLINUX_BTF) -> Btf:
    """The running kernel's BTF, the target of every CO-RE relocation.

    Mapped where the file system allows it (no 5 MB copy, pages read on
    demand); sysfs refuses mmap before ~6.15, so there it is read whole.
    """
    data: bytes | mmap.mmap
    try:
        if path == VMLINUX_BTF and not features.sysfs_btf_mmap().supported:
            data = path.read_bytes()
        else:
            try:
                data = syscalls.mmap_file(path)
            except (FileNotFoundError, PermissionError):
                raise
            except OSError:  # a file that cannot be mapped (empty, a pipe): read it
                data = path.read_bytes()
    except FileNotFoundError:
        if path != VMLINUX_BTF:
            raise TtcpError(f"BTF file {path} not found") from None
        raise TtcpError(
            f"{path} not found: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y is needed, "
            "Linux 5.4 or newer; or pass --btf PATH)"
        ) from None
    except OSError as e:
        raise TtcpError(f"cannot read {path}: {e.strerror}") from e
    return Btf.parse(data)


class ObjectLoader:
    """One BPF object: prepared purely, then loaded piece by piece.

    Nothing touches the kernel until create_maps()/load_program(); the
    target BTF is read on first need, so --explain on a foreign object and
    the agent's start-up pay only for what they use.
    """

    def __init__(self, source: str | bytes, *, target_btf: Btf | None = None,
                 btf_path: Path = VMLINUX_BTF) -> None:
        self.obj: BpfObject = read_object(source)
        if self.obj.btf is None:
            raise FormatError("ELF", f"{self.obj.path}: no .BTF section (compile with clang -g)")
        self.btf = Btf.parse(self.obj.btf)
        self.ext = BtfExt.parse(self.obj.btf_ext, self.btf) if self.obj.btf_ext else None
        self.maps: dict[str, MapSpec] = map_specs(self.obj, self.btf)
        self._target = target_btf
        self._btf_path = btf_path
        self._resolver: CoreResolver | None = None
        self._btf_fd = -1
        self.map_fds: dict[str, int] = {}
        self.programs: dict[str, LoadedProgram] = {}

    # ---- pure preparation ----

    @property
    def target_btf(self) -> Btf:
        if self._target is None:
            self._target = read_vmlinux_btf(self._btf_path)
        return self._target

    def program_names(self) -> list[str]:
        return [f.name for f in self.obj.programs]

    def _function(self, name: str) -> Function:
        for f in self.obj.programs:
            if f.name == name:
                return f
        raise TtcpError(f"{self.obj.path}: no program named {name!r} "
                        f"(have: {', '.join(self.program_names()) or 'none'})")

    def set_max_entries(self, map_name: str, max_entries: int) -> None:
        """Resize a map before it is created (like a runtime --max-filters)."""
        if map_name not in self.maps:
            raise TtcpError(f"{self.obj.path}: no map named {map_name!r}")
        self.maps[map_name] = self.maps[map_name].with_max_entries(max_entries)

    def prepare(self, name: str) -> tuple[ProgramImage, list[CoreDecision]]:
        """Link a program and apply its CO-RE relocations (no kernel calls)."""
        image = link_program(self.obj, self._function(name))
        return image, self._apply_core(image)

    def explain(self) -> list[CoreDecision]:
        """Every CO-RE decision for every program, in program order."""
        return [d for name in self.program_names() for d in self.prepare(name)[1]]

    def _apply_core(self, image: ProgramImage) -> list[CoreDecision]:
        if self.ext is None:
            return []
        decisions = []
        for piece in image.pieces:
            for relo in self.ext.core_relos.get(piece.section, ()):
                sec_insn = relo.insn_off // INSN_SIZE
                if not piece.contains(piece.section, sec_insn):
                    continue
                if self._resolver is None:
                    self._resolver = CoreResolver(self.btf, self.target_btf)
                result = self._resolver.resolve(relo)
                at = piece.to_program(sec_insn)
                old, new = patch_insn(image.insns, at, result)
                decisions.append(CoreDecision(image.name, at, result.kind_name, result.spec,
                                              old, new, result.poisoned))
        return decisions

    def _btf_infos(self, image: ProgramImage) -> tuple[bytes, int, bytes, int]:
        """func_info and line_info of a linked program, rebased to its pieces."""
        if self.ext is None or self._btf_fd < 0:
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

    # ---- kernel ----

    def load_btf(self) -> int:
        """Load the object's BTF so maps and programs carry types and source lines.

        A kernel that refuses it still gets the programs, without line info;
        EPERM/EACCES is raised instead (nothing else would load either).
        """
        if self._btf_fd < 0:
            data = fixed_for_kernel(self.btf, self.obj.section_sizes, self.obj.symbol_offsets)
            try:
                self._btf_fd = syscalls.btf_load(data)
            except BpfError as e:
                if e.errno in (errno.EPERM, errno.EACCES):
                    raise  # no privilege: maps and programs would fail next; say it once
                log.warning("kernel refused the object's BTF (%s: errno %d); loading without it",
                            e.step, e.errno)
        return self._btf_fd

    def reuse_map(self, name: str, fd: int) -> None:
        """Use an existing map (e.g. a pinned one) for `name` instead of creating it.

        The map must match the spec exactly (type, key and value size, flags,
        max entries: IncompatibleMapError otherwise, and the fd stays the
        caller's). On success the loader owns the fd and closes it in close();
        create_maps() leaves the map as it is (no initial data is written).
        Call before create_maps().
        """
        if name not in self.maps:
            raise TtcpError(f"{self.obj.path}: no map named {name!r}")
        if name in self.map_fds:
            raise TtcpError(f"map {name!r} already exists in this loader; reuse it before create_maps()")
        diffs = differences(MapShape.of(self.maps[name]), MapShape.of_info(syscalls.map_info(fd)))
        if diffs:
            raise IncompatibleMapError(f"map {name!r}", diffs)
        self.map_fds[name] = fd

    def create_maps(self) -> dict[str, int]:
        """Create every map not reused (idempotent); global data is written and frozen."""
        memlock = features.ensure_memlock()
        btf_fd = self.load_btf()
        for name, spec in self.maps.items():
            if name in self.map_fds:
                continue
            with_btf = btf_fd >= 0 and spec.btf_key_type_id + spec.btf_value_type_id > 0
            try:
                fd = syscalls.map_create(
                    spec.map_type, spec.key_size, spec.value_size, spec.max_entries,
                    flags=spec.flags, name=spec.kernel_name,
                    btf_fd=btf_fd if with_btf else 0,
                    btf_key_type_id=spec.btf_key_type_id if with_btf else 0,
                    btf_value_type_id=spec.btf_value_type_id if with_btf else 0,
                )
            except BpfError as e:
                if e.errno == errno.EPERM and memlock.hint():
                    raise BpfError(e.step, e.errno, hint=memlock.hint()) from None
                raise
            self.map_fds[name] = fd
            if spec.initial is not None:
                syscalls.map_update(fd, bytes(4), spec.initial, name=name)
                if spec.freeze:
                    syscalls.map_freeze(fd, name=name)
        return self.map_fds

    def load_program(self, name: str) -> LoadedProgram:
        """Link, relocate and load one program (maps are created first)."""
        if name in self.programs:
            return self.programs[name]
        image, _ = self.prepare(name)
        self.create_maps()
        image.set_map_fds(self.map_fds)
        func, func_sz, line, line_sz = self._btf_infos(image)
        attach_btf_id = self._attach_btf_id(image.kind)
        fd = syscalls.prog_load(
            image.kind.prog_type, bytes(image.insns), self.obj.license or "GPL",
            name=name, expected_attach_type=image.kind.attach_type,
            attach_btf_id=attach_btf_id, prog_btf_fd=max(self._btf_fd, 0),
            func_info=func, func_info_rec_size=func_sz,
            line_info=line, line_info_rec_size=line_sz,
        )
        prog = LoadedProgram(name, image.section, image.kind, fd, attach_btf_id)
        self.programs[name] = prog
        return prog

    def attach_target(self, name: str) -> tuple[SectionKind, int]:
        """A program's section kind and the kernel BTF id it attaches to (0: none),
        without linking or relocating it."""
        kind = classify(self._function(name).section)
        return kind, self._attach_btf_id(kind)

    def _attach_btf_id(self, kind: SectionKind) -> int:
        target = kind.btf_target_name
        if target is None:
            return 0
        kind_id = KIND_TYPEDEF if kind.style == "tp_btf" else KIND_FUNC
        ids = self.target_btf.ids_by_name(target, kind_id)
        if not ids:
            raise TtcpError(f"{kind.style}: kernel BTF has no {target!r} "
                            "(this kernel lacks that function or tracepoint)")
        return ids[0]

    def release_target_btf(self) -> None:
        """Drop the kernel BTF and CO-RE caches once nothing more will be loaded:
        several MB of mapped and decoded types a long-running agent has no use for."""
        self._target = None
        self._resolver = None

    def unload_program(self, name: str) -> None:
        """Close one program (e.g. after a failed attach, before a fallback)."""
        prog = self.programs.pop(name, None)
        if prog is not None:
            syscalls.close(prog.fd)

    def close(self) -> None:
        """Release every fd this loader created; safe to call twice."""
        for name in list(self.programs):
            self.unload_program(name)
        for fd in self.map_fds.values():
            syscalls.close(fd)
        self.map_fds.clear()
        if self._btf_fd >= 0:
            syscalls.close(self._btf_fd)
            self._btf_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cmd_explain(loader: ObjectLoader) -> int:
    for decision in loader.explain():
        print(decision.to_json())
    return 0


def _cmd_load(loader: ObjectLoader) -> int:
    failures = 0
    for name in loader.program_names():
        try:
            prog = loader.load_program(name)
            info = syscalls.prog_info(prog.fd)
            print(f"{name}: loaded as {prog.kind.style} (prog id {info.id})")
        except TtcpError as e:
            failures += 1
            print(f"{name}: FAILED: {e}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ttcp.elf_loader",
        description="Inspect or load any BPF ELF object with ttcp's loader.",
    )
    parser.add_argument("object", help="BPF ELF object (clang -g -target bpf)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--explain", action="store_true",
                      help="print every CO-RE relocation decision as a JSON line; load nothing")
    mode.add_argument("--load", action="store_true",
                      help="create the maps and load every program (nothing is attached); "
                           "exit 0 only if all load")
    parser.add_argument("--btf", default=str(VMLINUX_BTF),
                        help="target BTF to relocate against (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        target = read_vmlinux_btf(Path(args.btf))
        with ObjectLoader(args.object, target_btf=target) as loader:
            return _cmd_explain(loader) if args.explain else _cmd_load(loader)
    except TtcpError as e:
        print(f"{args.object}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
