"""Containers by name with a real Docker engine (issue 23): the original scenario, by name.

`container ttcp-client` is put before the container exists (pending); then
`docker run --name ttcp-client` makes a request and exactly its connection is
reported, named; `docker restart`, and `rm` followed by a new `run` of the same
name, are followed; another container with the same IP address in another
network (a `--network none` container given a veth by hand: Docker refuses two
networks with the same subnet) is not matched; after DELETE nothing more comes.
ttcp runs on the host first, then in the project's image with the engine's
socket mounted (`-w`: the Workload column names the container).

The private dockerd of tests/support/container/engine.py; everything this test
makes (containers, the network, the namespace, the veth, servers) is removed.
Run with `make test-container`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts import netns_scenario as scenario
from tests.support.cli_process import TtcpProcess
from tests.support.container import images
from tests.support.container.engine import Engine
from tests.support.container.seed import TtcpContainer, curl, readme_command
from tests.support.kernel_objects import held_ids
from tests.system.test_container import engine, say  # noqa: F401 - the module's private engine
from ttcp.rtt import events

pytestmark = [pytest.mark.container, pytest.mark.kernel]

CLIENT, OTHER, TWIN = "ttcp-client", "ttcp-names-other", "ttcp-names-twin"
NETWORK, LAN2, VETH = "ttcp-names-a", "ttcp-names-lan2", "ttcp-names-v"
PORT = 8080
DELAY_S = 1.5  # a client waits this long after its start before its request: the name resolves first


@dataclass
class Net:
    """A Docker network with a server on its gateway address (in the root namespace)."""

    gateway: str
    client_ip: str
    other_ip: str
    prefix: int

    def request_code(self, then_sleep: bool = True) -> str:
        tail = "\ntime.sleep(3600)" if then_sleep else ""
        return (f"import time, urllib.request\ntime.sleep({DELAY_S})\n"
                f"urllib.request.urlopen('http://{self.gateway}:{PORT}/', timeout=10).read(){tail}")


def _quiet(engine: Engine, *args: str) -> None:  # noqa: F811
    subprocess.run([engine.client, *args], capture_output=True, env=engine.env, timeout=60, check=False)


def _serve(bind: str, netns: str | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "http.server", "--bind", bind, str(PORT)]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # listening: the port shows in that namespace's /proc/net/tcp
        probe = subprocess.run((["ip", "netns", "exec", netns] if netns else []) + ["ss", "-Hltn", f"sport = {PORT}"],
                               capture_output=True, text=True, check=False)
        if bind in probe.stdout:
            return proc
        time.sleep(0.05)
    scenario.stop_process(proc)
    raise AssertionError(f"no server on {bind}:{PORT}")


@pytest.fixture(scope="module")
def net(engine: Engine) -> Iterator[Net]:  # noqa: F811
    subnet = scenario.pick_network(str(os.getpid() + 512))
    hosts = list(subnet.hosts())
    n = Net(str(hosts[0]), str(hosts[1]), str(hosts[2]), subnet.prefixlen)
    server = None
    try:
        engine.docker("network", "create", "--internal", "--subnet", str(subnet), "--gateway", n.gateway, NETWORK,
                      step="create the client network")
        server = _serve(n.gateway)
        yield n
    finally:
        if server is not None:
            scenario.stop_process(server)
        for name in (CLIENT, OTHER, TWIN):
            _quiet(engine, "rm", "-f", name)
        _quiet(engine, "network", "rm", NETWORK)


@pytest.fixture
def twin(engine: Engine, net: Net) -> Iterator[str]:  # noqa: F811
    """A container with the client's address in another network: `--network none`, a veth
    with the same address, its peer in a namespace with a server on the gateway's address."""
    server = None
    try:
        engine.docker("run", "-d", "--name", TWIN, "--network", "none", images.BASE_IMAGE, "sleep", "infinity",
                      step="start the twin")
        pid = engine.docker("inspect", "-f", "{{.State.Pid}}", TWIN, step="the twin's pid").stdout.strip()
        for cmd in (["ip", "netns", "add", LAN2],
                    ["ip", "link", "add", f"{VETH}0", "type", "veth", "peer", "name", f"{VETH}1"],
                    ["ip", "link", "set", f"{VETH}0", "netns", pid], ["ip", "link", "set", f"{VETH}1", "netns", LAN2],
                    ["nsenter", "-t", pid, "-n", "ip", "addr", "add", f"{net.client_ip}/{net.prefix}", "dev", f"{VETH}0"],
                    ["nsenter", "-t", pid, "-n", "ip", "link", "set", f"{VETH}0", "up"],
                    ["ip", "-n", LAN2, "addr", "add", f"{net.gateway}/{net.prefix}", "dev", f"{VETH}1"],
                    ["ip", "-n", LAN2, "link", "set", f"{VETH}1", "up"], ["ip", "-n", LAN2, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        server = _serve(net.gateway, LAN2)
        yield TWIN
    finally:
        if server is not None:
            scenario.stop_process(server)
        _quiet(engine, "rm", "-f", TWIN)
        subprocess.run(["ip", "netns", "del", LAN2], capture_output=True, check=False)


def run_client(engine: Engine, net: Net, name: str = CLIENT, ip: str | None = None) -> str:  # noqa: F811
    """`docker run -d --name NAME` of a client that makes one request DELAY_S after it starts; its id."""
    return engine.docker("run", "-d", "--name", name, "--network", NETWORK, "--ip", ip or net.client_ip,
                         images.BASE_IMAGE, "python3", "-c", net.request_code(), step=f"docker run {name}").stdout.strip()


def pid_and_netns(engine: Engine, name: str) -> tuple[int, int]:  # noqa: F811
    pid = int(engine.docker("inspect", "-f", "{{.State.Pid}}", name, step="pid").stdout)
    return pid, os.stat(f"/proc/{pid}/ns/net").st_ino


def state(t: TtcpProcess, text: str) -> dict[str, object]:
    status, body = t.api("GET", "/filters")
    assert status == 200, body
    return next(e["workload"] for e in json.loads(body)["filters"] if e["filter"] == text)


def resolved_within(t: TtcpProcess, text: str, netns: int, limit_s: float = 1.0) -> float:
    """Seconds until GET /filters shows `text` resolved to `netns` (the issue's bound: 1 s)."""
    t0 = time.monotonic()
    while True:
        s = state(t, text)
        if s["state"] == "resolved" and s.get("resolved_to") == {"netns": netns}:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < limit_s, f"{text} not resolved to {netns} within {limit_s} s: {s}"
        time.sleep(0.01)


def events_of(t: TtcpProcess, want: int, limit_s: float = 15.0) -> list[dict[str, object]]:
    """At least `want` event lines (within limit_s), then every line until quiet."""
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + limit_s
    while len(out) < want and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            out.append(json.loads(t.next_line(timeout=max(deadline - time.monotonic(), 0.05))))
    out += [json.loads(line) for line in t.lines_until_quiet(quiet=1.0)]
    return out


def one_line_of(got: list[dict[str, object]], net: Net, ident: str) -> None:
    assert len(got) == 1, json.dumps(got)
    e = got[0]
    assert (e["saddr"], e["daddr"], e["dport"]) == (net.client_ip, net.gateway, PORT), json.dumps(e)
    assert (e.get("container"), e.get("container_id"), e["filter"]) == (CLIENT, ident, f"container {CLIENT}"), \
        json.dumps(e)


def test_a_container_by_name_on_the_host(engine: Engine, net: Net, twin: str) -> None:  # noqa: F811
    sock = f"{engine.run_dir}/docker.sock"
    text = f"container {CLIENT}"
    with TtcpProcess("--format", "json", "--docker-socket", sock) as t:
        status, body = t.api("PUT", "/", text.encode())
        assert status in (200, 201, 204), body
        pending = state(t, text)
        assert pending["state"] == "pending" and "no running container" in str(pending["note"]), pending

        ident = run_client(engine, net)
        run_client(engine, net, OTHER, net.other_ip)  # the same server, the same network: not selected
        started = time.monotonic()
        _, netns = pid_and_netns(engine, CLIENT)
        took = resolved_within(t, text, netns)
        say(f"names: {CLIENT} resolved {took * 1000:.0f} ms after `docker run` returned "
            f"({(time.monotonic() - started) * 1000:.0f} ms)")
        one_line_of(events_of(t, 1), net, ident)

        engine.docker("restart", "-t", "0", CLIENT, step="docker restart")
        _, netns = pid_and_netns(engine, CLIENT)
        took = resolved_within(t, text, netns)
        say(f"names: resolved again {took * 1000:.0f} ms after `docker restart` returned (netns {netns})")
        one_line_of(events_of(t, 1), net, ident)

        engine.docker("rm", "-f", CLIENT, step="docker rm -f")
        ident = run_client(engine, net)
        _, netns = pid_and_netns(engine, CLIENT)
        took = resolved_within(t, text, netns)
        say(f"names: a new {CLIENT} resolved {took * 1000:.0f} ms after `docker run` returned")
        # The twin: same address, same server address and port, another network namespace.
        twin_request = subprocess.run([engine.client, "exec", twin, "python3", "-c", net.request_code(False)],
                                      capture_output=True, text=True, env=engine.env, timeout=60, check=False)
        assert twin_request.returncode == 0, twin_request.stderr
        one_line_of(events_of(t, 1), net, ident)

        status, body = t.api("DELETE", "/", text.encode())
        assert status in (200, 204), body
        engine.docker("restart", "-t", "0", CLIENT, step="docker restart after DELETE")
        time.sleep(DELAY_S)
        assert t.lines_until_quiet(quiet=2.0) == []
        # Names on every event, not only a container filter's: an address filter's line is named too.
        status, body = t.api("PUT", "/", f"dst {net.gateway} port {PORT}".encode())
        assert status in (200, 201, 204), body
        other = engine.docker("inspect", "-f", "{{.Id}}", OTHER, step="the other's id").stdout.strip()
        engine.docker("restart", "-t", "0", OTHER, step="docker restart the other")
        got = events_of(t, 1)
        assert [(e["saddr"], e.get("container"), e.get("container_id")) for e in got] == \
            [(net.other_ip, OTHER, other)], json.dumps(got)
        assert t.stop() == 0
    assert "Traceback" not in t.stderr and "docker" not in t.stderr, t.stderr


def test_a_container_by_name_from_the_image(engine: Engine, net: Net) -> None:  # noqa: F811
    """ttcp in its image, the engine's socket mounted and the host's pids visible; `-w`."""
    _quiet(engine, "rm", "-f", CLIENT)
    cmd = readme_command("--privileged", "-p", without=("--pin",))
    cmd = [*cmd[:-1], "--pid", "host", "-v", f"{engine.run_dir}/docker.sock:/var/run/docker.sock", cmd[-1], "-w"]
    ttcp = TtcpContainer(engine, cmd, say)
    try:
        assert ttcp.next_text(120) == events.WIDE_HEADER
        ttcp.id = ttcp._find_id()
        code, body = curl("PUT", f"container {CLIENT}")
        assert code in (200, 201, 204), body
        run_client(engine, net)
        line = ttcp.next_text(15)  # the first line after the header: the client's, named
        assert f" {net.client_ip} " in line and line.endswith(f" container {CLIENT}"), line
        code, body = curl("GET", path="/filters")
        entry = next(e for e in json.loads(body)["filters"] if e["filter"] == f"container {CLIENT}")
        assert entry["workload"]["state"] == "resolved", entry
        assert ttcp.stop() == 0
        assert not [e for e in ttcp.stderr if "Traceback" in e or "docker" in e], ttcp.stderr
    finally:
        ttcp.remove()
        _quiet(engine, "rm", "-f", CLIENT)


LOAD, PARALLEL = 200, 12  # short-lived containers, and how many start at once


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _netns_fds(pid: int) -> int:
    """ttcp's fds on network namespaces (the resolver's holds)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("net:[")
    return count


def _map_entries(pid: int) -> dict[str, int]:
    """Entries of the workload and address maps ttcp's process holds (bpftool)."""
    out: dict[str, int] = {}
    for map_id in held_ids(pid)["map"]:
        show = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True,
                                         text=True, check=True).stdout)
        if show.get("name") in ("netns", "cgroups", "nets", "hosts"):
            dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)], capture_output=True,
                                  text=True, check=True).stdout
            out[show["name"]] = len(json.loads(dump))
    return out


