"""The seed's host-and-container scenario, played with real containers.

ttcp runs as README says (`docker run ... -p 127.0.0.1:8090:8090 ttcp`, attached,
table output) and is driven with README's curl lines. The "host's address" is
the bridge address (what the host uses to reach its containers), the web server
is `python3 -m http.server` in a container, the "container" is a client
container on the same bridge.

As in scripts/netns_scenario.py, every step ends with a connection from a
control address (a second host address on the bridge, filtered throughout):
its line proves that ttcp printed everything before it, so "no line" is
observed, not assumed. Each API call goes through Docker's userland proxy,
whose connection to the container starts from the bridge address; so while
that address is filtered, API calls print lines too (the test expects them),
and after each call the test waits until the proxy's connection is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import queue
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from scripts import netns_scenario as scenario
from tests.support import paths
from tests.support.container.engine import Engine, Log
from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.rtt import events

REPO = paths.REPO
API_PORT = 8090
SERVER_PORT = 80
LINE_WAIT_S = 15.0
READY_WAIT_S = 60.0
SCENARIO_IN_CONTAINER = "/scenario/netns_scenario.py"


class SeedError(Exception):
    """A step did not behave as the README promises; the message names the step."""


# ---- README's commands ---------------------------------------------------------------------------


def readme_docker_commands() -> list[list[str]]:
    """Every `docker run` command of README.md (code blocks and inline), split like a shell would."""
    text = (REPO / "README.md").read_text()
    return [shlex.split(m) for m in re.findall(r"(?:^|`)(docker run [^`#\n]+)", text, re.MULTILINE)]


def readme_command(*must: str, without: tuple[str, ...] = ()) -> list[str]:
    """The README's one `docker run` line that contains every word of `must` and none of `without`."""
    found = [c for c in readme_docker_commands() if all(m in c for m in must) and not any(w in c for w in without)]
    if len({tuple(c) for c in found}) != 1:
        raise SeedError(f"README.md should have exactly one `docker run` line with {must} "
                        f"and without {without}, found {found}")
    return found[0]


# ---- ttcp's lines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One table line: `YYYY/MM/DD HH:MM:SS saddr sport -> daddr dport rtt_ms`."""

    saddr: str
    sport: int
    daddr: str
    dport: int
    rtt_ms: float

    @classmethod
    def parse(cls, text: str) -> Line:
        f = text.split()
        if len(f) != 8 or f[4] != "->" or not re.fullmatch(r"\d{4}/\d\d/\d\d", f[0]):
            raise SeedError(f"not an event line: {text!r}")
        return cls(f[2], int(f[3]), f[5], int(f[6]), float(f[7]))


