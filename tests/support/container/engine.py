"""A private Docker engine for the container test, and its complete removal.

The daemon gets its own data-root, exec-root, socket, pidfile, cgroup parent
and bridge (in an address range no other interface uses), so it shares no
state with another engine on the machine but the names of iptables chains.
Before it starts, the host state it will change is recorded in the run
directory's state.json; `cleanup_steps` remove every container, process,
mount and cgroup of the run, the bridge, and the firewall rules, sysctls and
files that appeared. A run killed with SIGKILL is cleaned up by the next one
(`remove_leftovers`), from its state.json.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scripts import netns_scenario as scenario
from tests.support.container.host import HostSnapshot

Log = Callable[[str], None]
RUN_PREFIX = "ttcp-docker-"
RUNTIME = "ttcp-runc"
# What the test needs from apt: the engine (dockerd, containerd, runc, docker-proxy, its
# client), debootstrap for the base image, nftables to drop the empty tables dockerd
# leaves, curl for README's API lines.
PACKAGES = ("docker.io", "debootstrap", "nftables", "iproute2", "curl")
COMMANDS = ("dockerd", "containerd", "runc", "docker-proxy", "debootstrap", "ip", "iptables-save", "nft",
            "curl")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
WRAPPER = Path(__file__).with_name("runtime_wrapper.py")


class Unavailable(Exception):
    """The engine cannot run on this machine (no root, no apt, no package): a reason to skip."""


class EngineError(Exception):
    """A step of starting, using or removing the engine failed; the message names the step."""


def run(cmd: Sequence[str], step: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run a command; raise EngineError naming `step` (and the command's stderr) on failure."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineError(f"{step}: {e}") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise EngineError(f"{step}: `{' '.join(cmd)}` exited {done.returncode}: {tail}")
    return done


# ---- packages -------------------------------------------------------------------------------------


def missing_commands() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [c for c in COMMANDS if shutil.which(c, path=path) is None] + (
        [] if docker_client() else ["docker"])


def ensure_packages(log: Log) -> None:
    """Install the engine and debootstrap with apt if a command is missing; Unavailable if we cannot."""
    if os.geteuid() != 0:
        raise Unavailable("the container test runs dockerd and debootstrap: it needs root")
    missing = missing_commands()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Unavailable(f"missing {', '.join(missing)} and no apt-get to install {' '.join(PACKAGES)}")
    log(f"container: installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
        if done.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    still = missing_commands()
    if still:
        raise Unavailable(f"still missing after apt-get install: {', '.join(still)}")


def docker_client() -> str | None:
    """The client shipped with the engine package (another `docker` may come first on PATH)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        files = subprocess.run(["dpkg-query", "-L", "docker.io"], capture_output=True, text=True,
                               timeout=30, check=False).stdout.split()
        for f in files:
            if f.endswith("/bin/docker") and os.access(f, os.X_OK):
                return f
    return shutil.which("docker")


# ---- the run's state -------------------------------------------------------------------------------


@dataclass
class RunState:
    """Everything needed to undo a run, also by a later process if this one is killed."""

    owner_pid: int
    bridge: str
    network: str  # the bridge's /24
    cgroup_parent: str  # a top-level cgroup name
    snapshot: str  # HostSnapshot as JSON
    dockerd_pid: int | None = None

    def save(self, run_dir: Path) -> None:
        tmp = run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, run_dir / "state.json")

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        return cls(**json.loads((run_dir / "state.json").read_text()))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cgroup_dirs(parent: str) -> list[Path]:
    """Our cgroup parent in every mounted cgroup hierarchy (v1 and v2)."""
    dirs = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            d = Path(fields[0].split()[4]) / parent
            if d.is_dir():
                dirs.append(d)
    return dirs


def _kill(pids: set[int], why: str, log: Log) -> None:
    for pid in sorted(pids):
        if pid != os.getpid():
            log(f"cleanup: kill {why} (pid {pid}: {_cmdline(pid)[:120]})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _stray_processes(run_dir: Path, state: RunState) -> set[int]:
    """Processes of this run that outlived dockerd: containerd and shims (they name the run
    directory), container processes (in our cgroup parent), docker-proxy for our bridge."""
    found: set[int] = set()
    net = ipaddress.ip_network(state.network)
    for d in _cgroup_dirs(state.cgroup_parent):
        for procs in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in procs.read_text().split())
    for pid in _pids():
        cmd = _cmdline(pid)
        m = re.search(r"docker-proxy .*-container-ip (\S+)", cmd)
        if str(run_dir) in cmd or (m and ipaddress.ip_address(m.group(1)) in net):
            found.add(pid)
    return found


