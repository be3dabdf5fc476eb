"""make vmtest: run ttcp's kernel tests in each kernel of the matrix.

    python -m vmtest [--kernels "5.10 6.1 6.12"] [--full] [--jobs N]

Prints a table kernel x attach mode x result and exits 1 on any failure, on
a kernel that never reported, or when an attach mode passed nowhere.
Without --full the guests run the tests marked `matrix` (the ones that
decide compatibility: loader, every attach mode, maps, ring buffer, tracer,
CLI start and stop, faults); --full runs the whole suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vmtest import boot, kernels, report

REPO = Path(__file__).resolve().parent.parent
DEFAULT_KERNELS = "5.10.0-32 5.10 6.1 6.12"  # 5.10.0-32: the last with the union sock_cgroup_data
SCALE_TCG = 15.0  # software emulation: ttcp starts 20-60x slower than on the host
SCALE_KVM = 2.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vmtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default=os.environ.get("KERNELS") or DEFAULT_KERNELS,
                   help="Debian kernel releases: a series (6.1) picks the newest package, "
                        "a release (6.1.0-50, 6.12.117+deb13) that one (default: %(default)s; env KERNELS)")
    p.add_argument("--full", action="store_true", default=os.environ.get("FULL") == "1",
                   help="the whole suite instead of the `matrix` tests (env FULL=1)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("VMTEST_JOBS") or 1),
                   help="guests booted at once (default: %(default)s; each wants a CPU of its own)")
    p.add_argument("--cpus", type=int, default=2, help="vCPUs per guest (default: %(default)s)")
    p.add_argument("--memory", default="2G", help="memory per guest (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per guest before it is killed (default: 1200, 5400 with --full)")
    env_out = os.environ.get("VMTEST_OUT")
    p.add_argument("--out", type=Path, default=Path(env_out) if env_out else None,
                   help="keep each guest's logs and matrix.md here (default: $VMTEST_OUT, else a "
                        "temporary directory, removed)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    return p


def _collect(kernel: kernels.Kernel, b: boot.Boot) -> report.KernelResult:
    out = b.out
    name = (out / "uname").read_text().strip() if (out / "uname").exists() else kernel.package
    result = report.KernelResult(name)
    if (out / "features.txt").exists():
        result.features = report.parse_features((out / "features.txt").read_text())
    if (out / "junit.xml").exists():
        result.cases = report.parse_junit((out / "junit.xml").read_bytes())
    if (out / "rc").exists():
        result.rc = int((out / "rc").read_text().strip() or 1)
    elif b.timed_out:
        result.note = f"(killed after {b.seconds:.0f} s)"
    else:
        result.note = f"(guest ended without a result; see {b.console})"
    return result


def _prepare(selection: list[str]) -> list[str]:
    """Write the bytecode (and pytest's rewritten test modules) on the host,
    and return the test files that hold the selected tests.

    The guest sees the checkout read-only over 9p and runs 20-60x slower: a
    Python there that must compile ttcp and the tests from source in every
    process, or import every test module to find the selected ones, spends
    most of its time doing so.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", "ttcp", "tests", "vmtest"], cwd=REPO,
                   check=False, stdout=subprocess.DEVNULL)
    # clang under emulation takes half a minute an object: the guest reuses these.
    subprocess.run([sys.executable, "-c", "from tests.support.objects import compile_all; compile_all()"], cwd=REPO,
                   check=False)
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *selection], cwd=REPO,
                            check=False, capture_output=True, text=True).stdout
    files = sorted({line.split("::", 1)[0] for line in listed.splitlines() if "::" in line})
    return files


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = boot.tools_missing()
    if missing:
        print(f"vmtest: missing {', '.join(missing)} (make deps; pip install virtme-ng)", file=sys.stderr)
        return 2
    kvm, why = boot.kvm_usable()
    scale = float(os.environ.get("TTCP_TIMEOUT_SCALE") or (SCALE_KVM if kvm else SCALE_TCG))
    timeout = args.timeout or (5400.0 if args.full else 1200.0)
    print(f"vmtest: {'KVM' if kvm else 'software emulation (TCG)'} ({why}); timeout scale {scale:g}",
          flush=True)
    try:
        ks = kernels.fetch(args.kernels.split(), log=lambda m: print(m, flush=True))
    except kernels.KernelError as e:
        print(f"vmtest: {e}", file=sys.stderr)
        return 2
    selection = [] if args.full else ["-m", "matrix"]
    files = _prepare(selection)
    if not args.full and not args.pytest_args:
        selection += files  # the guest imports only the modules that hold matrix tests
    keep = args.out is not None
    outroot = args.out or Path(tempfile.mkdtemp(prefix="ttcp-vmtest-"))
    outroot.mkdir(parents=True, exist_ok=True)

    def run(kernel: kernels.Kernel) -> report.KernelResult:
        out = outroot / kernel.package
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        guest = [sys.executable, "-m", "vmtest.guest", str(scale), str(max(timeout - 90, 60)), str(out),
                 *selection, *args.pytest_args]
        print(f"vmtest: booting {kernel.package}", flush=True)
        b = boot.boot(kernel, out, guest, kvm=kvm, cpus=args.cpus, memory=args.memory,
                      timeout_s=timeout, cwd=REPO)
        result = _collect(kernel, b)
        passed = sum(c.outcome == "passed" for c in result.cases)
        print(f"vmtest: {kernel.package}: {passed}/{len(result.cases)} passed, rc {result.rc}, "
              f"{b.seconds:.0f} s", flush=True)
        if not result.ok and (out / "pytest.log").exists():
            print("".join((out / "pytest.log").read_text().splitlines(keepends=True)[-40:]), flush=True)
        return result

    start = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(run, ks))
    finally:
        if not keep:
            shutil.rmtree(outroot, ignore_errors=True)
    print()
    print(report.table(results))
    if keep:
        (outroot / "matrix.md").write_text(report.markdown(results) + "\n")
    print(f"\nvmtest: {len(results)} kernels in {time.monotonic() - start:.0f} s"
          + (f"; logs in {outroot}" if keep else ""))
    bad = report.problems(results)
    for line in bad:
        print(f"vmtest: FAIL {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
