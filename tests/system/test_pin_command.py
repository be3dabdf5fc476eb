"""`ttcp --pin DIR` as a process (issue 14): filters and counters survive a
restart after SIGTERM and after SIGKILL, another --max-filters migrates, an
incompatible pin or a second ttcp on the directory is one line naming the
way out, nothing is pinned without --pin. Real loopback traffic
(127.0.14.0/24); every test pins into a directory of its own under
/sys/fs/bpf and removes it afterwards, whatever happened.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli_process import REPO, TtcpProcess, free_port
from tests.support.kernel import scaled
from tests.support.kernel_objects import held_ids
from tests.support.pins import HOSTS, A, B, C, pinned_id, pins, traffic
from tests.support.traffic import Server
from ttcp import syscalls
from ttcp.errors import BpfError
from ttcp.kernel.uapi import MapType
from ttcp.rtt.tracer import PINNED_MAPS

pytestmark = pytest.mark.kernel


def api_json(t: TtcpProcess, path: str) -> Any:
    status, body = t.api("GET", path)
    assert status == 200, (path, status, body)
    return json.loads(body)


@dataclass(frozen=True)
class Shown:
    """One filter as the API shows it: matches, the closed histogram's count, the last match."""

    matches: int
    closed: int
    last_match_unix: float | None

    def __eq__(self, other: object) -> bool:  # the wall time of a kernel stamp is exact to a few µs
        return (isinstance(other, Shown) and (self.matches, self.closed) == (other.matches, other.closed)
                and (self.last_match_unix is None) == (other.last_match_unix is None)
                and abs((self.last_match_unix or 0) - (other.last_match_unix or 0)) < 0.005)


def filter_state(t: TtcpProcess) -> dict[str, Shown]:
    out = {}
    for entry in api_json(t, "/filters")["filters"]:
        one = api_json(t, "/filters/" + entry["filter"].replace(" ", "%20"))
        out[entry["filter"]] = Shown(entry["matches"], one["histograms"]["closed"]["count"],
                                     entry["last_match_unix"])
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ttcp", "--port", str(free_port()), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=scaled(30), check=False,
                          env=dict(os.environ, PYTHONPATH=REPO))


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 1 and r.stdout == "", r
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and lines[-1].startswith("ttcp: "), r.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, r.stderr)
    return lines[-1]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_filters_and_counters_survive_a_restart(pin_dir: Path, stop: int) -> None:
    with Server("127.0.0.1") as srv:
        with TtcpProcess("--pin", str(pin_dir), "--filter", A) as t:
            assert t.wait_stderr(f"filter table pinned in {pin_dir}: new group_stats, groups, hosts, nets, stats, texts"), t.stderr
            assert t.api("PUT", "/filters", b"src 127.0.14.0/30\n")[0] == 204
            traffic(srv, **{A: 3, B: 2, C: 1})
            assert len(t.lines_until_quiet()) == 5  # C is outside both filters
            before = filter_state(t)
            if stop == signal.SIGKILL:
                t.proc.kill()
                t.proc.wait(10)
            else:
                assert t.stop(stop) == 0
        net = "src 127.0.14.0/30"
        assert [(x.matches, x.closed) for x in before.values()] == [(3, 3), (2, 2)]  # a host beats a network
        assert pins(pin_dir) == sorted(PINNED_MAPS)
        with TtcpProcess("--pin", str(pin_dir)) as t:  # at once: the lock went with the process
            assert t.wait_stderr("reused group_stats, groups, hosts, nets, stats, texts"), t.stderr
            assert filter_state(t) == before
            assert json.loads(t.api("GET", "/")[1]) == [A, "src 127.0.14.0/30"]
            traffic(srv, **{A: 1})
            assert len(t.lines_until_quiet()) == 1  # the restored filters select again
            after = filter_state(t)
            assert after[net] == before[net] and after[A].matches == after[A].closed == 4
            assert (after[A].last_match_unix or 0) > (before[A].last_match_unix or 0)
            assert t.stop() == 0


def test_another_max_filters_migrates(pin_dir: Path) -> None:
    with Server("127.0.0.1") as srv:
        with TtcpProcess("--pin", str(pin_dir), "--max-filters", "8", "--filter", A, "--filter", B) as t:
            traffic(srv, **{A: 2, B: 1})
            t.lines_until_quiet()
            before = filter_state(t)
            assert t.stop() == 0
        for size in ("100", "2"):
            with TtcpProcess("--pin", str(pin_dir), "--max-filters", size) as t:
                assert t.wait_stderr(f"migrated group_stats, hosts, nets, stats, texts (now {size} entries)"), t.stderr
                assert filter_state(t) == before
                assert api_json(t, "/filters")["max_entries"] == int(size)
                assert t.stop() == 0
    line = one_line_error(run_cli("--pin", str(pin_dir), "--max-filters", "1"), "holds 2 filters",
                          "--max-filters 2 or more")
    assert str(pin_dir) in line
    assert pins(pin_dir) == sorted(PINNED_MAPS)


