"""Error types shared by every layer.

Each error says which step failed, so an operator reading one line on stderr
knows what to fix; kernel errors also carry the errno and, for a verifier
rejection, the tail of the verifier log.
"""

from __future__ import annotations

import errno as _errno
import os


class TtcpError(Exception):
    """Base class: everything ttcp raises on purpose derives from it."""


class FormatError(TtcpError):
    """Malformed input to a pure parser (ELF, BTF, .BTF.ext, CO-RE, events).

    `what` names the structure being parsed ("BTF", ".BTF.ext", "ELF", ...).
    """

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message}")
        self.what = what
        self.message = message


class CoreRelocationError(TtcpError):
    """A CO-RE relocation that cannot be applied (ambiguous, malformed, or
    unresolvable where the program would reach it)."""


class BpfError(TtcpError):
    """A failed bpf(2)/perf_event_open(2) call.

    Carries the errno, the failing step (e.g. "PROG_LOAD tcprtt_destroy") and,
    for a verifier rejection, the tail of the verifier log.
    """

    LOG_TAIL_LINES = 20

    def __init__(self, step: str, err: int, log: str = "", hint: str = "") -> None:
        self.step = step
        self.errno = err
        self.log = log
        self.hint = hint
        name = _errno.errorcode.get(err, str(err))
        msg = f"{step}: {name} ({os.strerror(err)})"
        if hint:
            msg += f": {hint}"
        tail = self.log_tail()
        if tail:
            msg += "\nverifier log (tail):\n" + tail
        super().__init__(msg)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` non-empty lines of the verifier log."""
        kept = [ln for ln in self.log.splitlines() if ln.strip()]
        return "\n".join(kept[-lines:])


def privilege_hint(err: int) -> str:
    """Explain EPERM/EACCES the way an operator needs it."""
    if err in (_errno.EPERM, _errno.EACCES):
        return (
            "permission denied: run as root or grant CAP_BPF and CAP_PERFMON "
            "(CAP_SYS_ADMIN on kernels before 5.8); fentry also needs ftrace, "
            "which a locked-down kernel refuses"
        )
    return ""