def _mounts_under(run_dir: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(run_dir) or point.startswith(f"{run_dir}/"):
            out.append(point)
    return sorted(out, key=len, reverse=True)


# ---- cleanup (idempotent: used by the run itself and for leftovers of killed runs) --------------


def stop_daemon(run_dir: Path, state: RunState, client: str | None, log: Log) -> None:
    """Remove every container, then SIGTERM dockerd (by its pid) and wait; SIGKILL if it hangs."""
    pid = state.dockerd_pid
    if pid is None or str(run_dir) not in _cmdline(pid):
        return
    if client is not None:
        env = client_env(run_dir)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            ids = subprocess.run([client, "ps", "-aq"], capture_output=True, text=True, env=env,
                                 timeout=20, check=False).stdout.split()
            if ids:
                log(f"cleanup: remove containers {' '.join(ids)}")
                subprocess.run([client, "rm", "-f", *ids], capture_output=True, env=env, timeout=60,
                               check=False)
    log(f"cleanup: stop dockerd (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while str(run_dir) in _cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if str(run_dir) in _cmdline(pid):
        _kill({pid}, "dockerd that ignored SIGTERM", log)


def cleanup_steps(run_dir: Path, state: RunState, client: str | None,
                  log: Log) -> list[tuple[str, Callable[[], None]]]:
    """The undo actions of a run, in the order they must run."""

    def processes() -> None:
        for _ in range(20):
            stray = _stray_processes(run_dir, state)
            if not stray:
                return
            _kill(stray, "leftover of this run", log)
            time.sleep(0.1)
        raise EngineError(f"processes still alive: {sorted(_stray_processes(run_dir, state))}")

    def mounts() -> None:
        for point in _mounts_under(run_dir):
            run(["umount", "-l", point], f"unmount {point}", timeout=30)

    def cgroups() -> None:
        for d in _cgroup_dirs(state.cgroup_parent):
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                              reverse=True) + [d]:
                sub.rmdir()

    def bridge() -> None:
        scenario.delete_link(state.bridge)

    def host() -> None:
        problems = HostSnapshot.from_json(state.snapshot).restore()
        if problems:
            raise EngineError("; ".join(problems))

    def directory() -> None:
        if _mounts_under(run_dir):
            raise EngineError(f"{run_dir} still has mounts {_mounts_under(run_dir)}: not removed")
        run(["rm", "-rf", "--one-file-system", str(run_dir)], f"remove {run_dir}", timeout=300)

    return [("stop the daemon and its containers", lambda: stop_daemon(run_dir, state, client, log)),
            ("end leftover processes", processes), ("unmount under the run directory", mounts),
            (f"remove cgroup {state.cgroup_parent}", cgroups), (f"delete bridge {state.bridge}", bridge),
            ("restore iptables, sysctls and files", host), (f"remove {run_dir}", directory)]


def remove_leftovers(log: Log, base: Path | None = None) -> None:
    """Undo runs whose owner process is gone (killed before it could clean up)."""
    base = base or runs_base()
    for run_dir in sorted(base.glob(f"{RUN_PREFIX}*")):
        try:
            state = RunState.load(run_dir)
        except (OSError, ValueError, TypeError):
            # Killed before its state was written: nothing outside the directory exists yet.
            m = re.match(rf"{RUN_PREFIX}(\d+)-", run_dir.name)
            if m and not scenario.pid_alive(int(m.group(1))) and not _mounts_under(run_dir):
                log(f"container: removing {run_dir} of an aborted run")
                shutil.rmtree(run_dir, ignore_errors=True)
            continue
        if scenario.pid_alive(state.owner_pid) and state.owner_pid != os.getpid():
            continue
        log(f"container: removing leftovers of an aborted run ({run_dir})")
        teardown = scenario.Teardown(log)
        for what, undo in reversed(cleanup_steps(run_dir, state, docker_client(), log)):
            teardown.push(what, undo)
        failed = teardown.close()
        if failed:
            raise EngineError(f"leftovers of {run_dir} not fully removed: {'; '.join(failed)}")


def runs_base() -> Path:
    """Where run directories live: on disk (/var/tmp), since images are a few hundred MB."""
    return Path(os.environ.get("TTCP_CONTAINER_TMP", "/var/tmp"))


def client_env(run_dir: Path) -> dict[str, str]:
    """The client talks to our daemon only, and keeps its config out of ~/.docker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{run_dir}/docker.sock", DOCKER_CONFIG=str(run_dir / "client"))
    return env


# ---- the engine -------------------------------------------------------------------------------------


class Engine:
    """dockerd started by `start`, its client (`docker`), and the addresses of its bridge.

    `teardown` receives the cleanup steps before anything is created, so an
    interruption at any point leaves nothing behind.
    """

    def __init__(self, teardown: scenario.Teardown, log: Log) -> None:
        self.log = log
        self.teardown = teardown
        client = docker_client()
        if client is None:
            raise Unavailable("no docker client")
        self.client = client
        self.tag = str(os.getpid())
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{self.tag}-", dir=runs_base()))
        net = scenario.pick_network(str(int(self.tag) + 256))
        self.network = net
        self.gateway = str(net[1])  # the bridge: the host's address on it
        self.control = str(net[254])  # a second host address, filtered throughout
        self.state = RunState(os.getpid(), f"ttcpd{self.tag}", str(net), f"ttcp-docker-{self.tag}",
                              HostSnapshot.take().to_json())
        self.state.save(self.run_dir)
        for what, undo in reversed(cleanup_steps(self.run_dir, self.state, self.client, log)):
            teardown.push(what, undo)  # Teardown runs the last pushed first
        self.proc: subprocess.Popen | None = None
        self.version = ""
        self.timings: dict[str, float] = {}

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.run_dir)

    def docker(self, *args: str, step: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return run([self.client, *args], step, timeout=timeout, env=self.env, **kw)

    def start(self) -> None:
        """The bridge, the runtime wrapper, dockerd; returns once the API answers."""
        br, net = self.state.bridge, self.network
        self.log(f"container: bridge {br} {self.gateway}/{net.prefixlen}, control address {self.control}")
        run(["ip", "link", "add", br, "type", "bridge"], f"create bridge {br}")
        run(["ip", "addr", "add", f"{self.gateway}/{net.prefixlen}", "dev", br], "address the bridge")
        run(["ip", "link", "set", br, "up"], "bring the bridge up")
        launcher = self.run_dir / "bin" / RUNTIME
        launcher.parent.mkdir()
        runc = shutil.which("runc", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -I {WRAPPER} {runc} "$@"\n')
        launcher.chmod(0o755)
        (self.run_dir / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json
        d = self.run_dir
        cmd = ["dockerd", "--config-file", f"{d}/daemon.json", "--data-root", f"{d}/data",
               "--exec-root", f"{d}/exec", "-H", f"unix://{d}/docker.sock", "--pidfile", f"{d}/dockerd.pid",
               "--storage-driver", "overlay2", "--bridge", br, "--fixed-cidr", str(next(net.subnets(1))),
               "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", f"/{self.state.cgroup_parent}",
               "--add-runtime", f"{RUNTIME}={launcher}", "--default-runtime", RUNTIME, "--log-level", "warn"]
        env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        env = {k: v for k, v in env.items() if not k.startswith("DOCKER_")}
        log_file = open(d / "dockerd.log", "wb")  # noqa: SIM115 - kept open by the child
        self.log("container: + " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log_file.close()
        self.state.dockerd_pid = self.proc.pid
        self.state.save(self.run_dir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited {self.proc.returncode}: {self.daemon_log()[-1500:]}")
            ping = subprocess.run([self.client, "version", "--format", "{{json .}}"],
                                  capture_output=True, text=True, env=self.env, timeout=20, check=False)
            if ping.returncode == 0:
                info = json.loads(ping.stdout)
                self.version = info["Server"]["Version"]
                parts = ", ".join(f"{c['Name']} {c['Version']}" for c in info["Server"].get("Components", [])
                                  if c["Name"] != "Engine")
                self.log(f"container: dockerd {self.version} ready (pid {self.proc.pid}; {parts}; "
                         f"client {self.client} {info['Client']['Version']})")
                break
            time.sleep(0.2)
        else:
            raise EngineError(f"dockerd did not answer within {START_TIMEOUT_S} s: {self.daemon_log()[-1500:]}")
        # Added after dockerd read the bridge's (first) address, so it does not take this one.
        run(["ip", "addr", "add", f"{self.control}/{net.prefixlen}", "dev", br], "add the control address")

    def daemon_log(self) -> str:
        try:
            return (self.run_dir / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])
