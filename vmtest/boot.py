"""Boot one kernel under qemu with virtme-ng and run a command in it.

The guest sees the host's root file system read-only (9p), with writable
overlays on /tmp, /etc, /var...; OUTDIR is shared read-write and is the only
channel back: without udev on the host virtme-ng's console may drop the
command's output and exit 255, so the harness never relies on either.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmtest.guest import CACHED_ROOT
from vmtest.kernels import Kernel


def kvm_usable() -> tuple[bool, str]:
    """Hardware virtualization that boots a stock kernel. A PVM /dev/kvm
    (kvm_pvm, as on some cloud VMs) cannot, so it counts as none."""
    forced = os.environ.get("TTCP_VMTEST_KVM")
    if forced in ("0", "1"):
        return forced == "1", f"TTCP_VMTEST_KVM={forced}"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    if Path("/sys/module/kvm_pvm").exists():
        return False, "/dev/kvm is PVM (kvm_pvm), which cannot boot stock kernels"
    if Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists():
        return True, "KVM"
    return False, "no kvm_intel/kvm_amd module"


@dataclass
class Boot:
    kernel: Kernel
    out: Path
    seconds: float
    console: Path
    timed_out: bool


def tools_missing() -> list[str]:
    """Host programs the harness needs (apt: qemu-system-x86 kmod; pip: virtme-ng)."""
    bindir = Path(sys.executable).parent
    need = {"vng": bindir / "vng", "virtme-run": bindir / "virtme-run"}
    missing = [name for name, path in need.items() if not path.exists() and not shutil.which(name)]
    missing += [t for t in ("qemu-system-x86_64", "depmod", "dpkg-deb") if not shutil.which(t)]
    return missing


def boot(kernel: Kernel, out: Path, guest_argv: list[str], *, kvm: bool, cpus: int, memory: str,
         timeout_s: float, cwd: Path) -> Boot:
    """Run `guest_argv` (a command line, run with the same Python) in `kernel`."""
    out.mkdir(parents=True, exist_ok=True)
    Path(CACHED_ROOT).mkdir(exist_ok=True)  # the guest's mount point: it sees the host's /tmp
    bindir = Path(sys.executable).parent
    vng = str(bindir / "vng") if (bindir / "vng").exists() else "vng"
    cmd = [vng, "--run", str(kernel.vmlinuz), "--cpus", str(cpus), "--memory", memory,
           "--rwdir", str(out), "--cwd", str(cwd), "--name", "ttcp-vmtest",
           # The host's root a second time, for guest.py to mount with a cache and
           # chroot into: Python's thousands of stats per import otherwise each cross
           # to the host (10 ms apiece on 5.10 under emulation).
           "--rodir", f"{CACHED_ROOT}=/",
           "--exec", shlex.join(guest_argv)]
    if not kvm:
        cmd.insert(3, "--disable-kvm")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    console = out / "console.log"
    start = time.monotonic()
    timed_out = False
    with open(console, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, 9)
            proc.wait()
    return Boot(kernel, out, time.monotonic() - start, console, timed_out)
