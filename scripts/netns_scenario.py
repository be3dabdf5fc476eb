#!/usr/bin/env python3
"""Play README's host-and-container scenario with network namespaces.

    sudo python3 scripts/netns_scenario.py            # watch it, step by step

ttcp runs in an "agent" namespace (the privileged container) and must still
report the connections of the host (the root namespace) and of another
"container" namespace, because its program runs in the kernel, not in a
namespace. Topology, all in one 198.18.N.0/24 picked per run:

    root ns (host client .1, API caller .4, control .5) --+
    agent ns  (ttcp, API on .2:8090)                    --+-- bridge (gw ns, .126)
    ctr ns    (container client .3)                     --+     | routes
                                                              srv ns (web server .130:80)

Every client connection is followed by a "control" connection from .5 (a
filtered address) whose line proves that ttcp printed everything that came
before it; so "no line" is an observation, not a timeout.

Everything created (namespaces, links, processes) is removed in reverse order
on success, failure or Ctrl-C; leftovers of an earlier aborted run (its pid is
gone) are removed first. Stdlib only: the script also runs the clients and the
web server inside the namespaces (the `connect` and `serve` subcommands).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
NS_PREFIX = "ttcpsc"  # namespaces: ttcpsc<tag>-<role>
LINK_PREFIX = "tsc"  # the root-side veth: tsc<tag>h (interface names are at most 15 bytes)
ROLES = ("gw", "agent", "ctr", "srv")  # creation order; removal is the reverse
RANGE = ipaddress.ip_network("198.18.0.0/15")
SERVER_PORT = 80
API_PORT = 8090
MAX_RTT_US = 1_000_000
API_WAIT_S = 30.0
LINE_WAIT_S = 10.0
CLIENT_TIMEOUT_S = 15.0
HTTP_RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"

Log = Callable[[str], None]


def say(text: str) -> None:
    """The default log: print and flush, so `| tee` and a reading test see each line at once."""
    print(text, flush=True)


class ScenarioError(Exception):
    """A step did not behave as the README promises, or the setup failed."""


# ---- inside the namespaces: the web server and the client ---------------------------


def serve(addr: str, port: int) -> None:
    """A tiny HTTP/1.0 server: answer every request with "ok" and close first.

    Closing first puts the server's side in TIME_WAIT and lets the client's
    socket be destroyed as soon as its own FIN is acknowledged.
    """
    with socket.create_server((addr, port), backlog=64) as srv:
        print("ready", flush=True)
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    _read_request(conn)
                    conn.sendall(HTTP_RESPONSE)


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def connect(dst: str, port: int, source: str | None = None) -> dict:
    """GET / from dst:port and return what ttcp should report for it.

    Returns only once the kernel has destroyed the socket (it left
    /proc/net/tcp), so any event for it is already in ttcp's ring buffer.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((dst, port))
        saddr, sport = sock.getsockname()
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    _wait_socket_gone(saddr, sport, port)
    return {"saddr": saddr, "sport": sport, "daddr": dst, "dport": port,
            "netns": os.stat("/proc/self/ns/net").st_ino,
            "status": reply.split(b"\r\n", 1)[0].decode(errors="replace")}


def _proc_net_addr(addr: str) -> str:
    """An IPv4 address as /proc/net/tcp shows it: the raw 32-bit word in host byte order."""
    return f"{int.from_bytes(socket.inet_aton(addr), sys.byteorder):08X}"


