"""Program section names -> what the kernel must be told (pure).

A section name like "tp_btf/tcp_destroy_sock" fixes the program type, the
expected attach type and the attach target; the loader and the attach code
both read it from here so they never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FormatError

# bpf_prog_type
PROG_SOCKET_FILTER = 1
PROG_KPROBE = 2
PROG_TRACEPOINT = 5
PROG_RAW_TRACEPOINT = 17
PROG_TRACING = 26

# bpf_attach_type
ATTACH_NONE = 0
ATTACH_TRACE_RAW_TP = 23
ATTACH_TRACE_FENTRY = 24
ATTACH_TRACE_FEXIT = 25


@dataclass(frozen=True)
class SectionKind:
    """How a program section is loaded and attached.

    `style` names the attach mechanism: "fentry", "fexit", "tp_btf",
    "raw_tp", "tracepoint" or "socket" (no attach; loaded only).
    `target` is the kernel function, BTF tracepoint, or "category/name".
    """

    style: str
    prog_type: int
    attach_type: int
    target: str

    @property
    def btf_target_name(self) -> str | None:
        """Name to look up in vmlinux BTF for attach_btf_id, if any."""
        if self.style in ("fentry", "fexit"):
            return self.target
        if self.style == "tp_btf":
            return "btf_trace_" + self.target
        return None


_PREFIXES: tuple[tuple[str, str, int, int], ...] = (
    ("fentry/", "fentry", PROG_TRACING, ATTACH_TRACE_FENTRY),
    ("fexit/", "fexit", PROG_TRACING, ATTACH_TRACE_FEXIT),
    ("tp_btf/", "tp_btf", PROG_TRACING, ATTACH_TRACE_RAW_TP),
    ("raw_tracepoint/", "raw_tp", PROG_RAW_TRACEPOINT, ATTACH_NONE),
    ("raw_tp/", "raw_tp", PROG_RAW_TRACEPOINT, ATTACH_NONE),
    ("tracepoint/", "tracepoint", PROG_TRACEPOINT, ATTACH_NONE),
    ("tp/", "tracepoint", PROG_TRACEPOINT, ATTACH_NONE),
    ("socket", "socket", PROG_SOCKET_FILTER, ATTACH_NONE),
)


def classify(section: str) -> SectionKind:
    """Map a section name to its program type and attach target."""
    for prefix, style, prog_type, attach_type in _PREFIXES:
        if section.startswith(prefix):
            target = section[len(prefix):]
            if style == "tracepoint" and target.count("/") != 1:
                raise FormatError("ELF", f"section {section!r}: expected tracepoint/CATEGORY/NAME")
            if style != "socket" and not target:
                raise FormatError("ELF", f"section {section!r}: no attach target after {prefix!r}")
            return SectionKind(style, prog_type, attach_type, target)
    raise FormatError(
        "ELF",
        f"section {section!r}: unsupported program type "
        f"(supported prefixes: {', '.join(p for p, *_ in _PREFIXES)})",
    )
