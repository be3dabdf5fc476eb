"""Shared pieces of the ttcp benchmarks: addresses, child processes, the
connection generator, the tracers compared, and small statistics helpers.

All benchmark traffic uses 127.0.7.0/24 (other suites on this machine use
other loopback addresses), and every process is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

SERVER = "127.0.7.1"  # connload servers and the ttcp API
CLIENT_BASE = "127.0.7.2"  # clients rotate over 127.0.7.2 .. 127.0.7.9
CLIENT_COUNT = 8
OTHER_SERVER = "127.0.7.21"  # never in ttcp's filter: the non-matching traffic
OTHER_CLIENT = "127.0.7.22"
PORT_LOAD = 24650  # outside the ephemeral range, so a port identifies our traffic
PORT_PROBE = 24651
PORT_OTHER = 24652
PORT_API = 24660
FILTERS = [SERVER] + [f"127.0.7.{2 + i}" for i in range(CLIENT_COUNT)]
PREVIOUS = "d4ff9a7"  # the release before filter kinds and histograms: issue 12's "today"
BEFORE_WORKLOADS = "81780da"  # the program before workload filters: issue 22's "today"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PortParser = Callable[[str], "tuple[int, int] | None"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- statistics ----------------------------------------------------------------------


def median(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_xs:
        return None
    rank = max(1, min(len(sorted_xs), round(q / 100 * len(sorted_xs) + 0.5)))
    return sorted_xs[rank - 1]


def api_client_options(doc: str, seconds: float = 5.0) -> argparse.ArgumentParser:
    """The options of a process that loads ttcp's API: where it listens, the clients'
    source address, for how long; the caller adds its own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--src", required=True, help="client source address")
    ap.add_argument("--seconds", type=float, default=seconds)
    return ap


# ---- /proc ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads, dead ones included)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM: the peak resident set size of a live process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def status(pid: int) -> dict[str, int]:
    """Numeric fields of /proc/PID/status (kB sizes, context switches of the main thread)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def bpf_map_rss_kb(pid: int) -> int:
    """Resident kB of the process's BPF map mappings (the ring buffer's data is mapped twice)."""
    total, in_map = 0, False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                in_map = line.rstrip().endswith("bpf-map")
            elif in_map and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def prog_stats(pid: int) -> dict[int, tuple[int, int]]:
    """prog id -> (run_time_ns, run_cnt) for every BPF program `pid` holds an fd of.

    Read from /proc/PID/fdinfo; the counters move only while some process
    keeps BPF_ENABLE_STATS on (run.py does for the whole benchmark).
    """
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/fdinfo"):
            try:
                with open(entry.path) as f:
                    text = f.read()
            except OSError:
                continue
            ids = re.search(r"^prog_id:\s+(\d+)", text, re.MULTILINE)
            ns = re.search(r"^run_time_ns:\s+(\d+)", text, re.MULTILINE)
            cnt = re.search(r"^run_cnt:\s+(\d+)", text, re.MULTILINE)
            if ids and ns and cnt:
                out[int(ids.group(1))] = (int(ns.group(1)), int(cnt.group(1)))
    return out


def stats_delta(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """Summed (run_time_ns, run_cnt) gained by the programs present in both snapshots."""
    ns = cnt = 0
    for pid_, (a_ns, a_cnt) in after.items():
        b_ns, b_cnt = before.get(pid_, (a_ns, a_cnt))
        ns += a_ns - b_ns
        cnt += a_cnt - b_cnt
    return ns, cnt


# ---- child processes -------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None, pycache: Path | None = None) -> dict[str, str]:
    """The environment of tools we start.

    Byte-code caching is turned back on (this machine exports
    PYTHONDONTWRITEBYTECODE=1, under which every Python start recompiles every
    module) with the cache kept in the work directory, so Python tools start
    as they would from an installed package once a warm-up run has filled it.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env.update(extra or {})
    return env


