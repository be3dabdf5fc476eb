"""Program section names -> what the kernel must be told (pure).

A section name like "tp_btf/tcp_destroy_sock" fixes the program type, the
expected attach type and the attach target; the loader and the attach code
both read it from here so they never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttcp.errors import FormatError
from ttcp.kernel.uapi import AttachType, ProgType


@dataclass(frozen=True)
class SectionKind:
    """How a program section is loaded and attached.

    `style` names the attach mechanism: "fentry", "fexit", "tp_btf",
    "raw_tp", "tracepoint" or "socket" (no attach; loaded only).
    `target` is the kernel function, BTF tracepoint, or "category/name".
    """

    style: str
    prog_type: ProgType
    attach_type: AttachType
    target: str

    @property
    def btf_target_name(self) -> str | None:
        """Name to look up in vmlinux BTF for attach_btf_id, if any."""
        if self.style in ("fentry", "fexit"):
            return self.target
        if self.style == "tp_btf":
            return "btf_trace_" + self.target
        return None


_PREFIXES: tuple[tuple[str, str, ProgType, AttachType], ...] = (
    ("fentry/", "fentry", ProgType.TRACING, AttachType.TRACE_FENTRY),
    ("fexit/", "fexit", ProgType.TRACING, AttachType.TRACE_FEXIT),
    ("tp_btf/", "tp_btf", ProgType.TRACING, AttachType.TRACE_RAW_TP),
    ("raw_tracepoint/", "raw_tp", ProgType.RAW_TRACEPOINT, AttachType.NONE),
    ("raw_tp/", "raw_tp", ProgType.RAW_TRACEPOINT, AttachType.NONE),
    ("tracepoint/", "tracepoint", ProgType.TRACEPOINT, AttachType.NONE),
    ("tp/", "tracepoint", ProgType.TRACEPOINT, AttachType.NONE),
    ("socket", "socket", ProgType.SOCKET_FILTER, AttachType.NONE),
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
