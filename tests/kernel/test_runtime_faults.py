"""A container runtime that is absent, hangs or answers garbage costs one line on stderr,
and never blocks or drops events: they go out with ids only (issue 23). The real
ttcp command, the real kernel, fake Docker engines on unix sockets (threads of
this test, removed with it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cli_process import TtcpProcess
from tests.support.traffic import Server, connect_many
from ttcp.rtt import filters as F
from ttcp.rtt.filters import Workload
from ttcp.rtt.table_rules import Resolution
from ttcp.workloads.resolver import Resolver
from ttcp.workloads.runtime import Container, Gone, Seen

pytestmark = pytest.mark.kernel

Behaviour = Callable[[socket.socket], None]


def hang(conn: socket.socket) -> None:
    conn.recv(65536)
    time.sleep(30)  # never answers; the test ends first


def garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"\x00\xffSSH-2.0-OpenSSH\r\n\r\n" * 20)


def broken_json(conn: socket.socket) -> None:
    conn.recv(65536)
    body = b'{"Api'
    conn.sendall(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@contextmanager
def fake_engine(behaviour: Behaviour) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ttcp-fake-docker-") as d:
        path = str(Path(d) / "docker.sock")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(64)
        srv.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=lambda c=conn: _once(behaviour, c), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            stop.set()
            thread.join(2)
            srv.close()


def _once(behaviour: Behaviour, conn: socket.socket) -> None:
    with conn:
        try:
            behaviour(conn)
        except OSError:
            pass


@pytest.mark.parametrize("behaviour,why", [(hang, "no answer within"), (garbage, "_ping"),
                                            (broken_json, "not JSON"), (None, "_ping")],
                         ids=["hangs", "garbage", "broken-json", "absent"])
def test_a_bad_runtime_costs_one_line_and_events_flow_with_ids_only(behaviour: Behaviour | None, why: str) -> None:
    ctx = fake_engine(behaviour) if behaviour is not None else _absent()
    with ctx as sock, TtcpProcess("--format", "json", "--docker-socket", sock, "--filter", "src 127.0.61.2",
                                  "--filter", "container web") as t, Server("127.0.61.1") as srv:
        sent = []
        t0 = time.monotonic()
        for _ in range(4):  # over a few seconds: through timeouts and retries
            sent += connect_many(srv, "127.0.61.2", 5)
            time.sleep(0.6)
        got = [json.loads(line) for line in t.lines_until_quiet()]
        assert sorted(e["sport"] for e in got) == sorted(c.sport for c in sent)
        assert time.monotonic() - t0 < 10  # nothing waited on the runtime
        assert not [e for e in got if {"container", "container_id", "pod", "pod_namespace"} & set(e)]
        status, body = t.api("GET", "/filters")
        assert status == 200
        entry = next(e for e in json.loads(body)["filters"] if e["filter"] == "container web")
        assert entry["workload"]["state"] == "pending"
        assert t.wait_stderr("docker", 6.0)  # a hung engine: once its 3 s bound has passed
        sent += connect_many(srv, "127.0.61.2", 5)  # after the line too
        got = [json.loads(line) for line in t.lines_until_quiet()]
        assert sorted(e["sport"] for e in got) == sorted(c.sport for c in sent[-5:])
        time.sleep(1.5)  # retries (backoff from 0.2 s) with the same reason: no new line
        assert t.stop() == 0
    docker_lines = [line for line in t.stderr.splitlines() if "docker" in line]
    assert len(docker_lines) == 1 and why in docker_lines[0], t.stderr
    assert "Traceback" not in t.stderr


@contextmanager
def _absent() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ttcp-fake-docker-") as d:
        yield str(Path(d) / "docker.sock")


def _fds_to(inode: int) -> int:
    """This process's fds open on the network namespace `inode`."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) == f"net:[{inode}]"
        except OSError:
            pass
    return count


def test_a_named_namespace_is_held_until_the_table_has_moved_away() -> None:
    """The kernel reuses a freed namespace's inode at once, and the runtime says a container
    ended only after it did: the resolver keeps the namespace alive (an fd) until settle()."""
    child = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while (inode := os.stat(f"/proc/{child.pid}/ns/net").st_ino) == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        resolver = Resolver("no cgroup2 in this test")
        fds = len(list(Path("/proc/self/fd").iterdir()))
        web = Workload(F.CONTAINER, "web")
        assert resolver.resolve(web) == Resolution.pending(web)
        c = Container("docker", "c" * 64, "web", pid=child.pid)
        assert resolver.apply([Seen(c)]) == [(web, Resolution.netns(inode))]
        resolver.settle()
        assert _fds_to(inode) == 1
        child.kill()
        child.wait()
        assert _fds_to(inode) == 1  # the namespace outlives its last process: its inode is not free
        assert resolver.apply([Gone("docker", c.id)]) == [(web, Resolution.pending(web))]
        assert _fds_to(inode) == 1  # until the table has followed
        resolver.settle()
        assert _fds_to(inode) == 0
        resolver.release(web)
        resolver.close()
        assert len(list(Path("/proc/self/fd").iterdir())) == fds
    finally:
        child.kill()
        child.wait()