def handle_sigint() -> None:
    """Make SIGINT reach the tools we start (they stop on it).

    A background job of a non-interactive shell starts with SIGINT ignored,
    and exec keeps it ignored in children; a handled signal is reset to the
    default action at exec instead.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_process(p: subprocess.Popen, sig: int = signal.SIGINT, grace: float = 15.0) -> float:
    """Stop one child we started, by PID; returns the seconds it took to exit."""
    t0 = time.monotonic()
    for s, wait_s in ((sig, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if p.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=wait_s)
    return time.monotonic() - t0


# ---- load generator ---------------------------------------------------------------------


def probe(port: int = PORT_PROBE) -> None:
    """One connection from a filtered client address; waits for the server's FIN."""
    with contextlib.suppress(OSError), socket.socket() as s:
        s.settimeout(1.0)
        s.bind((CLIENT_BASE, 0))
        s.connect((SERVER, port))
        s.recv(1)


@contextlib.contextmanager
def bench_cgroup() -> Iterator[str | None]:
    """This process (and the servers and clients it starts from here on) in the
    cgroup-v2 cgroup /ttcp-bench-PID/load, two levels down as a service's or a
    session's processes usually are, so that a cgroup filter's walk has levels to
    climb; put back and removed at the end. None (nothing moved) without cgroup v2."""
    from ttcp.workloads.cgroupfs import CgroupTree
    tree = CgroupTree.find()
    if isinstance(tree, str):
        yield None
        return
    home = next((ln[3:] for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::")), "/")
    top = f"/ttcp-bench-{os.getpid()}"
    made = [top, f"{top}/load", f"{top}/other"]
    try:
        for path in made[:2]:
            tree.dir_of(path).mkdir(exist_ok=True)
        (tree.dir_of(made[1]) / "cgroup.procs").write_text(str(os.getpid()))
        yield made[1]
    finally:
        with contextlib.suppress(OSError):
            (tree.dir_of(home) / "cgroup.procs").write_text(str(os.getpid()))
        for path in reversed(made):
            with contextlib.suppress(FileNotFoundError):
                tree.dir_of(path).rmdir()
        tree.close()


class LoadGen:
    """connload (bench/connload.c) built into the work directory; its servers."""

    def __init__(self, workdir: Path) -> None:
        cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
        if cc is None:
            raise SystemExit("bench: no C compiler (gcc, cc or clang) to build connload")
        self.exe = workdir / "connload"
        subprocess.run([cc, "-O2", "-Wall", "-o", str(self.exe), str(BENCH / "connload.c")],
                       check=True)
        self.servers: list[subprocess.Popen] = []

    def serve(self, addr: str, port: int) -> None:
        p = subprocess.Popen([str(self.exe), "server", addr, str(port)], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
        self.servers.append(p)
        line = p.stdout.readline().decode().split() if p.stdout else []
        if line != ["listening", addr, str(port)]:
            raise SystemExit(f"bench: connload server on {addr}:{port} did not start ({line})")

    def client(self, n: int, src: str = CLIENT_BASE, nsrc: int = CLIENT_COUNT, dst: str = SERVER,
               port: int = PORT_LOAD, procs: int = 1) -> tuple[float, int, float]:
        """n connections as fast as they go: (connections/s, failures, seconds)."""
        r = subprocess.run([str(self.exe), "client", src, str(nsrc), dst, str(port), str(n), str(procs)],
                           capture_output=True, text=True, check=False)
        f = r.stdout.split()
        if len(f) != 4:
            raise RuntimeError(f"connload client failed: {r.stdout!r} {r.stderr!r}")
        return float(f[2]), int(f[3]), float(f[1])

    def close(self) -> None:
        for p in self.servers:
            stop_process(p, signal.SIGTERM, grace=3.0)
        self.servers.clear()


# ---- the tracers ------------------------------------------------------------------------


def parse_ttcp(line: str) -> tuple[int, int] | None:
    # DATE TIME SADDR SPORT -> DADDR DPORT RTT
    f = line.split()
    if len(f) != 8 or f[4] != "->":
        return None
    try:
        return int(f[3]), int(f[6])
    except ValueError:
        return None


def parse_tcplife(line: str) -> tuple[int, int] | None:
    # PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS (COMM may hold spaces: count from the end)
    f = line.split()
    if len(f) < 9:
        return None
    try:
        return int(f[-6]), int(f[-4])
    except ValueError:
        return None


def parse_bt(line: str) -> tuple[int, int] | None:
    # end LPORT RPORT SRTT_US (the bpftrace programs below)
    f = line.split()
    if len(f) != 4 or f[0] != "end":
        return None
    try:
        return int(f[1]), int(f[2])
    except ValueError:
        return None


# tcp_destroy_sock is the hook ttcp uses here (tp_btf); inet_sock_set_state the classic one.
BT_DESTROY = ('tracepoint:tcp:tcp_destroy_sock { printf("end %d %d %u\\n", args->sport, '
              'args->dport, ((struct tcp_sock *)args->skaddr)->srtt_us >> 3); }')
BT_SET_STATE = ('tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->newstate == 7/ '
                '{ printf("end %d %d %u\\n", args->sport, args->dport, '
                '((struct tcp_sock *)args->skaddr)->srtt_us >> 3); }')


@dataclass
class Tool:
    name: str
    argv: list[str]
    parse: PortParser
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGINT
    note: str = ""
    python: bool = False  # a Python program: gets the byte-code cache environment

    @property
    def exe(self) -> str:
        return self.argv[2] if self.argv[0] == "stdbuf" else self.argv[0]

    def available(self) -> bool:
        return Path(self.exe).exists() or shutil.which(self.exe) is not None


def ttcp_argv(extra: Iterable[str] = (), filters: Iterable[str] = FILTERS) -> list[str]:
    script = Path(sys.executable).parent / "ttcp"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "ttcp"]
    args = ["--host", SERVER, "--port", str(PORT_API)]
    for a in filters:
        args += ["--filter", a]
    return base + args + list(extra)


def kernel_headers_tree(workdir: Path) -> tuple[Path, str] | None:
    """A kernel source tree for bcc when the running kernel ships no headers.

    Debian's newest linux-headers-*-amd64 and its -common part are merged with
    symlinks. Struct layouts are that kernel's, not the running one's: the
    tracepoint fields tcplife prints are right, its byte counters are not.
    Returns the tree and the name of the headers it came from.
    """
    if Path(f"/lib/modules/{os.uname().release}/build").exists():
        return None
    arch = sorted(p for p in Path("/usr/src").glob("linux-headers-*-amd64")
                  if "-rt-" not in p.name and "-cloud-" not in p.name)
    if not arch:
        return None
    common = arch[-1].with_name(arch[-1].name.removesuffix("-amd64") + "-common")
    if not common.is_dir():
        return None
    tree = workdir / "kernel-headers"
    for src in (common, arch[-1]):  # the arch part wins where both have a file
        for dirpath, _dirs, files in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            (tree / rel).mkdir(parents=True, exist_ok=True)
            for name in files:
                dst = tree / rel / name
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                dst.symlink_to(Path(dirpath) / name)
    return tree, arch[-1].name


def ttcp_tool() -> Tool:
    return Tool("ttcp", ttcp_argv(), parse_ttcp, {"TTCP_TIMINGS": "1"}, signal.SIGTERM,
                "tp_btf/tcp_destroy_sock (auto, fentry refused here), filter of 9 addresses", python=True)


def tools(workdir: Path, only: str = "") -> list[Tool]:
    """ttcp and the tools users would pick instead, in measuring order."""
    found = [
        ttcp_tool(),
        Tool("libbpf tcplife", ["stdbuf", "-oL", "/usr/sbin/tcplife"], parse_tcplife,
             note="libbpf-tools, tracepoint sock/inet_sock_set_state, every TCP socket"),
        Tool("bpftrace destroy_sock", ["bpftrace", "-B", "line", "-e", BT_DESTROY], parse_bt,
             note="one-liner on tcp:tcp_destroy_sock printing ports and srtt"),
        Tool("bpftrace set_state", ["bpftrace", "-B", "line", "-e", BT_SET_STATE], parse_bt,
             note="one-liner on sock:inet_sock_set_state (newstate CLOSE)"),
    ]
    bcc = Tool("bcc tcplife", ["/usr/sbin/tcplife-bpfcc"], parse_tcplife, python=True,
               note="bcc, compiles its C with clang at every start")
    hdrs = kernel_headers_tree(workdir) if bcc.available() else None
    if hdrs is not None:
        bcc.env["BCC_KERNEL_SOURCE"] = str(hdrs[0])
        bcc.note += (f"; no headers for this kernel, so Debian's {hdrs[1]} (merged with its "
                     "-common part) via BCC_KERNEL_SOURCE")
    found.append(bcc)
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        found = [t for t in found if t.name == "ttcp" or any(w in t.name for w in wanted)]
    return found


class ToolRun:
    """One start of a tool; stdout to a pipe (start-up runs) or a file (load runs)."""

    def __init__(self, tool: Tool, workdir: Path, tag: str, *, pipe: bool, pycache: Path) -> None:
        self.tool = tool
        slug = re.sub(r"[^A-Za-z0-9]+", "_", tool.name)
        self.out_path = workdir / f"{slug}.{tag}.out"
        self.err_path = workdir / f"{slug}.{tag}.err"
        env = child_env(tool.env, pycache if tool.python else None)
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.t0 = time.monotonic()
            self.p = subprocess.Popen(tool.argv, stdout=subprocess.PIPE if pipe else out, stderr=err,
                                      stdin=subprocess.DEVNULL, env=env)
        self._pos = 0
        self._partial = b""
        self.header_t: float | None = None
        self.event_t: float | None = None
        self.counts = {PORT_LOAD: 0, PORT_PROBE: 0}
        self.server_side = self.client_side = 0
        self.stop_s: float | None = None
        if pipe and self.p.stdout is not None:
            os.set_blocking(self.p.stdout.fileno(), False)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def _lines(self, data: bytes, now: float) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"), now)

    def _line(self, line: str, now: float) -> None:
        if self.header_t is None and line.strip():
            self.header_t = now - self.t0
        ports = self.tool.parse(line)
        if ports is None:
            return
        lport, rport = ports
        if PORT_PROBE in ports and self.event_t is None:
            self.event_t = now - self.t0
        if lport == PORT_LOAD:
            self.server_side += 1
        elif rport == PORT_LOAD:
            self.client_side += 1

    def poll(self, timeout: float = 0.0) -> None:
        """Read what the tool printed since the last call."""
        now = time.monotonic()
        if self.p.stdout is not None:
            fd = self.p.stdout.fileno()
            if select.select([fd], [], [], timeout)[0]:
                with contextlib.suppress(BlockingIOError):
                    data = os.read(fd, 1 << 20)
                    self._lines(data, time.monotonic())
            return
        if timeout:
            time.sleep(timeout)
        with open(self.out_path, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        if data:
            self._lines(data, now)

    def events(self) -> int:
        return self.server_side + self.client_side

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.01) -> bool:
        """Probe connections until the tool reports one (event_t); False on exit or timeout."""
        next_probe = 0.0
        while time.monotonic() - self.t0 < timeout:
            now = time.monotonic()
            if now >= next_probe:
                probe()
                next_probe = now + interval
            self.poll(0.002)
            if self.event_t is not None:
                return True
            if not self.alive():
                self.poll()
                return self.event_t is not None
        return False

    def drain(self, expected: int, quiet: float = 2.0, limit: float = 90.0) -> None:
        """Wait until `expected` load events are read, or nothing new came for `quiet` s."""
        start = last_change = time.monotonic()
        last = -1
        while time.monotonic() - start < limit:
            self.poll(0.05)
            got = self.events()
            if got >= expected:
                return
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > quiet:
                return

    def stop(self) -> None:
        self.stop_s = stop_process(self.p, self.tool.stop_signal)
        if self.p.stdout is not None:
            with contextlib.suppress(OSError):
                os.set_blocking(self.p.stdout.fileno(), True)
                self._lines(self.p.stdout.read() or b"", time.monotonic())
            self.p.stdout.close()
        else:
            self.poll()
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace"), time.monotonic())
            self._partial = b""

    def stderr_text(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""
