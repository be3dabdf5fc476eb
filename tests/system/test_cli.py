"""The `ttcp` command as users run it: a real process, real curl, real traffic."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli_process import REPO, TtcpProcess, free_port
from tests.support.kernel import mode_probe, require, scaled
from tests.support.kernel_objects import held_by_others, prog_name
from tests.support.traffic import Server, connect_many
from ttcp import cli, syscalls
from ttcp.rtt.tracer import MODES

pytestmark = pytest.mark.kernel

LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (\S+)\s+(\d+)\s+-> (\S+)\s+(\d+)\s+(\d+\.\d{3})$")
SUMMARY = re.compile(r"ttcp: (\d+) events printed, (\d+) dropped")


def our_prog_ids(ttcp_pid: int | None = None) -> set[int]:
    """Programs named like ours (the kernel keeps 15 characters) that no other
    process holds: those of the ttcp under test, or leaked ones. Another ttcp
    running on the machine at the same time holds its own and is left out."""
    others = held_by_others({ttcp_pid} if ttcp_pid else set())["prog"]
    return {p for p in set(syscalls.prog_ids()) - others if (prog_name(p) or "").startswith("tcprtt_")}


def assert_none_left(before: set[int]) -> None:
    """No program of ours outlives the process (the kernel frees them asynchronously)."""
    deadline = time.monotonic() + scaled(3)
    while (left := our_prog_ids() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == set()


@pytest.mark.matrix
def test_header_lines_and_clean_sigterm():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # a shell's low soft limit, inherited
    try:
        t = TtcpProcess("--filter", "127.0.1.2")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with t:
        assert t.header == "YYYY/MM/DD HH:MM:SS Src addr        Port   -> Dest addr       Port   RTT(ms)"
        limits = Path(f"/proc/{t.proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+(\d+)\s+\1\s", limits), limits  # raised to the hard limit
        assert t.wait_stderr("attached via"), t.stderr
        with Server("127.0.0.1") as srv:
            conns = connect_many(srv, "127.0.1.2", 5)
            connect_many(srv, "127.0.1.3", 5)  # not a filter
        lines = t.lines_until_quiet()
        assert len(lines) == 5
        for line, c in zip(lines, conns, strict=True):
            m = LINE.match(line)
            assert m, line
            assert (m[1], int(m[2]), m[3], int(m[4])) == ("127.0.1.2", c.sport, "127.0.0.1", srv.port)
            assert float(m[5]) > 0
        assert t.stop(signal.SIGTERM) == 0
        assert SUMMARY.search(t.stderr).groups() == ("5", "0")


def test_seed_curl_lines_and_api_switch_events():
    curl = shutil.which("curl")
    assert curl, "curl is needed (make deps installs it)"
    with TtcpProcess() as t, Server("127.0.0.1") as srv:
        url = f"http://localhost:{t.port}"

        def sh(*args: str) -> str:
            return subprocess.run([curl, "-sS", "-L", url, *args], check=True,
                                  capture_output=True, text=True, timeout=scaled(10)).stdout

        assert json.loads(sh("-XGET")) == []
        connect_many(srv, "127.0.1.4", 3)
        assert t.lines_until_quiet(0.3) == []
        sh("-XPUT", "-d", "127.0.1.4")
        assert json.loads(sh("-XGET")) == ["127.0.1.4"]
        connect_many(srv, "127.0.1.4", 3)
        assert len(t.lines_until_quiet()) == 3
        sh("-XDELETE", "-d", "127.0.1.4")
        assert json.loads(sh("-XGET")) == []
        connect_many(srv, "127.0.1.4", 3)
        assert t.lines_until_quiet(0.3) == []
        assert t.stop(signal.SIGINT) == 0
        assert SUMMARY.search(t.stderr).groups() == ("3", "0")


def test_json_output_parses_back():
    with TtcpProcess("--format", "json", "--filter", "127.0.1.5", "--filter", "::1") as t:
        with Server("127.0.0.1") as srv:
            conns = connect_many(srv, "127.0.1.5", 4)
        events = [json.loads(line) for line in t.lines_until_quiet()]
        assert [e["sport"] for e in events] == [c.sport for c in conns]
        netns = os.stat("/proc/self/ns/net").st_ino
        for e in events:
            assert (e["saddr"], e["daddr"], e["dport"], e["family"]) == ("127.0.1.5", "127.0.0.1", srv.port, "inet")
            assert e["rtt_us"] > 0 and e["rtt_ms"] == e["rtt_us"] / 1000 and e["netns"] == netns
            assert e["hook"] in ("fentry", "tp_btf", "tracepoint")
        status, body = t.api("GET", "/healthz")
        health = json.loads(body)
        assert status == 200 and health["events"] == 4 and health["dropped"] == 0
        assert health["attach_mode"] == e["hook"]
        assert t.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_forced_modes_and_nothing_left_behind(mode):
    require(mode_probe(mode))
    before = our_prog_ids()
    with TtcpProcess("--attach", mode, "--filter", "127.0.1.6", "--no-api") as t:
        assert t.wait_stderr(f"attached via {mode}"), t.stderr
        assert len(our_prog_ids(t.proc.pid) - before) == 1
        with Server("127.0.0.1") as srv:
            connect_many(srv, "127.0.1.6", 3)
        assert len(t.lines_until_quiet()) == 3
        assert t.stop() == 0
    assert_none_left(before)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttcp", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=scaled(timeout), check=False, env=dict(os.environ, PYTHONPATH=REPO))


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("ttcp: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[-1], r.stderr


@pytest.mark.parametrize("bad,needle", [
    ("10.0.0.1/8", "host bits"), ("300.1.1.1", "not an IPv4 or IPv6"), ("fe80::1%eth0", "zone"),
    ("dst 10.0.0.1 port 0", "port"), ("dst", "address"), ("10.0.0.1 prot 80", "unexpected"),
])
def test_invalid_filter_is_one_line(bad, needle):
    r = run_cli("--filter", bad)
    assert_one_line_error(r, 2, needle, "--filter")
    assert len(r.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_line_and_releases_everything():
    before = our_prog_ids()
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        r = run_cli("--port", str(port))
    assert_one_line_error(r, 1, str(port))
    assert_none_left(before)


def test_missing_btf_is_one_line():
    assert_one_line_error(run_cli("--btf", "/nonexistent/vmlinux", "--no-api"), 1, "/nonexistent/vmlinux")


def test_bad_sizes_are_one_line():
    assert_one_line_error(run_cli("--ringbuf-size", "3000", "--no-api"), 1, "power of two")
    assert_one_line_error(run_cli("--max-filters", "0"), 2, "positive")
    assert_one_line_error(run_cli("--max-groups", "0"), 2, "positive")
    assert_one_line_error(run_cli("--metrics-groups", "-1"), 2, "0 or more")
    assert_one_line_error(run_cli("--filter", "10.0.0.1 by host"), 2, "the key is raddr")
    assert_one_line_error(run_cli("--port", "70000"), 2, "port")


def test_help_explains_everything():
    r = run_cli("--help")
    assert r.returncode == 0
    for option in ("--host", "--port", "--filter", "--max-filters", "--attach", "--format",
                   "--ringbuf-size", "--btf", "--no-api", "--sample", "--histogram", "--ms", "RTT(ms)",
                   "curl", "SIGTERM", "dst 10.20.0.0/16 port 5432", "/metrics", "/events", "/sampling",
                   "dst 10.20.0.0/16 port 5432 by raddr", "which database replica is slow", "--max-groups",
                   "--metrics-groups", "/groups?", "--format histogram", "by container", "NS/POD/NAME",
                   "128 x possible CPUs"):
        assert option in r.stdout


def test_reader_of_stdout_going_away_ends_ttcp_cleanly():
    """`ttcp | head -2`: once the pipe's reader has gone, ttcp stops by itself,
    says how many lines it could not write, and leaves nothing behind."""
    before = our_prog_ids()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ttcp", "--port", str(port), "--filter", "127.0.1.7"],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("YYYY/MM/DD")
        with Server("127.0.0.1") as srv:
            connect_many(srv, "127.0.1.7", 1)
            assert LINE.match(proc.stdout.readline().rstrip("\n"))
            proc.stdout.close()  # what `head` does after its lines
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                connect_many(srv, "127.0.1.7", 5)
                time.sleep(0.05)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err
        m = re.search(r"ttcp: (\d+) events printed, 0 dropped, (\d+) not written \(stdout closed\)", err)
        assert m and int(m[1]) >= 1 and int(m[2]) >= 1, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_none_left(before)


class _Lines(io.StringIO):
    """stdout for an in-process run: lets the test wait for the header."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()

    def write(self, s: str) -> int:
        if "YYYY/MM/DD" in s:
            self.ready.set()
        return super().write(s)


def test_run_twice_in_one_process_restores_what_it_changed(no_bpf_leaks: None) -> None:
    """cli.run as a library call: signal handlers and logging are put back, and
    nothing from the first run leaks into the second."""
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
              list(logging.getLogger("ttcp").handlers), logging.getLogger("ttcp").level)
    for round_ in range(2):
        args = cli.build_parser().parse_args(["--no-api", "--filter", f"127.0.1.{20 + round_}"])
        out = _Lines()
        stopper = threading.Thread(target=lambda o=out: o.ready.wait(scaled(30)) and os.kill(os.getpid(),
                                                                                           signal.SIGTERM))
        stopper.start()
        try:
            assert cli.run(args, out=out) == 0
        finally:
            stopper.join()
        assert out.getvalue().startswith("YYYY/MM/DD")
        after = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
                 list(logging.getLogger("ttcp").handlers), logging.getLogger("ttcp").level)
        assert after == before, round_
