"""Real workloads for the tests: cgroups made under the cgroup2 mount (from
/proc/self/mountinfo), network namespaces made with `ip netns add`, and child
processes that join them (their pid written to cgroup.procs; setns(2)) and
make loopback connections. Every name starts with ttcp-test-; everything made
is removed afterwards, whatever happened (the `cgroups` and `netns` fixtures,
a pytest plugin of tests/conftest.py)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.support.kernel import scaled
from tests.support.traffic import Conn
from ttcp.workloads.cgroupfs import CgroupTree

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def cgroup2_tree() -> CgroupTree:
    """The host's cgroup2 hierarchy; the tests that need one fail without it (vmtest
    mounts cgroup2 in its guests)."""
    tree = CgroupTree.find()
    if isinstance(tree, str):
        pytest.fail(f"no usable cgroup2 hierarchy here: {tree}", pytrace=False)
    return tree


class Cgroups:
    """cgroups made under one parent of the test's own, below the cgroup2 mount."""

    def __init__(self) -> None:
        self.tree = cgroup2_tree()
        self.top = f"/ttcp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.made: list[str] = []

    def make(self, path: str = "") -> str:
        """mkdir -p of the test's cgroup `path` (below its parent); its canonical path."""
        full = self.top + (path if path.startswith("/") or not path else "/" + path)
        for depth in range(self.top.count("/"), full.count("/") + 1):
            part = "/" + "/".join(full.strip("/").split("/")[:depth])
            if not self.tree.dir_of(part).exists():
                self.tree.dir_of(part).mkdir()
                self.made.append(part)
        return full

    def remove(self, path: str) -> None:
        """rmdir of a cgroup (its processes gone), and of the cgroups below it first."""
        for part in sorted((p for p in self.made if p == path or p.startswith(path + "/")), key=len,
                           reverse=True):
            self.tree.dir_of(part).rmdir()
            self.made.remove(part)

    def id_of(self, path: str) -> int:
        """`stat -c %i` of the cgroup's directory."""
        return os.stat(self.tree.dir_of(path)).st_ino

    def cleanup(self) -> None:
        for part in sorted(self.made, key=len, reverse=True):
            try:
                self.tree.dir_of(part).rmdir()
            except FileNotFoundError:
                pass
        self.tree.close()


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    made = Cgroups()
    try:
        yield made
    finally:
        made.cleanup()
        assert not made.tree.dir_of(made.top).exists(), f"cgroup {made.top} is left behind"


class Netns:
    """A network namespace made with `ip netns add`, loopback up: /run/netns/NAME."""

    def __init__(self) -> None:
        self.name = f"ttcp-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=scaled(30))
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True,
                       timeout=scaled(30))
        self.path = f"/run/netns/{self.name}"
        self.inode = os.stat(self.path).st_ino

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=scaled(30))


@pytest.fixture
def netns() -> Iterator[Netns]:
    made = Netns()
    try:
        yield made
    finally:
        made.delete()
        assert not Path(made.path).exists()


def run_in(work: Callable[[], list[Conn]], cgroup: Path | None = None, netns: str | None = None) -> list[Conn]:
    """Run `work` in a child process that first joins the cgroup directory `cgroup`
    (its pid into cgroup.procs) and the network namespace file `netns`; the
    connections it made."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery past this point, only os._exit
        code = 1
        try:
            os.close(read)
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))
            if netns is not None:
                fd = os.open(netns, os.O_RDONLY)
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                os.close(fd)
            conns = work()
            os.write(write, json.dumps([asdict(c) for c in conns]).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - anything the child meets goes to the parent's assertion
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, f"the child process failed:\n{out}"
    return [Conn(**c) for c in json.loads(out)]
