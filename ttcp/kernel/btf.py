"""The running kernel's BTF: where it is and how it is read (cilium's btf/kernel.go).

Every CO-RE relocation and every BTF attach target is decided against it. It
is mapped where the file system allows it (no 5 MB copy, pages read on
demand); sysfs refuses mmap before ~6.15, which a probe says, so there it is
read whole. `--btf PATH` gives another file (e.g. a BTFHub one).
"""

from __future__ import annotations

import mmap
from pathlib import Path

from ttcp import syscalls
from ttcp.errors import TtcpError
from ttcp.kernel import features
from ttcp.obj.btf import Btf

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


def read_vmlinux_btf(path: Path = VMLINUX_BTF) -> Btf:
    """The kernel's BTF at `path` (by default the running kernel's), parsed."""
    data: bytes | mmap.mmap
    try:
        if path == VMLINUX_BTF and not features.sysfs_btf_mmap(path).supported:
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
