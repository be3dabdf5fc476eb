"""Error types shared by every layer.

Each error says which step failed, so an operator reading one line on stderr
knows what to fix; kernel errors also carry the errno and, for a verifier
rejection, the tail of the verifier log.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
from dataclasses import dataclass
from pathlib import Path

from ttcp.kernel.uapi import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN


class TtcpError(Exception):
    """Base class: everything ttcp raises on purpose derives from it.

    Misusing an API (bytes of the wrong size for a map, a closed map or ring)
    raises Python's own ValueError or IndexError, as the standard library
    does; a few syscalls wrappers document the OSError their callers handle.
    """


class FormatError(TtcpError):
    """Malformed input to a pure parser (ELF, BTF, .BTF.ext, CO-RE, events).

    `what` names the structure being parsed ("BTF", ".BTF.ext", "ELF", ...).
    """

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message}")
        self.what = what
        self.message = message


class BindError(TtcpError):
    """The API cannot listen where it was asked to (errno says why)."""

    def __init__(self, host: str, port: int, err: int | None, reason: str) -> None:
        self.host, self.port, self.errno = host, port, err
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot serve the API on {endpoint}: {reason}")

    @classmethod
    def of(cls, host: str, port: int, e: OSError | UnicodeError) -> BindError:
        """From what socket/bind/listen raised (UnicodeError: a host IDNA cannot encode)."""
        return cls(host, port, getattr(e, "errno", None), getattr(e, "strerror", None) or str(e))


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


_FULL_UID_MAP = ("0", "0", "4294967295")  # the initial user namespace's identity map


@dataclass(frozen=True)
class ProcessFacts:
    """What decides whether this process may use bpf(2), as /proc/self shows it.

    None means unknown (not Linux, /proc not mounted): the hint then stays generic.
    """

    cap_eff: int | None = None  # CapEff bitmask
    seccomp: int | None = None  # 0 none, 1 strict, 2 filter
    user_ns: bool | None = None  # inside a user namespace other than the initial one

    def has(self, cap: int) -> bool:
        return self.cap_eff is not None and bool(self.cap_eff >> cap & 1)


def process_facts(proc: Path = Path("/proc/self")) -> ProcessFacts:
    """Read CapEff, Seccomp and the uid map of a process (only on an error path)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (proc / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    user_ns = None
    with contextlib.suppress(OSError):
        user_ns = tuple((proc / "uid_map").read_text().split()) != _FULL_UID_MAP
    cap_eff = int(fields["CapEff"], 16) if "CapEff" in fields else None
    seccomp = int(fields["Seccomp"]) if fields.get("Seccomp", "").isdigit() else None
    return ProcessFacts(cap_eff, seccomp, user_ns)


def privilege_hint(err: int, facts: ProcessFacts | None = None) -> str:
    """Explain EPERM/EACCES the way an operator needs it: what is missing and what to change.

    The text is built from `facts` alone (read from /proc/self when not given),
    so a refused call inside a container says whether capabilities, a seccomp
    filter, a user namespace or something else (an LSM, lockdown) is the cause.
    """
    if err not in (_errno.EPERM, _errno.EACCES):
        return ""
    f = facts if facts is not None else process_facts()
    if f.user_ns:
        return ("permission denied: ttcp runs in a user namespace (a rootless container?), whose "
                "capabilities do not count for bpf(2): run it as real root (rootful Docker or "
                "Podman, or sudo on the host)")
    if f.cap_eff is None:
        return ("permission denied: run as root or grant CAP_BPF and CAP_PERFMON "
                "(CAP_SYS_ADMIN on kernels before 5.8)")
    if f.has(CAP_SYS_ADMIN):
        held = "CAP_SYS_ADMIN"
    elif f.has(CAP_BPF) and f.has(CAP_PERFMON):
        held = "CAP_BPF and CAP_PERFMON"
    else:
        missing = " and ".join(n for n, c in (("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON))
                               if not f.has(c))
        return (f"permission denied: this process lacks {missing}: run as root or grant CAP_BPF "
                "and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8; in Docker before 23 "
                "--cap-add SYS_ADMIN, from 23 on --cap-add BPF --cap-add PERFMON, or --privileged)")
    if f.seccomp:
        return (f"permission denied although this process has {held}: a seccomp filter "
                f"(Seccomp: {f.seccomp} in /proc/self/status) blocks the call; allow bpf and "
                "perf_event_open in the profile (Docker: --security-opt seccomp=unconfined or a "
                "profile that allows them)")
    return (f"permission denied although this process has {held} and no seccomp filter: an LSM "
            "(AppArmor, SELinux) or kernel lockdown refuses it; fentry also needs ftrace, which a "
            "locked-down kernel refuses")