def test_hundreds_of_containers_start_and_stop(engine: Engine, net: Net) -> None:  # noqa: F811
    """LOAD short-lived containers, PARALLEL at a time, each named by a filter and making one
    request: afterwards the registry, the followed names and the kernel maps are back where
    they were, and memory is bounded."""
    names = [f"ttcp-Load.{i}_x-{i}" for i in range(LOAD)]  # odd but valid: dots, underscores, upper case
    # The request comes 3 s after the start: 12 starts at once on two CPUs delay Docker's events
    # (one of 200 took over 1 s here); the 1 s bound is measured unloaded, in the tests above.
    code = net.request_code(False).replace(f"time.sleep({DELAY_S})", "time.sleep(3.0)")
    with TtcpProcess("--format", "json", "--docker-socket", f"{engine.run_dir}/docker.sock") as t:
        body = "\n".join([f"dst {net.gateway} port {PORT}", *(f"container {n}" for n in names)]).encode()
        status, answer = t.api("PUT", "/", body)
        assert status in (200, 201, 204), answer
        time.sleep(1.0)  # the initial listing
        base = json.loads(t.api("GET", "/healthz")[1])["containers"]
        maps0, rss0 = _map_entries(t.proc.pid), _rss_kib(t.proc.pid)
        fds0 = _netns_fds(t.proc.pid)
        t0 = time.monotonic()

        def one(name: str) -> int:
            return subprocess.run([engine.client, "run", "--rm", "--name", name, "--network", NETWORK,
                                   images.BASE_IMAGE, "python3", "-c", code], capture_output=True,
                                  env=engine.env, timeout=120, check=False).returncode
        peak = rss0
        with ThreadPoolExecutor(PARALLEL) as pool:
            futures = [pool.submit(one, n) for n in names]
            while not all(f.done() for f in futures):
                peak = max(peak, _rss_kib(t.proc.pid))
                time.sleep(0.2)
        codes = [f.result() for f in futures]
        took = time.monotonic() - t0
        assert codes.count(0) == LOAD, codes
        got = [json.loads(line) for line in t.lines_until_quiet(quiet=1.0)]
        named = sum(1 for e in got if str(e.get("container", "")).startswith("ttcp-Load."))
        by_filter = sum(1 for e in got if str(e["filter"]).startswith("container ttcp-Load."))
        deadline = time.monotonic() + 10
        while (now := json.loads(t.api("GET", "/healthz")[1])["containers"])["running"] != base["running"]:
            assert time.monotonic() < deadline, f"registry not back to {base}: {now}"
            time.sleep(0.1)
        maps1, rss1 = _map_entries(t.proc.pid), _rss_kib(t.proc.pid)
        fds1 = _netns_fds(t.proc.pid)
        states = [e["workload"]["state"] for e in json.loads(t.api("GET", "/filters")[1])["filters"]
                  if e["filter"].startswith("container ttcp-Load.")]
        say(f"load: {LOAD} containers ({PARALLEL} at once) in {took:.1f} s; {len(got)} events, {named} named, "
            f"{by_filter} by their container filter; ttcp RSS {rss0 // 1024} -> peak {peak // 1024} -> "
            f"{rss1 // 1024} MiB; namespace fds {fds0} -> {fds1}; maps {maps0} -> {maps1}; registry {base} -> {now}")
        assert len(got) == LOAD  # every request reported
        assert named == LOAD, ("events without their container's name",
                               [e for e in got if not str(e.get("container", "")).startswith("ttcp-Load.")])
        assert by_filter == LOAD, "requests not selected by their own container filter"  # not the catch-all
        assert states == ["pending"] * LOAD and now["dropped"] == 0 and now["followed"] == LOAD
        assert maps1 == maps0, "kernel entries left behind"
        assert fds1 == fds0 == 0, "namespaces held after their containers ended"
        assert peak - rss0 < 32 * 1024 and rss1 - rss0 < 16 * 1024
        assert t.stop() == 0
    assert "Traceback" not in t.stderr and "docker" not in t.stderr, t.stderr
