"""The command's faults: stopped while traffic flows, signals at any moment of
start-up, SIGKILL, no CAP_BPF. Loopback traffic from 127.0.6.0/24 only.

The guarantees checked: every event is either printed or counted as dropped
(printed + dropped == generated, exactly, and the summary says why), and
whatever stops ttcp — a signal, SIGKILL — no BPF program, link or map of ours
is left in the kernel; without privilege, one line says what is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.cli_process import REPO, TtcpProcess, free_port
from tests.support.kernel import scaled, wait_matches
from tests.support.kernel_objects import all_ids, held_ids
from tests.support.traffic import Server, connect_many
from ttcp import syscalls
from ttcp.maps import PerCpuArray
from ttcp.rtt import filters as F
from ttcp.rtt.filter_table import STATS_HEAD
from ttcp.rtt.histogram import summed

pytestmark = pytest.mark.kernel

SUMMARY = re.compile(r"ttcp: (\d+) events printed, (\d+) dropped")
N_GENERATED = 300


def wait_gone(ids: dict[str, set[int]], timeout: float = 10.0) -> None:
    """Poll until the kernel has freed every one of `ids` (it does so asynchronously)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        now = all_ids()
        alive = {k: ids[k] & now[k] for k in ids}
        if not any(alive.values()):
            return
        assert time.monotonic() < deadline, f"still in the kernel after {timeout}s: {alive}"
        time.sleep(0.05)


def process_matches(pid: int, addr: str) -> int:
    """What a running ttcp's program counted for the host filter `addr` (sent or
    dropped), read from the maps that process holds: its `hosts` entry names
    the slot of the per-CPU `stats` array, whose generation must match."""
    maps: dict[str, int] = {}
    try:
        for map_id in held_ids(pid)["map"]:
            fd = syscalls.map_get_fd_by_id(map_id)
            name = syscalls.map_info(fd).name
            if name in ("hosts", "stats") and name not in maps:
                maps[name] = fd
            else:
                syscalls.close(fd)
        assert set(maps) == {"hosts", "stats"}, f"process {pid} holds {sorted(maps)}"
        raw = syscalls.map_lookup(maps["hosts"], F.host_key(F.parse(addr)), F.VALUE.size)
        if raw is None:
            return 0
        slot, gen = F.VALUE.unpack(raw)[:2]
        info = syscalls.map_info(maps["stats"])
        rows = PerCpuArray(maps["stats"], info.value_size, info.max_entries, owns_fd=False).values(slot)
        return sum(summed([r], STATS_HEAD.size).count for r in rows if STATS_HEAD.unpack_from(r)[0] == gen)
    finally:
        for fd in maps.values():
            syscalls.close(fd)


# ---- printed + dropped == generated -------------------------------------------------------


def test_cli_stopped_while_traffic_flows_accounts_for_every_event() -> None:
    src, dst = "127.0.6.3", "127.0.6.4"
    with TtcpProcess("--ringbuf-size", "4096", "--filter", src, "--no-api") as t:
        ids = held_ids(t.proc.pid)
        t.proc.send_signal(signal.SIGSTOP)
        try:
            with Server(dst) as srv:
                connect_many(srv, src, N_GENERATED)
            wait_matches(lambda: process_matches(t.proc.pid, src), N_GENERATED)
        finally:
            t.proc.send_signal(signal.SIGCONT)
        lines = t.lines_until_quiet(quiet=0.5)
        assert t.stop(signal.SIGTERM) == 0
        lines += t.lines_until_quiet(quiet=0.1)  # any printed by the final drain
    summary = SUMMARY.search(t.stderr)
    assert summary, t.stderr
    printed, dropped = int(summary[1]), int(summary[2])
    assert printed == len(lines) and all(src in line for line in lines)
    assert printed + dropped == N_GENERATED and dropped > 0, t.stderr
    why = re.search(r"dropped \((\d+) with the ring buffer full, (\d+) skipped by the kernel", t.stderr)
    assert why and int(why[1]) + int(why[2]) == dropped and int(why[1]) > 0, t.stderr  # the reader stopped
    wait_gone(ids)


# ---- signals and SIGKILL ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_leaves_nothing_behind(sig: int) -> None:
    with TtcpProcess("--filter", "127.0.6.5") as t:
        assert t.api("PUT", "/", b"127.0.6.6")[0] == 204
        ids = held_ids(t.proc.pid)
        assert ids["prog"] and ids["map"] and ids["link"], ids
        assert t.stop(sig) == 0
    assert SUMMARY.search(t.stderr), t.stderr
    assert "Traceback" not in t.stderr
    wait_gone(ids)


@pytest.mark.parametrize("phase", ["start", "map", "prog", "link"])
def test_sigterm_during_start_up_unwinds_cleanly(phase: str) -> None:
    """SIGTERM as soon as start-up has created its first `phase` object
    ("start": at once): a clean exit, at most one line about it, nothing kept."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "ttcp", "--port", str(port), "--filter", "127.0.6.7"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
    deadline = time.monotonic() + 30
    while phase != "start" and not seen[phase]:
        assert proc.poll() is None and time.monotonic() < deadline, "start-up never got there"
        with contextlib.suppress(OSError):  # fds come and go while we read them
            for k, v in held_ids(proc.pid).items():
                seen[k] |= v
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=scaled(20))
    assert "Traceback" not in err
    if phase == "start" and proc.returncode == -signal.SIGTERM:
        assert err == ""  # killed before Python installed its handler: nothing was made
    else:
        assert proc.returncode in (0, 130), err
        assert err.strip().splitlines()[-1].startswith("ttcp: "), err
    wait_gone(seen)


def test_sigkill_frees_everything_and_a_restart_works_at_once() -> None:
    port = free_port()
    with TtcpProcess("--filter", "127.0.6.8", port=port) as t:
        assert t.api("PUT", "/", b"127.0.6.9")[0] == 204
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # a client at the kill
            ids = held_ids(t.proc.pid)
            t.proc.kill()
            t.proc.wait(10)
    wait_gone(ids)
    with TtcpProcess("--filter", "127.0.6.8", port=port) as again:
        status, body = again.api("GET", "/")
        assert status == 200 and body == b'["127.0.6.8"]'  # a fresh table: nothing survived
        assert again.stop() == 0


# ---- privileges ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh not installed (apt-get install libcap2-bin)")
@pytest.mark.parametrize("extra", [[], pytest.param(["--no-api", "--filter", "127.0.6.13"], marks=pytest.mark.matrix)],
                         ids=["api", "no-api"])
def test_without_cap_bpf_one_clear_line(extra: list[str]) -> None:
    cmd = " ".join([sys.executable, "-m", "ttcp", "--port", str(free_port()), *extra])
    r = subprocess.run(["capsh", "--drop=cap_bpf,cap_sys_admin,cap_perfmon", "--", "-c", cmd],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                       text=True, timeout=scaled(60), check=False)
    assert r.returncode == 1, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ttcp: ") and "EPERM" in lines[0] and "CAP_BPF" in lines[0], lines[0]