class TtcpContainer:
    """ttcp started by a README `docker run` line, attached: its stdout and stderr are ttcp's."""

    def __init__(self, engine: Engine, cmd: list[str], log: Log) -> None:
        self.engine = engine
        self.log = log
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.id: str | None = None
        log("  $ " + shlex.join(cmd))
        self.started = time.monotonic()
        self.proc = subprocess.Popen([engine.client, *cmd[1:]], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=engine.env)
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        self._err = threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True)
        self._err.start()

    def _pump(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with contextlib.suppress(OSError):
                self.log(f"  ttcp{'' if is_stdout else ' (stderr)'} | {line}")
            (self.stdout if is_stdout else self.stderr).append(line)
            if is_stdout:
                self._lines.put(line)
        if is_stdout:
            self._lines.put(None)

    def next_text(self, timeout: float = LINE_WAIT_S) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise SeedError(f"ttcp printed nothing for {timeout} s; stderr: {self.stderr[-3:]}") from None
        if line is None:
            raise SeedError(f"ttcp's output ended (exit {self.proc.poll()}): {self.stderr[-3:]}")
        return line

    def wait_ready(self) -> float:
        """The header is printed once ttcp is attached and its API listens; seconds until then."""
        header = self.next_text(READY_WAIT_S)
        if header != events.HEADER:
            raise SeedError(f"first line is not the header: {header!r}")
        took = time.monotonic() - self.started
        self.id = self._find_id()
        return took

    def _find_id(self) -> str:
        ids = self.engine.docker("ps", "-q", "--no-trunc", "--filter", "ancestor=ttcp",
                                 step="find ttcp's container").stdout.split()
        if len(ids) != 1:
            raise SeedError(f"expected one running ttcp container, found {ids}")
        return ids[0]

    def inspect(self, fmt: str) -> str:
        return self.engine.docker("inspect", "-f", fmt, self.id or "", step="docker inspect ttcp").stdout.strip()

    def stop(self) -> int:
        """`docker stop` (SIGTERM): the attached `docker run` then exits with ttcp's code."""
        self.log(f"  $ docker stop {self.id[:12] if self.id else '?'}")
        if self.id:
            self.engine.docker("stop", self.id, step="docker stop ttcp", timeout=60)
        code = self.proc.wait(30)
        self._err.join(5)
        return code

    def remove(self) -> None:
        """Cleanup on failure: the container and the client process, whatever state they are in."""
        if self.id:
            subprocess.run([self.engine.client, "rm", "-f", self.id], capture_output=True,
                           env=self.engine.env, timeout=60, check=False)
        scenario.stop_process(self.proc, grace_s=10)


# ---- the API, as README calls it --------------------------------------------------------------------


def curl(method: str, body: str | None = None, path: str = "") -> tuple[int, str]:
    """README's `curl -L http://localhost:8090 -X<METHOD> -d <ADDR>`, with the status appended."""
    cmd = ["curl", "-sS", "-L", f"http://localhost:{API_PORT}{path}", f"-X{method}"]
    cmd += ["-d", body] if body is not None else []
    done = subprocess.run(cmd + ["-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise SeedError(f"{shlex.join(cmd)}: {done.stderr.strip()}")
    text, _, code = done.stdout.rpartition("\n")
    return int(code), text


def healthz() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{API_PORT}/healthz", timeout=10) as r:
        return json.loads(r.read())


def _proc_net_addr(addr: str, port: int) -> str:
    return f"{int.from_bytes(socket.inet_aton(addr), sys.byteorder):08X}:{port:04X}"


def wait_proxy_idle(ttcp_ip: str, limit_s: float = 10.0) -> None:
    """Wait until the host holds no connection to ttcp's API but TIME_WAIT ones (the proxy's
    side is destroyed, so its line, if any, is already in ttcp's ring)."""
    remote = _proc_net_addr(ttcp_ip, API_PORT)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        rows = [r.split() for r in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        if not any(r[2] == remote and r[3] not in ("06", "0A") for r in rows):
            return
        time.sleep(0.01)
    raise SeedError(f"a connection to {ttcp_ip}:{API_PORT} still open after {limit_s} s")


# ---- BPF objects of the ttcp container -----------------------------------------------------------------

_FDINFO_ID = re.compile(r"^(prog|map|link)_id:\s+(\d+)$", re.MULTILINE)
_OPEN_BY_ID = {"prog": syscalls.prog_get_fd_by_id, "map": syscalls.map_get_fd_by_id,
               "link": syscalls.link_get_fd_by_id}


def bpf_ids_held_by(pid: int) -> set[tuple[str, int]]:
    """(kind, id) of every BPF program, map and link a process holds an fd of."""
    held = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            held.update((k, int(i)) for k, i in _FDINFO_ID.findall(info.read_text()))
    return held


def bpf_alive(objs: set[tuple[str, int]], grace_s: float = 5.0) -> set[tuple[str, int]]:
    """Those of `objs` still in the kernel after a grace period (freeing is asynchronous)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = set()
        for kind, obj_id in objs:
            try:
                syscalls.close(_OPEN_BY_ID[kind](obj_id))
            except BpfError as e:
                if e.errno != errno.ENOENT:
                    raise
                continue
            alive.add((kind, obj_id))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


# ---- the scenario --------------------------------------------------------------------------------------


@dataclass
class Plan:
    host: str  # the bridge address
    control: str  # a second bridge address of the host, filtered throughout
    server: str  # the web server container
    client: str  # the client container
    client_name: str
    ttcp: str = ""  # ttcp's container


@dataclass
class Step:
    """What one step's client did (None for API-only steps) and the lines before its control line."""

    client: dict | None
    lines: list[Line]


@dataclass
class Record:
    plan: Plan | None = None
    ready_s: float = 0.0
    steps: dict[int, Step] = field(default_factory=dict)
    controls: list[Line] = field(default_factory=list)
    health: dict = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)  # `docker logs` stdout before the stop
    exit_code: int | None = None
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    bpf_held: set[tuple[str, int]] = field(default_factory=set)
    bpf_left: set[tuple[str, int]] = field(default_factory=set)


def host_client(plan: Plan) -> dict:
    return scenario.connect(plan.server, SERVER_PORT, source=plan.host)


def container_client(engine: Engine, plan: Plan) -> dict:
    out = engine.docker("exec", plan.client_name, "python3", SCENARIO_IN_CONTAINER, "connect", plan.server,
                        str(SERVER_PORT), step="client container fetches").stdout
    return json.loads(out)


class Seed:
    """Plays the eight steps against a running ttcp container."""

    def __init__(self, engine: Engine, ttcp: TtcpContainer, plan: Plan, record: Record, log: Log) -> None:
        self.engine, self.ttcp, self.plan, self.record, self.log = engine, ttcp, plan, record, log

    def api(self, method: str, addr: str, expect: int = 204) -> None:
        self.log(f"  $ curl -L http://localhost:{API_PORT} -X{method} -d {addr}")
        status, body = curl(method, addr)
        if status != expect:
            raise SeedError(f"{method} {addr}: HTTP {status} {body[:200]!r}")
        wait_proxy_idle(self.plan.ttcp)

    def filters(self) -> list[str]:
        status, body = curl("GET")
        wait_proxy_idle(self.plan.ttcp)
        if status != 200:
            raise SeedError(f"GET /: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def observe(self, n: int, client: Callable[[], dict] | None) -> Step:
        """Run the step's client (if any), then a control connection; the lines before the control's."""
        done = client() if client is not None else None
        if done is not None:
            if not done["status"].startswith("HTTP/1.0 200"):
                raise SeedError(f"step {n}: the client got {done['status']!r}")
            self.log(f"  client {done['saddr']}:{done['sport']} -> {done['daddr']}:{done['dport']}")
        control = scenario.connect(self.plan.server, SERVER_PORT, source=self.plan.control)
        lines = []
        while True:
            line = Line.parse(self.ttcp.next_text())
            if (line.saddr, line.sport) == (control["saddr"], control["sport"]):
                self.record.controls.append(line)
                step = Step(done, lines)
                self.record.steps[n] = step
                return step
            lines.append(line)

    def expect_client_line(self, n: int, step: Step) -> None:
        c = step.client
        assert c is not None
        if len(step.lines) != 1:
            raise SeedError(f"step {n}: expected one line, got {step.lines}")
        line = step.lines[0]
        want = (c["saddr"], c["sport"], self.plan.server, SERVER_PORT)
        if (line.saddr, line.sport, line.daddr, line.dport) != want or not 0 < line.rtt_ms < 1000:
            raise SeedError(f"step {n}: got {line}, expected {want} with 0 < RTT < 1 s")

    def expect_none(self, n: int, step: Step) -> None:
        if step.lines:
            raise SeedError(f"step {n}: expected no line, got {step.lines}")

    def play(self) -> None:
        p, log = self.plan, self.log
        log(f"step 1: ttcp ready ({self.record.ready_s:.2f} s to the header), in container {p.ttcp}; "
            f"control address {p.control} filtered throughout")
        self.api("PUT", p.control)
        self.expect_none(1, self.observe(1, None))

        log(f"step 2: add the host's address {p.host} (the bridge address)")
        self.api("PUT", p.host)
        if p.host not in self.filters():
            raise SeedError(f"step 2: GET does not list {p.host}")
        step = self.observe(2, None)
        # The PUT's and the GET's proxied connections (from the bridge address) now match.
        if [(x.saddr, x.daddr, x.dport) for x in step.lines] != [(p.host, p.ttcp, API_PORT)] * 2:
            raise SeedError(f"step 2: expected the PUT's and the GET's proxy lines, got {step.lines}")

        log(f"step 3: the host fetches http://{p.server}/ -> one line with source {p.host}")
        self.expect_client_line(3, self.observe(3, lambda: host_client(p)))

        log(f"step 4: remove {p.host}")
        self.api("DELETE", p.host)
        if p.host in self.filters():
            raise SeedError(f"step 4: GET still lists {p.host}")
        self.expect_none(4, self.observe(4, None))

        log("step 5: the host fetches again -> no line")
        self.expect_none(5, self.observe(5, lambda: host_client(p)))

        log(f"step 6: the client container ({p.client}) fetches -> no line")
        self.expect_none(6, self.observe(6, lambda: container_client(self.engine, p)))

        log(f"step 7: add the container's address {p.client}")
        self.api("PUT", p.client)
        self.expect_none(7, self.observe(7, None))

        log("step 8: the client container fetches -> one line")
        self.expect_client_line(8, self.observe(8, lambda: container_client(self.engine, p)))