def test_an_incompatible_pin_is_one_line_naming_the_way_out(pin_dir: Path) -> None:
    pin_dir.mkdir()
    foreign = syscalls.map_create(MapType.HASH, 8, HOSTS.value_size, 1024, name="foreign")
    try:
        syscalls.obj_pin(foreign, pin_dir / "hosts")
    finally:
        syscalls.close(foreign)
    line = one_line_error(run_cli("--pin", str(pin_dir)), f"{pin_dir}/hosts: key size 8 (wanted {HOSTS.key_size})",
                          "--pin-reset", f"rm -r {pin_dir}")
    assert len(line) < 400
    assert pins(pin_dir) == ["hosts"]  # nothing changed
    with TtcpProcess("--pin", str(pin_dir), "--pin-reset", "--filter", A) as t:
        assert t.wait_stderr(f"removed the pinned filter table in {pin_dir} (hosts)"), t.stderr
        assert json.loads(t.api("GET", "/")[1]) == [A]
        assert t.stop() == 0
    assert pinned_id(pin_dir / "hosts") > 0 and pins(pin_dir) == sorted(PINNED_MAPS)


def test_a_second_ttcp_on_the_directory_refuses(pin_dir: Path) -> None:
    with TtcpProcess("--pin", str(pin_dir), "--filter", A) as first:
        one_line_error(run_cli("--pin", str(pin_dir), "--filter", B),
                       f"{pin_dir} is in use by another ttcp (pid {first.proc.pid})", "another --pin")
        assert json.loads(first.api("GET", "/")[1]) == [A]  # the first one is untouched
        first.proc.kill()
        first.proc.wait(10)
    with TtcpProcess("--pin", str(pin_dir), "--filter", B) as t:
        assert json.loads(t.api("GET", "/")[1]) == [A, B]
        assert t.stop() == 0


def _bpffs_map_ids(root: Path = Path("/sys/fs/bpf")) -> dict[int, str]:
    """Map id -> path of every map pinned in bpffs (other objects skipped)."""
    found = {}
    for entry in root.rglob("*"):
        if entry.is_dir():
            continue
        try:
            fd = syscalls.obj_get(entry)
        except BpfError as e:  # gone meanwhile, or a file the kernel made (maps.debug)
            if e.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EINVAL):
                raise
            continue
        try:
            found[syscalls.map_info(fd).id] = str(entry)
        except BpfError as e:  # a program or link
            if e.errno != errno.EINVAL:
                raise
        finally:
            syscalls.close(fd)
    return found


def test_without_pin_nothing_is_left_in_bpffs() -> None:
    before = _bpffs_map_ids()
    with TtcpProcess("--filter", A) as t:
        held = held_ids(t.proc.pid)["map"]
        assert len(held) >= 5  # hosts, nets, stats, events, drops, .bss
        assert t.stop() == 0
    pinned = _bpffs_map_ids()
    assert not held & set(pinned), {i: pinned[i] for i in held & set(pinned)}
    assert not [p for i, p in pinned.items() if i not in before and re.search(r"/(hosts|nets|stats)$", p)]


def _on_read_only_bpffs(mnt: Path, pin: Path) -> subprocess.CompletedProcess[str]:
    """`ttcp --pin PIN` with a read-only bpffs of its own at MNT, in a private mount
    namespace (the mount goes with the process)."""
    script = (f"mount -t bpf -o ro bpf {mnt} && exec {sys.executable} -m ttcp --port {free_port()} "
              f"--pin {pin}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=scaled(30), check=False,
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_pin_outside_bpffs_or_read_only_is_one_line(tmp_path: Path) -> None:
    one_line_error(run_cli("--pin", str(tmp_path / "ttcp")), "is not in a BPF file system",
                   "mount -t bpf bpf /sys/fs/bpf", "-v /sys/fs/bpf:/sys/fs/bpf")
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    one_line_error(_on_read_only_bpffs(mnt, mnt / "ttcp"), f"cannot create {mnt}/ttcp", "read-write")
    one_line_error(_on_read_only_bpffs(mnt, mnt), f"{mnt} is not writable", "read-write")
    assert not os.path.ismount(mnt)


def test_pin_reset_needs_pin() -> None:
    r = run_cli("--pin-reset")
    assert r.returncode == 2 and "--pin-reset needs --pin DIR" in r.stderr
