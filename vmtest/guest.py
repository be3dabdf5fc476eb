"""What runs inside a guest: the kernel's features, then pytest.

    python -m vmtest.guest SCALE OUTDIR [PYTEST ARGS...]

Everything it learns goes to OUTDIR (a directory shared read-write with the
host): uname, the feature probes, pytest's log and JUnit XML, and last the
exit status, written only when all else is on disk, so a host that finds no
`rc` knows the guest died midway.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def _mount(fstype: str, target: str) -> None:
    if os.path.ismount(target):
        return
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, fstype, target], check=False)


def main(argv: list[str]) -> int:
    scale, out, pytest_args = argv[0], Path(argv[1]), argv[2:]
    _mount("bpf", "/sys/fs/bpf")
    _mount("tracefs", "/sys/kernel/tracing")
    (out / "uname").write_text(platform.release() + "\n")
    # The guest's environment is virtme-ng's, not the host's: say everything here.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TTCP_REQUIRE_KERNEL="1", TTCP_TIMEOUT_SCALE=scale)
    with open(out / "features.txt", "w") as f:
        subprocess.run([sys.executable, "-m", "ttcp.features"], stdout=f, stderr=subprocess.STDOUT,
                       env=env, check=False)
    with open(out / "pytest.log", "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfEs", "--durations=25",
             f"--junitxml={out / 'junit.xml'}", *pytest_args],
            stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    (out / "rc").write_text(f"{rc}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