def _wait_socket_gone(saddr: str, sport: int, dport: int, limit_s: float = 5.0) -> None:
    """Wait until no socket but a TIME_WAIT one has this local address and these ports here."""
    local, remote = f"{_proc_net_addr(saddr)}:{sport:04X}", f":{dport:04X}"
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        rows = [r.split() for r in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        if not any(r[1] == local and r[2].endswith(remote) and r[3] != "06"
                   for r in rows):
            return
        time.sleep(0.01)
    raise ScenarioError(f"socket with local port {sport} still alive after {limit_s} s")


# ---- the plan: names and addresses of one run -----------------------------------------


@dataclass(frozen=True)
class Plan:
    """Names and addresses of one run, all derived from its tag and its /24:
    clients in the lower /25 (bridged), the web server in the upper one (routed)."""

    tag: str
    net: ipaddress.IPv4Network  # a /24 inside 198.18.0.0/15
    host: str  # .1, the host's client (root namespace)
    agent: str  # .2, where ttcp's API listens
    container: str  # .3
    operator: str  # .4, root namespace: the API caller, never filtered
    control: str  # .5, root namespace: filtered throughout; its line marks "printed so far"
    gateway: str  # .126, the bridge in the gw namespace
    server_gw: str  # .129, the gw namespace's side of the server link
    server: str  # .130

    @classmethod
    def of(cls, tag: str, net: ipaddress.IPv4Network) -> Plan:
        hosts = {"host": 1, "agent": 2, "container": 3, "operator": 4, "control": 5,
                 "gateway": 126, "server_gw": 129, "server": 130}
        return cls(tag, net, **{name: str(net[n]) for name, n in hosts.items()})

    def ns(self, role: str) -> str:
        return f"{NS_PREFIX}{self.tag}-{role}"

    @property
    def host_link(self) -> str:
        return f"{LINK_PREFIX}{self.tag}h"


def pick_network(tag: str) -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no address or route of the root namespace touches.

    Starts from a slot derived from the tag so parallel runs spread out.
    """
    used = _root_networks()
    slots = list(RANGE.subnets(new_prefix=24))
    start = int(tag) % len(slots) if tag.isdigit() else 0
    for i in range(len(slots)):
        net = slots[(start + i) % len(slots)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise ScenarioError("every /24 of 198.18.0.0/15 is in use in the root namespace")


def _root_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for entry in json.loads(run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for a in entry.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for r in json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        dst = r.get("dst", "")
        if dst and dst != "default" and ":" not in dst:
            nets.append(ipaddress.ip_network(dst, strict=False))
    return nets


# ---- commands and cleanup -------------------------------------------------------------


def run(cmd: list[str], log: Log | None = None, timeout: float = 30) -> str:
    """Run a command, return its stdout; raise ScenarioError with its stderr on failure."""
    if log is not None:
        log("  + " + " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScenarioError(f"{' '.join(cmd)}: {e}") from e
    if done.returncode != 0:
        raise ScenarioError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def in_ns(ns: str | None, cmd: list[str]) -> list[str]:
    return cmd if ns is None else ["ip", "netns", "exec", ns, *cmd]


class Teardown:
    """Undo actions, run in reverse order; one failing does not stop the others."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError):  # a closed stdout (`| head`) must not stop the cleanup
            self.log(text)

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self._undo.append((what, undo))

    def close(self) -> list[str]:
        """Run every undo action (signals blocked, so a second Ctrl-C cannot cut
        the cleanup short); return the ones that failed."""
        failed = []
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            while self._undo:
                what, undo = self._undo.pop()
                self._say(f"cleanup: {what}")
                try:
                    undo()
                except Exception as e:  # noqa: BLE001 - keep cleaning, report at the end
                    self._say(f"cleanup: {what} FAILED: {e}")
                    failed.append(f"{what}: {e}")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return failed


def namespaces() -> list[str]:
    out = run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> int:
    """Signal a child we started, wait, and kill it if it does not go."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _kill_pid(pid: int, grace_s: float = 3.0) -> None:
    """End a process by id: SIGTERM, then SIGKILL after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def delete_namespace(name: str) -> None:
    """End the processes left in a namespace of ours, then delete it (and its links)."""
    if name not in namespaces():
        return
    for pid in run(["ip", "netns", "pids", name]).split():
        _kill_pid(int(pid))
    run(["ip", "netns", "delete", name])


def delete_link(name: str) -> None:
    if os.path.exists(f"/sys/class/net/{name}"):
        run(["ip", "link", "delete", name])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(tag: str, log: Log) -> None:
    """Remove namespaces and links of earlier runs whose process is gone
    (or that carry this run's own tag: an earlier run in this process)."""
    ns_re = re.compile(rf"^{NS_PREFIX}(\d+)-")
    link_re = re.compile(rf"^{LINK_PREFIX}(\d+)h$")
    for names, pattern, delete in ((namespaces(), ns_re, delete_namespace), (links(), link_re, delete_link)):
        for name in names:
            m = pattern.match(name)
            if m and (m.group(1) == tag or not pid_alive(int(m.group(1)))):
                log(f"removing leftover {name} of an aborted run")
                delete(name)


# ---- building the topology ------------------------------------------------------------


def build_topology(plan: Plan, teardown: Teardown, log: Log, record: Record) -> None:
    """Namespaces, veths, a bridge and routes; each undo is registered right after creation."""
    gw = plan.ns("gw")
    for role in ROLES:
        name = plan.ns(role)
        # Registered first: an interrupt between the two must not leak it (the undo is idempotent
        # and also ends any process left inside, so every child we start is covered too).
        teardown.push(f"delete namespace {name}", lambda n=name: delete_namespace(n))
        run(["ip", "netns", "add", name], log)
        record.netns[role] = os.stat(f"/run/netns/{name}").st_ino
        run(["ip", "-n", name, "link", "set", "lo", "up"], log)
    teardown.push(f"delete link {plan.host_link}", lambda: delete_link(plan.host_link))
    run(["ip", "link", "add", plan.host_link, "type", "veth", "peer", "name", "p-host", "netns", gw], log)
    for role in ("agent", "ctr", "srv"):
        run(["ip", "link", "add", "eth0", "netns", plan.ns(role), "type", "veth",
             "peer", "name", f"p-{role}", "netns", gw], log)
    _configure_gateway(plan, log)
    _configure_root(plan, log)
    for role, addr, via in (("agent", plan.agent, plan.gateway), ("ctr", plan.container, plan.gateway),
                            ("srv", plan.server, plan.server_gw)):
        ns = plan.ns(role)
        run(["ip", "-n", ns, "addr", "add", f"{addr}/25", "dev", "eth0"], log)
        run(["ip", "-n", ns, "link", "set", "eth0", "up"], log)
        run(["ip", "-n", ns, "route", "add", "default", "via", via], log)


def _configure_gateway(plan: Plan, log: Log) -> None:
    """The gw namespace: a bridge for the clients' /25 and a routed link to the server's /25."""
    gw = plan.ns("gw")
    run(["ip", "-n", gw, "link", "add", "br0", "type", "bridge"], log)
    run(["ip", "-n", gw, "addr", "add", f"{plan.gateway}/25", "dev", "br0"], log)
    run(["ip", "-n", gw, "link", "set", "br0", "up"], log)
    for port in ("p-host", "p-agent", "p-ctr"):
        run(["ip", "-n", gw, "link", "set", port, "master", "br0", "up"], log)
    run(["ip", "-n", gw, "addr", "add", f"{plan.server_gw}/25", "dev", "p-srv"], log)
    run(["ip", "-n", gw, "link", "set", "p-srv", "up"], log)
    run(in_ns(gw, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]), log)


