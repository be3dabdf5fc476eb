"""A private containerd (its own root, state, sockets and cgroup parent) and its complete removal.

Modelled on tests/support/container/engine.py: everything lives under one run
directory in /var/tmp named after the owner's pid, so a run killed before its
cleanup is undone by the next (`remove_leftovers`). `cleanup` undoes it in
order: tasks killed and deleted, containers and images removed, containerd
stopped, stray shims killed (their command line names our run directory, or
they sit in our cgroups), mounts under the run directory unmounted, the cgroup
parent removed from every hierarchy, what containerd 1.6 still writes under
/run/containerd although its state is elsewhere (shim sockets in s/, runc's
state in runc/<ns>/, ctr's fifo/: containers.md finding 11) and the run
directory. Container tests hold the kernel lock, so what appeared under
/run/containerd during the run is ours.

    with Containerd(log) as c:
        c.import_image(rootfs_tar, "k8s.io")
        c.run_task(c.image, "web0", ["sleep", "100"], ns="k8s.io", netns="/run/netns/x")
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from scripts.netns_scenario import pid_alive
from tests.support.containerd import oci_image

Log = Callable[[str], None]
PREFIX = "ttcp-ctrd-"
IMAGE = "docker.io/ttcp-test/debian:bookworm"
SYSTEM_RUN = Path("/run/containerd")  # where containerd 1.6 puts shim sockets, runc state and fifos
CONFIG = """\
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""


class CtrdError(Exception):
    """A step failed; the message names it."""


def missing_commands() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [c for c in ("containerd", "ctr", "runc", "ip") if shutil.which(c, path=path) is None]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cgroup_dirs(parent: str) -> list[Path]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            d = Path(left.split()[4]) / parent
            if d.is_dir():
                out.append(d)
    return out


