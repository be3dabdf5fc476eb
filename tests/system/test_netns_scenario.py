"""README's host-and-container scenario, played for real across network namespaces.

ttcp runs in its own namespace and must report a connection of the root
namespace and one of a "container" namespace, each tagged with the inode of
the namespace the client ran in; and the scenario must leave nothing behind,
whether it succeeds, fails midway or is killed with SIGTERM.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import netns_scenario as scenario

pytestmark = pytest.mark.kernel

CONTROLS = 4  # steps 3, 5, 6 and 8 each end with one control line


def _alive_children(pids: list[int]) -> list[int]:
    """Those of `pids` that still run one of the scenario's commands (pid reuse aside)."""
    alive = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ttcp" in cmdline or b"netns_scenario" in cmdline:
            alive.append(pid)
    return alive


def _leftovers(tag: str, pids: list[int]) -> list[str]:
    left = [n for n in scenario.namespaces() if n.startswith(f"{scenario.NS_PREFIX}{tag}-")]
    link = f"{scenario.LINK_PREFIX}{tag}h"
    if os.path.exists(f"/sys/class/net/{link}"):
        left.append(link)
    left += [f"pid {p}" for p in _alive_children(pids)]
    return left


def test_seed_scenario_across_namespaces(no_bpf_leaks):
    tag = str(os.getpid())
    record = scenario.Record()
    try:
        scenario.run_scenario(tag, log=print, record=record)
    finally:
        left = _leftovers(tag, record.pids)
    assert left == []
    plan = record.plan
    root_ns = os.stat("/proc/self/ns/net").st_ino
    assert len({root_ns, record.netns["agent"], record.netns["ctr"]}) == 3  # three different namespaces

    host = record.steps[3]
    assert host.client.saddr == plan.host and host.client.netns == root_ns
    [ev] = host.lines
    assert (ev["saddr"], ev["sport"], ev["daddr"], ev["dport"]) == (
        plan.host, host.client.sport, plan.server, scenario.SERVER_PORT)
    assert ev["netns"] == root_ns
    assert 0 < ev["rtt_us"] < 1_000_000
    assert ev["hook"] == record.health["attach_mode"]

    assert record.steps[5].lines == []
    assert record.steps[5].client.saddr == plan.host
    assert record.steps[6].lines == []
    assert record.steps[6].client.saddr == plan.container

    ctr = record.steps[8]
    [ev] = ctr.lines
    assert (ev["saddr"], ev["sport"], ev["daddr"], ev["dport"]) == (
        plan.container, ctr.client.sport, plan.server, scenario.SERVER_PORT)
    assert ev["netns"] == record.netns["ctr"] == ctr.client.netns
    assert 0 < ev["rtt_us"] < 1_000_000

    # Every printed line: the two above plus one per control connection, all in 198.18.0.0/15.
    assert len(record.events) == 2 + CONTROLS
    assert sum(e["saddr"] == plan.control for e in record.events) == CONTROLS
    for e in record.events:
        assert ipaddress.ip_address(e["saddr"]) in scenario.RANGE
        assert ipaddress.ip_address(e["daddr"]) in scenario.RANGE
    assert record.exit_code == 0
    assert f"ttcp: {2 + CONTROLS} events printed, 0 dropped" in record.stderr


def test_failure_midway_removes_everything(no_bpf_leaks):
    tag = str(os.getpid())
    record = scenario.Record()
    with pytest.raises(scenario.ScenarioError, match="forced failure after step 3"):
        scenario.run_scenario(tag, log=print, fail_after=3, record=record)
    assert len(record.pids) == 2  # the web server and ttcp were running when it failed
    assert len(record.steps[3].lines) == 1
    assert _leftovers(tag, record.pids) == []


def test_sigterm_midway_removes_everything(no_bpf_leaks):
    """The script as a user runs it, stopped with SIGTERM while ttcp is up."""
    proc = subprocess.Popen([sys.executable, str(scenario.SCRIPT)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tag = str(proc.pid)
    out: list[str] = []
    try:
        deadline = time.monotonic() + 40
        for line in proc.stdout:
            out.append(line)
            if line.startswith("step 2: ok") or time.monotonic() > deadline:
                break
        assert out and out[-1].startswith("step 2: ok"), "".join(out[-20:])
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out.append(rest)
    text = "".join(out)
    assert proc.returncode == 130, err
    assert "interrupted; everything removed" in err
    pids = [int(p) for p in re.findall(r"^cleanup: stop \S+(?: \S+)? \(pid (\d+)\)$", text, re.MULTILINE)]
    assert len(pids) == 2, text[-2000:]
    # ttcp stopped cleanly; the host client of step 3 may have finished before the signal landed.
    assert re.search(r"^  ttcp \(stderr\) \| ttcp: [01] events printed, 0 dropped$", text, re.MULTILINE), \
        text[-2000:]
    assert _leftovers(tag, pids) == []
