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


def _mount(fstype: str, target: str) -> None:
    if os.path.ismount(target):
        return
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, fstype, target], check=False)


def main(argv: list[str]) -> int:
    scale, deadline, out, pytest_args = argv[0], float(argv[1]), Path(argv[2]), argv[3:]
    _mount("bpf", "/sys/fs/bpf")
    _mount("tracefs", "/sys/kernel/tracing")
    (out / "uname").write_text(platform.release() + "\n")
    # The guest's environment is virtme-ng's, not the host's: say everything here.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TTCP_REQUIRE_KERNEL="1", TTCP_TIMEOUT_SCALE=scale,
               PYTHONFAULTHANDLER="1")
    with open(out / "features.txt", "w") as f:
        subprocess.run([sys.executable, "-m", "ttcp.features"], stdout=f, stderr=subprocess.STDOUT,
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
