"""A BPF object loaded into the kernel: its BTF, maps and programs (cilium/ebpf's Collection).

What the object says and every decision about it (linking, CO-RE, map specs)
is ttcp.obj.spec.CollectionSpec's, made without the kernel; a Collection
orders the kernel steps and owns every file descriptor the kernel hands back,
so close() releases all of it whatever failed midway. `python -m ttcp.kernel
explain|load OBJ` runs both on any object.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from ttcp import syscalls
from ttcp.errors import BpfError, TtcpError
from ttcp.kernel import btf as kernel_btf
from ttcp.kernel import rlimit
from ttcp.obj.btf import Btf
from ttcp.obj.core import CoreResolver
from ttcp.obj.linker import ProgramImage
from ttcp.obj.map_compat import IncompatibleMapError, MapShape, differences
from ttcp.obj.sections import SectionKind
from ttcp.obj.spec import CollectionSpec, CoreDecision, attach_btf_id

log = logging.getLogger("ttcp")


@dataclass(frozen=True)
class LoadedProgram:
    name: str
    section: str
    kind: SectionKind
    fd: int
    attach_btf_id: int = 0  # the kernel BTF id it was loaded against (BTF programs)
    verifier_stats: str = ""  # the verifier's statistics, when asked for (load_program(stats=True))


class Collection:
    """One object's maps and programs in the kernel, created piece by piece.

    Nothing touches the kernel until create_maps()/load_program(); the target
    BTF is read on first need, so the agent's start-up pays only for what it
    uses. Map sizes are the spec's: set them there before create_maps().
    """

    def __init__(self, spec: CollectionSpec | str | bytes, *, target_btf: Btf | None = None,
                 btf_path: Path = kernel_btf.VMLINUX_BTF) -> None:
        """`spec`: what to load, or the object's path or bytes to read it from."""
        self.spec = spec if isinstance(spec, CollectionSpec) else CollectionSpec(spec)
        self._target = target_btf
        self._btf_path = btf_path
        self._resolver: CoreResolver | None = None
        self._btf_fd = -1
        self.map_fds: dict[str, int] = {}
        self.programs: dict[str, LoadedProgram] = {}

    @property
    def target_btf(self) -> Btf:
        if self._target is None:
            self._target = kernel_btf.read_vmlinux_btf(self._btf_path)
        return self._target

    def prepare(self, name: str) -> tuple[ProgramImage, list[CoreDecision]]:
        """Link a program and apply its CO-RE relocations against the target BTF
        (read only when the program has relocations; no kernel calls otherwise)."""
        image = self.spec.link(name)
        if self.spec.needs_target(image) and self._resolver is None:
            self._resolver = self.spec.core_resolver(self.target_btf)
        return image, self.spec.relocate(image, self._resolver)

    def attach_target(self, name: str) -> tuple[SectionKind, int]:
        """A program's section kind and the kernel BTF id it attaches to (0: none),
        without linking or relocating it."""
        kind = self.spec.kind(name)
        return kind, self._attach_btf_id(kind)

    def _attach_btf_id(self, kind: SectionKind) -> int:
        return 0 if kind.btf_target_name is None else attach_btf_id(kind, self.target_btf)

    def release_target_btf(self) -> None:
        """Drop the kernel BTF and CO-RE caches once nothing more will be loaded:
        several MB of mapped and decoded types a long-running agent has no use for."""
        self._target = None
        self._resolver = None

    # ---- kernel ----

    def load_btf(self) -> int:
        """Load the object's BTF so maps and programs carry types and source lines.

        A kernel that refuses it still gets the programs, without line info;
        EPERM/EACCES is raised instead (nothing else would load either).
        """
        if self._btf_fd < 0:
            try:
                self._btf_fd = syscalls.btf_load(self.spec.kernel_btf())
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
        caller's). On success the collection owns the fd and closes it in
        close(); create_maps() leaves the map as it is (no initial data is
        written). Call before create_maps().
        """
        spec = self.spec.map(name)
        if name in self.map_fds:
            raise TtcpError(f"map {name!r} already exists in this collection; reuse it before create_maps()")
        diffs = differences(MapShape.of(spec), MapShape.of_info(syscalls.map_info(fd)))
        if diffs:
            raise IncompatibleMapError(f"map {name!r}", diffs)
        self.map_fds[name] = fd

    def create_maps(self) -> dict[str, int]:
        """Create every map not reused (idempotent); global data is written and frozen."""
        memlock = rlimit.ensure_memlock()
        btf_fd = self.load_btf()
        for name, spec in self.spec.maps.items():
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

    def load_program(self, name: str, *, stats: bool = False) -> LoadedProgram:
        """Link, relocate and load one program (maps are created first); `stats`:
        keep the verifier's statistics (LoadedProgram.verifier_stats)."""
        if name in self.programs:
            return self.programs[name]
        image, _ = self.prepare(name)
        self.create_maps()
        image.set_map_fds(self.map_fds)
        func, func_sz, line, line_sz = self.spec.btf_infos(image) if self._btf_fd >= 0 else (b"", 0, b"", 0)
        attach_btf_id = self._attach_btf_id(image.kind)
        log: list[str] | None = [] if stats else None
        fd = syscalls.prog_load(
            image.kind.prog_type, bytes(image.insns), self.spec.obj.license or "GPL",
            name=name, expected_attach_type=image.kind.attach_type,
            attach_btf_id=attach_btf_id, prog_btf_fd=max(self._btf_fd, 0),
            func_info=func, func_info_rec_size=func_sz,
            line_info=line, line_info_rec_size=line_sz, stats=log,
        )
        prog = LoadedProgram(name, image.section, image.kind, fd, attach_btf_id, "\n".join(log or ()))
        self.programs[name] = prog
        return prog

    def unload_program(self, name: str) -> None:
        """Close one program (e.g. after a failed attach, before a fallback)."""
        prog = self.programs.pop(name, None)
        if prog is not None:
            syscalls.close(prog.fd)

    def close(self) -> None:
        """Release every fd this collection holds; safe to call twice."""
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