def _mounts_under(d: Path) -> list[str]:
    pts = [ln.split()[4].replace("\\040", " ") for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((p for p in pts if p == str(d) or p.startswith(f"{d}/")), key=len, reverse=True)


def _tree(root: Path) -> list[str]:
    """Every path under `root` (and root itself), as text; [] if it does not exist."""
    if not root.exists():
        return []
    return [str(root), *(str(p) for p in root.rglob("*"))]


class Containerd:
    def __init__(self, log: Log, run_dir: Path | None = None) -> None:
        self.log = log
        if run_dir is None:
            run_dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir="/var/tmp"))
            (run_dir / "system-run-before").write_text("\n".join(_tree(SYSTEM_RUN)))
        self.run_dir = run_dir
        owner = re.match(rf"{PREFIX}(\d+)-", run_dir.name)
        self.cgroup_parent = f"{PREFIX}{owner.group(1) if owner else os.getpid()}"
        self.address = str(self.run_dir / "containerd.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}

    @property
    def state_dir(self) -> Path:
        """containerd's `state` (the /run/containerd of a system one): what --containerd-state names."""
        return self.run_dir / "state"

    def ctr(self, *args: str, ns: str = "default", timeout: float = 120, check: bool = True) -> str:
        cmd = ["ctr", "--address", self.address, "--namespace", ns, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise CtrdError(f"`{' '.join(cmd)}` exited {done.returncode}: {done.stderr.strip()[-800:]}")
        return done.stdout

    def start(self) -> None:
        t0 = time.monotonic()
        (self.run_dir / "config.toml").write_text(CONFIG.format(d=self.run_dir))
        log = open(self.run_dir / "containerd.log", "wb")  # noqa: SIM115 - kept by the child
        cmd = ["containerd", "--config", str(self.run_dir / "config.toml"), "--log-level", "warn"]
        self.log("ctrd: + " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CtrdError(f"containerd exited {self.proc.returncode}: "
                                f"{(self.run_dir / 'containerd.log').read_text()[-1500:]}")
            v = subprocess.run(["ctr", "--address", self.address, "version"], capture_output=True, text=True,
                               timeout=10, check=False)
            if v.returncode == 0:
                self.timings["containerd start"] = time.monotonic() - t0
                self.log(f"ctrd: ready in {self.timings['containerd start']:.2f} s (pid {self.proc.pid})")
                return
            time.sleep(0.05)
        raise CtrdError("containerd did not answer within 30 s")

    def import_image(self, rootfs_tar: Path, ns: str) -> None:
        """IMAGE in namespace `ns` (each namespace has its own images), from a root file system tarball."""
        t0 = time.monotonic()
        layout = self.run_dir / "image.tar"
        if not layout.exists():
            oci_image.write_layout(rootfs_tar, layout, IMAGE)
        self.ctr("image", "import", str(layout), ns=ns, timeout=300)
        self.timings[f"image import ({ns})"] = time.monotonic() - t0

    def run_task(self, cid: str, args: Sequence[str], *, ns: str = "default",
                 annotations: dict[str, str] | None = None, netns: str | None = None,
                 net_host: bool = False) -> None:
        """`ctr run --detach` in our cgroup parent, with the annotations a CRI would set."""
        opts = ["--detach", "--cgroup", f"/{self.cgroup_parent}/{ns}-{cid}"]
        for k, v in (annotations or {}).items():
            opts += ["--annotation", f"{k}={v}"]
        if netns:
            opts += ["--with-ns", f"network:{netns}"]
        if net_host:
            opts.append("--net-host")
        self.ctr("run", *opts, IMAGE, cid, *args, ns=ns)

    def task_pid(self, cid: str, ns: str = "default") -> int:
        for line in self.ctr("task", "ls", ns=ns).splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == cid:
                return int(fields[1])
        raise CtrdError(f"no task {ns}/{cid}")

    def kill_task(self, cid: str, ns: str = "default") -> None:
        """SIGKILL the task and wait until containerd calls it STOPPED (the bundle stays)."""
        self.ctr("task", "kill", "-s", "SIGKILL", cid, ns=ns, check=False)
        for _ in range(100):
            row = [ln.split() for ln in self.ctr("task", "ls", ns=ns, check=False).splitlines()[1:]]
            if not any(r[0] == cid and r[2] != "STOPPED" for r in row if len(r) >= 3):
                return
            time.sleep(0.05)
        raise CtrdError(f"task {ns}/{cid} did not stop")

    def remove_task(self, cid: str, ns: str = "default") -> None:
        """Kill, delete the task, delete the container (what happens when a pod goes away)."""
        self.kill_task(cid, ns)
        self.ctr("task", "delete", cid, ns=ns, check=False)
        self.ctr("container", "delete", cid, ns=ns, check=False)

    def cleanup(self) -> list[str]:
        failed: list[str] = []

        def step(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning, report at the end
                self.log(f"ctrd: cleanup {what} FAILED: {e}")
                failed.append(f"{what}: {e}")

        def content() -> None:
            if self.proc is None or self.proc.poll() is not None:
                return
            for ns in self.ctr("namespaces", "ls", "-q", check=False).split():
                for line in self.ctr("task", "ls", ns=ns, check=False).splitlines()[1:]:
                    self.remove_task(line.split()[0], ns)
                for cid in self.ctr("container", "ls", "-q", ns=ns, check=False).split():
                    self.ctr("container", "delete", cid, ns=ns, check=False)
                for ref in self.ctr("image", "ls", "-q", ns=ns, check=False).split():
                    self.ctr("image", "rm", ref, ns=ns, check=False)

        def daemon() -> None:
            if self.proc is None or self.proc.poll() is not None:
                return
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

        def strays() -> None:
            for _ in range(50):
                pids = {int(p) for p in os.listdir("/proc") if p.isdigit() and str(self.run_dir) in _cmdline(int(p))}
                for d in _cgroup_dirs(self.cgroup_parent):
                    for procs in d.rglob("cgroup.procs"):
                        with contextlib.suppress(OSError, ValueError):
                            pids.update(int(p) for p in procs.read_text().split())
                pids.discard(os.getpid())
                if not pids:
                    return
                for pid in pids:
                    self.log(f"ctrd: kill stray {pid} {_cmdline(pid)[:100]}")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            raise CtrdError("stray processes survive")

        def mounts() -> None:
            for p in _mounts_under(self.run_dir):
                subprocess.run(["umount", "-l", p], check=True, capture_output=True, timeout=30)

        def cgroups() -> None:
            for d in _cgroup_dirs(self.cgroup_parent):
                for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    sub.rmdir()
                d.rmdir()

        def system_run() -> None:
            before_file = self.run_dir / "system-run-before"
            if not before_file.exists():
                return
            before = set(before_file.read_text().splitlines())
            for p in sorted(set(_tree(SYSTEM_RUN)) - before, key=lambda p: p.count("/"), reverse=True):
                path = Path(p)
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # emptied deepest first; an error means something else lives there
                else:
                    path.unlink(missing_ok=True)

        def directory() -> None:
            if _mounts_under(self.run_dir):
                raise CtrdError(f"mounts left under {self.run_dir}")
            shutil.rmtree(self.run_dir)

        for what, fn in (("tasks/containers/images", content), ("stop containerd", daemon),
                         ("stray processes", strays), ("mounts", mounts), ("cgroups", cgroups),
                         ("/run/containerd", system_run), ("run directory", directory)):
            step(what, fn)
        return failed

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        failed = self.cleanup()
        if failed:
            raise CtrdError(f"cleanup incomplete: {failed}")


def remove_leftovers(log: Log, base: Path = Path("/var/tmp")) -> None:
    """Undo runs whose owner process is gone (killed before it could clean up)."""
    for run_dir in sorted(base.glob(f"{PREFIX}*")):
        owner = re.match(rf"{PREFIX}(\d+)-", run_dir.name)
        if owner is None or not run_dir.is_dir() or pid_alive(int(owner.group(1))):
            continue
        log(f"ctrd: removing leftovers of an aborted run ({run_dir})")
        failed = Containerd(log, run_dir).cleanup()
        if failed:
            raise CtrdError(f"leftovers of {run_dir} not fully removed: {'; '.join(failed)}")