def _configure_root(plan: Plan, log: Log) -> None:
    """The host's side: its client address, the API caller, the control address,
    and a route to the server's /25 (removed with the link)."""
    for addr in (plan.host, plan.operator, plan.control):
        run(["ip", "addr", "add", f"{addr}/25", "dev", plan.host_link], log)
    run(["ip", "link", "set", plan.host_link, "up"], log)
    server_net = f"{plan.net[128]}/25"
    run(["ip", "route", "add", server_net, "via", plan.gateway, "dev", plan.host_link, "src", plan.host], log)


# ---- ttcp, the server, the clients, the API ---------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def start_server(plan: Plan, teardown: Teardown, log: Log, record: Record) -> None:
    cmd = in_ns(plan.ns("srv"), [sys.executable, str(SCRIPT), "serve", plan.server, str(SERVER_PORT)])
    log("  + " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    record.pids.append(proc.pid)
    teardown.push(f"stop web server (pid {proc.pid})", lambda: stop_process(proc, grace_s=5))
    ready = proc.stdout.readline() if proc.stdout else ""
    if ready.strip() != "ready":
        raise ScenarioError(f"the web server did not start (exit {proc.poll()})")


class Agent:
    """ttcp running in the agent namespace; its stdout lines are parsed as they come."""

    def __init__(self, plan: Plan, log: Log) -> None:
        self.log = log
        self.stderr: list[str] = []
        self.events: list[dict] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        cmd = in_ns(plan.ns("agent"), [sys.executable, "-m", "ttcp", "--host", "0.0.0.0",
                                       "--port", str(API_PORT), "--format", "json"])
        log("  + " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO, env=_child_env(), start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        self._err_reader = threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True)
        self._err_reader.start()

    def _pump(self, stream: IO[str], is_stdout: bool) -> None:
        """Echo ttcp's lines and keep them; runs until ttcp closes the stream."""
        for line in stream:
            with contextlib.suppress(OSError):  # our own stdout closed: keep reading ttcp's
                self.log(f"  ttcp{'' if is_stdout else ' (stderr)'} | {line.rstrip()}")
            if is_stdout:
                self._lines.put(line)
            else:
                self.stderr.append(line.rstrip())
        if is_stdout:
            self._lines.put(None)

    def next_event(self, timeout: float = LINE_WAIT_S) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ScenarioError(f"ttcp printed nothing for {timeout} s") from None
        if line is None:
            raise ScenarioError(f"ttcp's stdout closed (exit {self.proc.poll()}): {self.stderr[-3:]}")
        try:
            event = json.loads(line)
        except ValueError:
            raise ScenarioError(f"ttcp printed a line that is not JSON: {line!r}") from None
        self.events.append(event)
        return event

    def stop(self) -> int:
        """SIGTERM, as `docker stop` would; wait for the summary on stderr."""
        code = stop_process(self.proc, signal.SIGTERM, grace_s=15)
        self._err_reader.join(5)
        return code


class Api:
    """The filter API of the agent, called from the root namespace's operator address."""

    def __init__(self, plan: Plan, log: Log) -> None:
        self.plan = plan
        self.log = log

    def call(self, method: str, body: str | None = None, path: str = "/") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.plan.agent, API_PORT, timeout=5,
                                          source_address=(self.plan.operator, 0))
        try:
            headers = {"Content-Type": "text/plain"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def put(self, addr: str) -> None:
        self._change("PUT", addr)

    def delete(self, addr: str) -> None:
        self._change("DELETE", addr)

    def _change(self, method: str, addr: str) -> None:
        self.log(f"  curl -L http://{self.plan.agent}:{API_PORT} -X{method} -d {addr}")
        status, body = self.call(method, addr)
        if status != 204:
            raise ScenarioError(f"{method} {addr}: HTTP {status} {body[:200]!r}")

    def filters(self) -> list[str]:
        status, body = self.call("GET")
        if status != 200:
            raise ScenarioError(f"GET /: HTTP {status} {body[:200]!r}")
        return json.loads(body)


def wait_until_ready(agent: Agent, api: Api, log: Log) -> dict:
    """With --format json there is no header: ready means the API answers."""
    deadline = time.monotonic() + API_WAIT_S
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            agent.stop()
            raise ScenarioError(f"ttcp exited with {agent.proc.returncode}: {agent.stderr[-5:]}")
        try:
            status, body = api.call("GET", path="/healthz")
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            health = json.loads(body)
            log(f"  ttcp is ready: {health}")
            return health
    raise ScenarioError(f"ttcp's API did not answer within {API_WAIT_S} s")


@dataclass(frozen=True)
class Client:
    """One finished client connection, as the client saw it."""

    role: str  # "host", "ctr" or "control"
    saddr: str
    sport: int
    daddr: str
    dport: int
    netns: int


def run_client(plan: Plan, role: str, log: Log) -> Client:
    """Connect from the root ns ("host", "control") or the container ns to the web server."""
    ns = plan.ns("ctr") if role == "ctr" else None
    cmd = [sys.executable, str(SCRIPT), "connect", plan.server, str(SERVER_PORT)]
    if role == "control":
        cmd += ["--source", plan.control]
    out = json.loads(run(in_ns(ns, cmd), log if role != "control" else None, timeout=CLIENT_TIMEOUT_S))
    if out["status"] != "HTTP/1.0 200 OK":
        raise ScenarioError(f"{role} client got {out['status']!r}")
    if role != "control":
        log(f"  {role} client: {out['saddr']}:{out['sport']} -> {out['daddr']}:{out['dport']} "
            f"({out['status']}, netns {out['netns']})")
    return Client(role, out["saddr"], out["sport"], out["daddr"], out["dport"], out["netns"])


# ---- the scenario -----------------------------------------------------------------------


@dataclass
class Step:
    """What one client step did and which ttcp lines it produced (controls excluded)."""

    client: Client
    lines: list[dict]


@dataclass
class Record:
    """Everything a run observed; filled as it goes, so it is useful after a failure too."""

    plan: Plan | None = None
    pids: list[int] = field(default_factory=list)
    netns: dict[str, int] = field(default_factory=dict)  # role -> inode; "root" included
    health: dict = field(default_factory=dict)
    steps: dict[int, Step] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    exit_code: int | None = None
    stderr: list[str] = field(default_factory=list)


def observe(plan: Plan, agent: Agent, role: str, log: Log) -> Step:
    """Run one client, then a control connection; the lines before the control's are the step's."""
    client = run_client(plan, role, log)
    control = run_client(plan, "control", log)
    lines = []
    while True:
        ev = agent.next_event()
        if ev.get("saddr") == control.saddr and ev.get("sport") == control.sport:
            return Step(client, lines)
        lines.append(ev)


def expect_one(name: str, step: Step, plan: Plan, netns: int) -> None:
    """Exactly one line, for this client, with a plausible RTT, from its namespace."""
    c = step.client
    if c.netns != netns:
        raise ScenarioError(f"{name}: the client ran in netns {c.netns}, expected {netns}")
    if len(step.lines) != 1:
        raise ScenarioError(f"{name}: expected exactly one line, got {len(step.lines)}: {step.lines}")
    ev = step.lines[0]
    want = {"family": "inet", "saddr": c.saddr, "sport": c.sport, "daddr": plan.server,
            "dport": SERVER_PORT, "netns": netns}
    wrong = {k: (ev.get(k), v) for k, v in want.items() if ev.get(k) != v}
    if wrong:
        raise ScenarioError(f"{name}: line differs (got, want): {wrong}")
    if not 0 < ev.get("rtt_us", 0) < MAX_RTT_US:
        raise ScenarioError(f"{name}: implausible rtt_us {ev.get('rtt_us')}")


def expect_none(name: str, step: Step) -> None:
    if step.lines:
        raise ScenarioError(f"{name}: expected no line, got {step.lines}")


def play(plan: Plan, teardown: Teardown, log: Log, record: Record, fail_after: int | None) -> None:
    """The README's eight steps, then SIGTERM and the summary."""
    root_ns = record.netns["root"]
    ctr_ns = record.netns["ctr"]

    def done(n: int) -> None:
        log(f"step {n}: ok")
        if fail_after == n:
            raise ScenarioError(f"forced failure after step {n} (--fail-after)")

    log(f"step 1: start ttcp in namespace {plan.ns('agent')} ({plan.agent}), API on :{API_PORT}")
    agent = Agent(plan, log)
    record.pids.append(agent.proc.pid)
    teardown.push(f"stop ttcp (pid {agent.proc.pid})", agent.stop)
    api = Api(plan, log)
    record.health = wait_until_ready(agent, api, log)
    log(f"  control address {plan.control}: filtered throughout; its line marks 'all printed'")
    api.put(plan.control)
    done(1)

    log(f"step 2: add the host's address {plan.host}")
    api.put(plan.host)
    if plan.host not in api.filters():
        raise ScenarioError(f"step 2: GET does not list {plan.host}")
    done(2)

    log(f"step 3: the host (root namespace) fetches http://{plan.server}/ -> one line")
    record.steps[3] = observe(plan, agent, "host", log)
    expect_one("step 3", record.steps[3], plan, root_ns)
    done(3)

    log(f"step 4: remove {plan.host}")
    api.delete(plan.host)
    if plan.host in api.filters():
        raise ScenarioError(f"step 4: GET still lists {plan.host}")
    done(4)

    log("step 5: the host fetches again -> no line")
    record.steps[5] = observe(plan, agent, "host", log)
    expect_none("step 5", record.steps[5])
    done(5)

    log(f"step 6: the container ({plan.container}, namespace {plan.ns('ctr')}) fetches -> no line")
    record.steps[6] = observe(plan, agent, "ctr", log)
    expect_none("step 6", record.steps[6])
    done(6)

    log(f"step 7: add the container's address {plan.container}")
    api.put(plan.container)
    done(7)

    log("step 8: the container fetches -> one line")
    record.steps[8] = observe(plan, agent, "ctr", log)
    expect_one("step 8", record.steps[8], plan, ctr_ns)
    done(8)

    log("end: SIGTERM to ttcp -> exit 0 and the summary")
    record.exit_code = agent.stop()
    record.events = list(agent.events)
    record.stderr = list(agent.stderr)
    check_summary(record, agent)
    log(f"all steps ok: ttcp in netns {record.netns['agent']} saw the host (netns {root_ns}) "
        f"and the container (netns {ctr_ns})")


def check_summary(record: Record, agent: Agent) -> None:
    """Exit 0, nothing printed after the last control line, and a summary that counts every line."""
    with contextlib.suppress(ScenarioError):
        extra = agent.next_event(timeout=0.5)
        raise ScenarioError(f"ttcp printed an unexpected line at the end: {extra}")
    if record.exit_code != 0:
        raise ScenarioError(f"ttcp exited with {record.exit_code}: {record.stderr[-5:]}")
    summary = f"ttcp: {len(agent.events)} events printed, 0 dropped"
    if summary not in record.stderr:
        raise ScenarioError(f"expected {summary!r} on stderr, got {record.stderr[-3:]}")


def run_scenario(tag: str | None = None, log: Log = say, fail_after: int | None = None,
                 record: Record | None = None) -> Record:
    """Build the topology, play the scenario, remove everything; raise ScenarioError on a deviation.

    `record` (if given) is filled as the run goes, so a caller can check the
    cleanup of a failed run by the pids and names it holds.
    """
    if os.geteuid() != 0:
        raise ScenarioError("run as root (namespaces and BPF need it)")
    if shutil.which("ip") is None:
        raise ScenarioError("iproute2's `ip` command is needed")
    tag = tag or str(os.getpid())
    if not (tag.isdigit() and len(LINK_PREFIX + tag + "h") <= 15):
        raise ScenarioError(f"the tag must be at most {15 - len(LINK_PREFIX) - 1} digits")
    record = record if record is not None else Record()
    remove_leftovers(tag, log)
    plan = Plan.of(tag, pick_network(tag))
    record.plan = plan
    record.netns["root"] = os.stat("/proc/self/ns/net").st_ino
    log(f"network {plan.net}: host {plan.host}, agent {plan.agent}, container {plan.container}, "
        f"server {plan.server}:{SERVER_PORT}; namespaces {plan.ns('*')}")
    teardown = Teardown(log)
    try:
        build_topology(plan, teardown, log, record)
        start_server(plan, teardown, log, record)
        log("network check: host and container reach the server (ttcp not started yet)")
        run_client(plan, "host", log)
        run_client(plan, "ctr", log)
        play(plan, teardown, log, record, fail_after)
    except BaseException:
        teardown.close()
        raise
    failed = teardown.close()
    if failed:
        raise ScenarioError("cleanup incomplete: " + "; ".join(failed))
    return record


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the cleanup runs for `kill` too."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Play README's host-and-container scenario with "
                                            "network namespaces (run as root).")
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="(internal) the web server, run inside the server namespace")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    c = sub.add_parser("connect", help="(internal) one client connection; prints it as JSON")
    c.add_argument("addr")
    c.add_argument("port", type=int)
    c.add_argument("--source")
    p.add_argument("--tag", help="digits naming this run's namespaces (default: the pid)")
    p.add_argument("--fail-after", type=int, metavar="STEP",
                   help="fail on purpose after STEP (1-8), to see that everything is removed")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.addr, args.port)
        return 0
    if args.cmd == "connect":
        print(json.dumps(connect(args.addr, args.port, args.source)))
        return 0
    try:
        with _sigterm_as_interrupt():
            run_scenario(args.tag, fail_after=args.fail_after)
    except ScenarioError as e:
        print(f"netns_scenario: FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("netns_scenario: interrupted; everything removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
