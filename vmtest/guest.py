"""What runs inside a guest: the kernel's features, then pytest.

    python -m vmtest.guest SCALE DEADLINE OUTDIR [PYTEST ARGS...]

Everything it learns goes to OUTDIR (a directory shared read-write with the
host): uname, the feature probes, pytest's log and JUnit XML, and last the
exit status, written only when all else is on disk, so a host that finds no
`rc` knows the guest died midway.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

CACHED_ROOT = "/tmp/ttcp-vmtest-root"  # an empty host directory; boot.py exports "/" there too
_INSIDE = "TTCP_VMTEST_CACHED_ROOT"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def enter_cached_root(out: Path) -> bool:
    """Re-mount the host's root, exported a second time, with the guest's page and
    dentry cache on, and chroot into it. virtme-ng mounts "/" uncached, so every
    stat and open crosses to the host (10 ms each on a 5.10 guest under emulation:
    minutes per Python start). Nothing the guest reads changes during a run.
    False (nothing done) when the export is missing."""
    tag = next((line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[1] == CACHED_ROOT), None)
    if tag is None:
        return False
    root = CACHED_ROOT
    _run("umount", root)
    _run("mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro", tag, root)
    for fs in ("/proc", "/sys", "/dev"):
        _run("mount", "--rbind", fs, root + fs)
    repo = os.getcwd()
    hold = "/run/ttcp-vmtest-repo"
    if repo.startswith("/tmp/"):  # the tmpfs below would hide it: keep the cached view
        os.makedirs(hold, exist_ok=True)
        _run("mount", "--bind", root + repo, hold)
    _run("mount", "-t", "tmpfs", "tmpfs", root + "/run")
    _run("mount", "-t", "tmpfs", "tmpfs", root + "/tmp")  # scratch space, writable
    for path, source in ((str(out), str(out)), (repo, hold if repo.startswith("/tmp/") else None)):
        if source is not None:
            os.makedirs(root + path, exist_ok=True)
            _run("mount", "--bind", source, root + path)
    os.chroot(root)
    os.chdir(repo)
    return True


def _mount(fstype: str, target: str) -> None:
    if os.path.ismount(target):
        return
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, fstype, target], check=False)


def main(argv: list[str]) -> int:
    scale, deadline, out, pytest_args = argv[0], float(argv[1]), Path(argv[2]), argv[3:]
    cached = os.environ.get(_INSIDE) != "1" and enter_cached_root(out)
    os.environ[_INSIDE] = "1"
    _mount("bpf", "/sys/fs/bpf")
    _mount("tracefs", "/sys/kernel/tracing")
    if " - cgroup2 " not in Path("/proc/self/mountinfo").read_text():  # the workload tests need one
        _mount("cgroup2", "/sys/fs/cgroup")
    (out / "uname").write_text(platform.release() + "\n")
    (out / "root").write_text("cached\n" if cached else "uncached\n")
    # The guest's environment is virtme-ng's, not the host's: say everything here.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TTCP_REQUIRE_KERNEL="1", TTCP_TIMEOUT_SCALE=scale,
               PYTHONFAULTHANDLER="1")
    with open(out / "features.txt", "w") as f:
        subprocess.run([sys.executable, "-m", "ttcp.kernel", "features"], stdout=f, stderr=subprocess.STDOUT,
                       env=env, check=False)
    with open(out / "pytest.log", "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfEs", "--durations=25",
             f"--junitxml={out / 'junit.xml'}", *pytest_args],
            stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            # Before the host kills the guest: Python's faulthandler prints every
            # thread's stack on SIGABRT, so the log says where it hung.
            proc.send_signal(signal.SIGABRT)
            rc = proc.wait()
            f.write(f"\nvmtest: pytest stopped at {deadline:.0f} s of guest uptime (stacks above)\n")
    (out / "rc").write_text(f"{rc}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
