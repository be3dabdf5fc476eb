"""Attach a loaded program to its kernel hook, and detach it (links).

Modern kernels attach with BPF_LINK_CREATE, which gives one fd that
detaches on close; older ones need RAW_TRACEPOINT_OPEN for BTF programs
(before ~5.11) and PERF_EVENT_IOC_SET_BPF for classic tracepoints (before
5.15). Which one is decided by a feature probe (ttcp.kernel.features), never by
reading an errno of the real attach.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Self

from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel import features
from ttcp.kernel.uapi import AttachType
from ttcp.obj.sections import SectionKind


@dataclass
class Link:
    """Everything that keeps one program attached; close() detaches it."""

    style: str
    method: str  # "link_create", "raw_tracepoint_open" or "perf_ioctl"
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        while self.fds:
            syscalls.close(self.fds.pop())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attach(kind: SectionKind, prog_fd: int, attach_btf_id: int = 0) -> Link:
    """Attach `prog_fd` as `kind` says; on failure nothing stays attached.
    `attach_btf_id` is the program's load-time target (BTF programs only)."""
    if kind.style in ("fentry", "fexit", "tp_btf"):
        return _attach_btf(kind, prog_fd, attach_btf_id)
    if kind.style == "raw_tp":
        return Link(kind.style, "raw_tracepoint_open",
                    [syscalls.raw_tracepoint_open(prog_fd, kind.target)])
    if kind.style == "tracepoint":
        return _attach_tracepoint(kind, prog_fd)
    raise BpfError(f"attach {kind.style}", errno.EOPNOTSUPP, hint="this program type is not attachable")


def _attach_btf(kind: SectionKind, prog_fd: int, attach_btf_id: int) -> Link:
    if features.tracing_link_create(kind.attach_type, attach_btf_id).supported is False:
        return Link(kind.style, "raw_tracepoint_open", [syscalls.raw_tracepoint_open(prog_fd, None)])
    return Link(kind.style, "link_create", [syscalls.link_create(prog_fd, 0, kind.attach_type)])


def _attach_tracepoint(kind: SectionKind, prog_fd: int) -> Link:
    """One perf event is enough: a tracepoint's programs form one array shared by
    every CPU (a second event for the same program gets EEXIST), so the event is
    opened on the first online CPU and the program still runs on all of them."""
    category, name = kind.target.split("/", 1)
    tp_id = syscalls.tracepoint_id(category, name)
    modern = features.perf_event_link().supported is not False
    link = Link(kind.style, "link_create" if modern else "perf_ioctl")
    try:
        perf_fd = syscalls.perf_event_open_tracepoint(tp_id, syscalls.online_cpus()[0])
        link.fds.append(perf_fd)
        holder = _attach_perf_event(link, prog_fd, perf_fd)
        if holder is not None:
            link.fds.append(holder)
    except BaseException:
        link.close()
        raise
    return link


def _attach_perf_event(link: Link, prog_fd: int, perf_fd: int) -> int | None:
    """Attach to one perf event; returns the link fd, or None when the perf
    event itself holds the program (the ioctl path)."""
    if link.method == "link_create":
        return syscalls.link_create(prog_fd, perf_fd, AttachType.PERF_EVENT)
    syscalls.perf_event_set_bpf(perf_fd, prog_fd)
    syscalls.perf_event_enable(perf_fd)
    return None
