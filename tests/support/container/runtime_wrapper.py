"""An OCI runtime in front of runc that drops capabilities the caller cannot grant.

Docker 20.10 gives a `--privileged` container every capability it knows. On a
machine whose root lacks some of them in its bounding set (here
CAP_SYS_RESOURCE), runc then fails with "unable to apply caps: operation not
permitted" and no privileged container starts at all. This wrapper, registered
with `dockerd --add-runtime NAME=PATH --default-runtime NAME`, removes from the
bundle's config.json (or `runc exec --process FILE`) every capability missing
from its own bounding set, then execs runc with the same arguments.

It belongs to the test harness, not to the image or to ttcp: a normal machine
needs no such thing. Stdlib only; the harness writes a launcher naming runc.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# capability(7) numbers 0..40, in order.
CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
# runc's global options that take a value (they come before the subcommand).
_GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}


def names_of(mask: int) -> set[str]:
    return {name for bit, name in enumerate(CAP_NAMES) if mask >> bit & 1}


def bounding_set(status: str | None = None) -> set[str]:
    """Capability names in CapBnd of /proc/self/status (or of `status`, its text)."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapBnd:"):
            return names_of(int(line.split()[1], 16))
    raise RuntimeError("no CapBnd line in /proc/self/status")


def restrict(process: dict, allowed: set[str]) -> list[str]:
    """Remove from an OCI `process` object every capability not in `allowed`; return those removed."""
    caps = process.get("capabilities") or {}
    removed: set[str] = set()
    for kind, names in caps.items():
        if isinstance(names, list):
            caps[kind] = [n for n in names if n in allowed]
            removed.update(n for n in names if n not in allowed)
    return sorted(removed)


def _option(args: list[str], *names: str) -> str | None:
    """The value of the first of `names` in `args` (`--x V` or `--x=V`)."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def spec_file(argv: list[str]) -> Path | None:
    """The JSON file runc will read capabilities from for this call, if any."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in _GLOBAL_WITH_VALUE else 1
    if i >= len(argv):
        return None
    command, rest = argv[i], argv[i + 1:]
    if command in ("create", "run"):
        return Path(_option(rest, "--bundle", "-b") or ".") / "config.json"
    if command == "exec":
        process = _option(rest, "--process", "-p")
        return Path(process) if process else None
    return None


def rewrite(path: Path, allowed: set[str]) -> list[str]:
    """Restrict the capabilities in an OCI config.json or process.json, in place."""
    doc = json.loads(path.read_text())
    process = doc.get("process", doc) if "ociVersion" in doc else doc
    removed = restrict(process, allowed)
    if removed:
        tmp = path.with_name(path.name + ".ttcp-tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    return removed


def main(argv: list[str], runc: str) -> int:
    path = spec_file(argv)
    if path is not None and path.exists():
        rewrite(path, bounding_set())
    os.execv(runc, [runc, *argv])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], sys.argv[1]))
